//! Is a slot's port triple free, and if not, who holds it?
//!
//! Before each start the watcher asks whether the three ports can be bound
//! on 127.0.0.1 (the way the child will bind them; `SO_REUSEADDR`, as every
//! server sets, so sockets in TIME_WAIT do not count). For a taken port the
//! holder is looked up in `/proc/net/tcp{,6}` and the file descriptors of
//! `/proc/<pid>/fd`, with its command line and child tag, so the watcher
//! can tell its own previous child's tree (wait for it, stop it) from a
//! foreign process (say who, and back off instead of starting a child that
//! cannot bind).

use std::fmt;
use std::net::TcpListener;

use super::{proc, tree};

/// A port that could not be bound, and what holds it where `/proc` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    /// Which of the triple: "api", "stream" or "camoufox".
    pub role: &'static str,
    pub port: u16,
    pub holder: Option<Holder>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    pub command: String,
    /// The holder's child tag, when one of our children started it.
    pub tag: Option<String>,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} port 127.0.0.1:{} is in use", self.role, self.port)?;
        match &self.holder {
            Some(h) => write!(f, " by pid {} ({})", h.pid, h.command),
            None => f.write_str(" (holder not visible in /proc)"),
        }
    }
}

/// The first port of `ports` that cannot be bound on 127.0.0.1, if any.
pub fn first_busy(ports: &[(&'static str, u16)]) -> Option<Busy> {
    ports.iter().find_map(|&(role, port)| {
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return None;
        }
        Some(Busy {
            role,
            port,
            holder: holder(port),
        })
    })
}

fn holder(port: u16) -> Option<Holder> {
    let pid = proc::socket_inodes(port)
        .into_iter()
        .find_map(proc::socket_owner)?;
    Some(Holder {
        pid,
        command: proc::cmdline(pid, 160),
        tag: proc::env_var(pid, tree::VAR),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_pass_and_a_held_one_names_its_holder() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let free = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(first_busy(&[("api", free)]), None);
        let busy = first_busy(&[("api", free), ("camoufox", port)]).unwrap();
        assert_eq!((busy.role, busy.port), ("camoufox", port));
        let h = busy.holder.clone().unwrap();
        assert_eq!(h.pid, std::process::id() as i32);
        assert!(busy.to_string().contains(&format!("by pid {}", h.pid)));
    }

    #[test]
    fn a_port_held_on_all_interfaces_is_busy_too() {
        let held = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(first_busy(&[("api", port)]).is_some());
    }
}
