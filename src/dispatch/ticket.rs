//! A ticket: one request's place on one child, given back on drop (also on
//! an early return or a panic), which hands the child to the next waiter.

use std::sync::Arc;

use super::{ChildId, Dispatch, Grant, Kind};

#[derive(Debug)]
pub struct Ticket {
    dispatch: Arc<Dispatch>,
    pub child: ChildId,
    pub port: u16,
    pub profile: String,
    /// The budget line this request counts under on its child, if any: its
    /// served answer must reach the supervisor before the ticket drops.
    pub line: Option<String>,
    kind: Kind,
}

impl Ticket {
    pub(super) fn new(dispatch: Arc<Dispatch>, g: Grant, kind: Kind) -> Ticket {
        Ticket {
            dispatch,
            child: g.child,
            port: g.port,
            profile: g.profile,
            line: g.line,
            kind,
        }
    }

    #[cfg(test)]
    pub fn slot(&self) -> usize {
        self.child.slot
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.dispatch
            .release(self.child, self.kind, self.line.as_deref());
    }
}
