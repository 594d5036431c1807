//! The proxied requests alive now, for `POST /v1/cancel/{id}`: each has an
//! internal id (unique, never reused) and the id its client knows
//! (`X-Request-Id`, sent or made up), which several requests may share
//! without disturbing each other's bookkeeping. A request is waiting (in
//! the dispatcher's queue, or between attempts) or running on a child.
//!
//! Cancelling marks the request first, then acts outside the lock: a
//! waiting one leaves the dispatcher's queue; a running one has its child
//! connection shut (the child stops its work when the connection closes).
//! The mark closes the races: a request granted a child just as it was
//! cancelled sees the mark when it tries to start running.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::dispatch::Dispatch;

#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    client_id: String,
    phase: Phase,
    cancelled: bool,
}

enum Phase {
    Waiting,
    Running { agent: ureq::Agent, profile: String },
}

/// What a cancel did to one request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cancelled {
    /// `queued` or `running`.
    pub state: &'static str,
    pub profile: Option<String>,
}

/// A request's entry; removed when dropped.
pub struct Registration<'a> {
    registry: &'a Registry,
    id: u64,
}

/// The request was cancelled.
#[derive(Debug)]
pub struct WasCancelled;

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // Single inserts and removals: a poisoned map is still coherent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enter(&self, id: u64, client_id: &str) -> Registration<'_> {
        self.lock().insert(
            id,
            Entry {
                client_id: client_id.to_string(),
                phase: Phase::Waiting,
                cancelled: false,
            },
        );
        Registration { registry: self, id }
    }

    /// Cancel every request its client calls `client_id`. Empty when none.
    pub fn cancel(&self, client_id: &str, dispatch: &Dispatch) -> Vec<Cancelled> {
        let mut queued = Vec::new();
        let mut running = Vec::new();
        {
            let mut entries = self.lock();
            for (id, e) in entries.iter_mut() {
                if e.client_id != client_id || e.cancelled {
                    continue;
                }
                e.cancelled = true;
                match &e.phase {
                    Phase::Waiting => queued.push(*id),
                    Phase::Running { agent, profile } => {
                        running.push((agent.clone(), profile.clone()))
                    }
                }
            }
        }
        let mut done = Vec::new();
        for id in queued {
            // Not found: granted a child meanwhile, and the mark stops it.
            dispatch.cancel(id);
            done.push(Cancelled {
                state: "queued",
                profile: None,
            });
        }
        for (agent, profile) in running {
            agent.shutdown();
            done.push(Cancelled {
                state: "running",
                profile: Some(profile),
            });
        }
        done
    }
}

impl Registration<'_> {
    pub fn cancelled(&self) -> bool {
        self.registry
            .lock()
            .get(&self.id)
            .is_some_and(|e| e.cancelled)
    }

    /// Back to waiting (after an attempt).
    pub fn waiting(&self) {
        if let Some(e) = self.registry.lock().get_mut(&self.id) {
            e.phase = Phase::Waiting;
        }
    }

    /// Running on a child through `agent`, unless cancelled already.
    pub fn running(&self, agent: &ureq::Agent, profile: &str) -> Result<(), WasCancelled> {
        let mut entries = self.registry.lock();
        let Some(e) = entries.get_mut(&self.id) else {
            return Ok(());
        };
        if e.cancelled {
            return Err(WasCancelled);
        }
        e.phase = Phase::Running {
            agent: agent.clone(),
            profile: profile.to_string(),
        };
        Ok(())
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}
