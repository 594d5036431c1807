//! The operator's control interface: the same operations over a Unix socket
//! (always) and under `/admin/` on the coordinator port (only when
//! `ADMIN_KEY` or `ADMIN_KEY_FILE` is set), and `aistudioproxy ctl`, the
//! command that talks to the socket.
//!
//! This module owns the transport and the protocol; what an operation does
//! is the `Control`'s business (see `control.rs`), which only decides and
//! sends commands to the slots, so no admin call waits on a child.

mod budgets;
pub mod ctl;
pub mod http;
pub mod proto;
pub mod refusals;
pub mod socket;
mod text;

use std::fmt;

use serde_json::Value;

/// Which interface an operation came through, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Socket,
    Http,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Socket => "socket",
            Via::Http => "http",
        })
    }
}

/// Carries out admin operations; the answer is a `proto::ok`/`proto::error`.
pub trait Control: Send + Sync {
    fn handle(&self, rq: proto::Request, via: Via) -> Value;
}
