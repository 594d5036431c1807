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
    /// The budget line this request counts under on its child, if any.
    pub line: Option<String>,
    /// Set before the drop when the child served the request: under a
    /// budget line, its place in the budget stays taken until the book's
    /// count of the child's answers says it counted it.
    pub served: bool,
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
            served: false,
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
            .release(self.child, self.kind, self.line.as_deref(), self.served);
    }
}
