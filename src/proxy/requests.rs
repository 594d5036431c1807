//! The proxied requests alive now: each has an internal id (unique, never
//! reused) and the id its client knows (`X-Request-Id`, sent or made up),
//! which several requests may share without disturbing each other's
//! bookkeeping. A request is waiting (in the dispatcher's queue, or between
//! attempts) or running on a child.
//!
//! A running request can be taken from its child three ways, each by
//! marking it first and then shutting its child connection outside the lock
//! (the child stops its work only when that connection closes):
//! - `POST /v1/cancel/{id}` cancels it ([`Registry::cancel`]; a waiting one
//!   leaves the dispatcher's queue instead);
//! - its child's log says the account ran out ([`Registry::reclaim`]): a
//!   request whose answer has not begun is taken back, to be served by
//!   another child;
//! - its client went away ([`Registry::watch_clients`], a thread that polls
//!   the client sockets of running requests): nobody waits for the answer,
//!   so the child is freed at once instead of working for nobody.
//!
//! The mark closes the races: a request granted a child, or given its
//! answer's head, just as it was taken sees the mark at its next step.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{select, Receiver};

use crate::dialect::Dialect;
use crate::dispatch::{ChildId, Dispatch};

/// How often the client sockets of running requests are looked at.
const CLIENT_POLL: Duration = Duration::from_millis(200);

/// How long a child's last model stays known after its request ended (a
/// quota line can follow the end of a streamed answer).
const LAST_MODEL_KEPT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<u64, Entry>>,
    /// Per slot: the child, and the model of the last request it ran.
    last_model: Mutex<HashMap<usize, (ChildId, String, std::time::Instant)>>,
}

struct Entry {
    client_id: String,
    /// The fingerprint of the key it was made with (None without keys).
    owner: Option<u64>,
    phase: Phase,
    taken: Option<Taken>,
    /// The API the request came in as (shown by `/v1/queue`).
    dialect: Dialect,
}

enum Phase {
    Waiting,
    Running(Running),
}

struct Running {
    agent: ureq::Agent,
    profile: String,
    child: ChildId,
    model: Option<String>,
    /// The answer's head has reached the client: it is no longer taken back.
    answering: bool,
    /// A duplicate of the client's socket, to notice its leaving.
    client: Option<Arc<OwnedFd>>,
}

/// Why a request was taken from its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Cancelled,
    /// Its child's account ran out: serve it elsewhere.
    Reclaimed,
    ClientGone,
}

/// Who asks for a cancel (see `cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The admin key: any request.
    Admin,
    /// The fingerprint of the caller's API key (None without keys).
    Owner(Option<u64>),
}

/// What a cancel did to one request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cancelled {
    /// `queued` or `running`.
    pub state: &'static str,
    pub profile: Option<String>,
}

/// One request as `/v1/queue` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub id: String,
    pub dialect: Dialect,
    /// `waiting` or `running`.
    pub state: &'static str,
    pub profile: Option<String>,
}

/// A request's entry; removed when dropped.
pub struct Registration<'a> {
    registry: &'a Registry,
    id: u64,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // Single inserts and removals: a poisoned map is still coherent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enter(
        &self,
        id: u64,
        client_id: &str,
        owner: Option<u64>,
        dialect: Dialect,
    ) -> Registration<'_> {
        self.lock().insert(
            id,
            Entry {
                client_id: client_id.to_string(),
                owner,
                phase: Phase::Waiting,
                taken: None,
                dialect,
            },
        );
        Registration { registry: self, id }
    }

    /// Mark the entries `pick` chooses as `why` (those not taken already)
    /// and return the agents of the running ones to shut.
    fn take(
        &self,
        why: Taken,
        mut pick: impl FnMut(u64, &Entry) -> bool,
    ) -> (Vec<u64>, Vec<(ureq::Agent, String)>) {
        let mut waiting = Vec::new();
        let mut running = Vec::new();
        let mut entries = self.lock();
        for (id, e) in entries.iter_mut() {
            if e.taken.is_some() || !pick(*id, e) {
                continue;
            }
            e.taken = Some(why);
            match &e.phase {
                Phase::Waiting => waiting.push(*id),
                Phase::Running(r) => running.push((r.agent.clone(), r.profile.clone())),
            }
        }
        (waiting, running)
    }

    /// Every request alive now, oldest id first: its client's id, the
    /// dialect it came in, and whether it waits or runs (and where).
    pub fn listing(&self) -> Vec<Listed> {
        let mut v: Vec<(u64, Listed)> = self
            .lock()
            .iter()
            .map(|(id, e)| {
                let (state, profile) = match &e.phase {
                    Phase::Waiting => ("waiting", None),
                    Phase::Running(r) => ("running", Some(r.profile.clone())),
                };
                let l = Listed {
                    id: e.client_id.clone(),
                    dialect: e.dialect,
                    state,
                    profile,
                };
                (*id, l)
            })
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, l)| l).collect()
    }

    /// Cancel every request its client calls `client_id` that `caller` may
    /// cancel (see `cancel`). Empty when none.
    pub fn cancel(&self, client_id: &str, caller: Caller, dispatch: &Dispatch) -> Vec<Cancelled> {
        let (queued, running) = self.take(Taken::Cancelled, |_, e| {
            e.client_id == client_id
                && match caller {
                    Caller::Admin => true,
                    Caller::Owner(who) => who.is_none() || e.owner == who,
                }
        });
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

    /// The slots running a request made with the key `owner`.
    pub fn slots_running(&self, owner: u64) -> Vec<usize> {
        self.lock()
            .values()
            .filter(|e| e.owner == Some(owner))
            .filter_map(|e| match &e.phase {
                Phase::Running(r) => Some(r.child.slot),
                Phase::Waiting => None,
            })
            .collect()
    }

    /// Take back every request running on `child` whose answer has not
    /// begun (its account ran out): their connections are shut, and each
    /// is tried on another child. Returns how many.
    pub fn reclaim(&self, child: ChildId) -> usize {
        let (_, running) = self.take(
            Taken::Reclaimed,
            |_, e| matches!(&e.phase, Phase::Running(r) if r.child == child && !r.answering),
        );
        let n = running.len();
        for (agent, _) in running {
            agent.shutdown();
        }
        n
    }

    /// The models of the requests `child` runs now, or else of the last one
    /// it ran (within a minute): what a quota line in its log is about.
    pub fn models_on(&self, child: ChildId) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .values()
            .filter_map(|e| match &e.phase {
                Phase::Running(r) if r.child == child => r.model.clone(),
                _ => None,
            })
            .collect();
        if v.is_empty() {
            let last = self.last_model.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((c, m, at)) = last.get(&child.slot) {
                if *c == child && at.elapsed() <= LAST_MODEL_KEPT {
                    v.push(m.clone());
                }
            }
        }
        v.sort();
        v.dedup();
        v
    }

    /// The thread that frees the child of every running request whose
    /// client left: every `CLIENT_POLL` it polls their sockets for a hang-up
    /// and shuts the child connection of each that left. Ends when `stop`
    /// closes.
    pub fn watch_clients(self: &Arc<Self>, stop: Receiver<()>) -> std::io::Result<JoinHandle<()>> {
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("client-watch".into())
            .stack_size(128 * 1024)
            .spawn(move || loop {
                select! {
                    recv(stop) -> _ => return,
                    default(CLIENT_POLL) => {}
                }
                let Some(registry) = me.upgrade() else { return };
                registry.free_left_clients();
            })
    }

    /// One look at the client sockets of running requests.
    fn free_left_clients(&self) {
        let watched: Vec<(u64, Arc<OwnedFd>)> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.taken.is_none())
            .filter_map(|(id, e)| match &e.phase {
                Phase::Running(r) => r.client.clone().map(|c| (*id, c)),
                Phase::Waiting => None,
            })
            .collect();
        if watched.is_empty() {
            return;
        }
        let gone = hung_up(&watched);
        if gone.is_empty() {
            return;
        }
        let (_, running) = self.take(Taken::ClientGone, |id, _| gone.contains(&id));
        for (agent, _) in running {
            agent.shutdown();
        }
    }
}

/// Which of `socks` have been hung up by their peer (one poll, no wait).
fn hung_up(socks: &[(u64, Arc<OwnedFd>)]) -> Vec<u64> {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|(_, fd)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of pollfd for its length; the fds are
    // kept open by the Arcs in `socks` for the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    if n <= 0 {
        return Vec::new();
    }
    let bad = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
    fds.iter()
        .zip(socks)
        .filter(|(p, _)| p.revents & bad != 0)
        .map(|(_, (id, _))| *id)
        .collect()
}

impl Registration<'_> {
    /// Whether, and why, the request was taken from its child.
    pub fn taken(&self) -> Option<Taken> {
        self.registry.lock().get(&self.id).and_then(|e| e.taken)
    }

    pub fn cancelled(&self) -> bool {
        self.taken() == Some(Taken::Cancelled)
    }

    /// Back to waiting (after an attempt). A request taken back from an
    /// exhausted child may be taken again from the next one.
    pub fn waiting(&self) {
        if let Some(e) = self.registry.lock().get_mut(&self.id) {
            e.phase = Phase::Waiting;
            if e.taken == Some(Taken::Reclaimed) {
                e.taken = None;
            }
        }
    }

    /// The answer went out whole: nothing may shut its child connection
    /// from now on (it is kept for the next request). Err when it was
    /// taken meanwhile: its connection may be shut, and is not kept.
    pub fn done(&self) -> Result<(), Taken> {
        let mut entries = self.registry.lock();
        let Some(e) = entries.get_mut(&self.id) else {
            return Ok(());
        };
        if let Some(t) = e.taken {
            return Err(t);
        }
        e.phase = Phase::Waiting;
        Ok(())
    }

    /// Running on `child` (a request for `model`) through `agent` for the
    /// client on socket `client`, unless taken already.
    pub fn running(
        &self,
        agent: &ureq::Agent,
        profile: &str,
        child: ChildId,
        model: Option<&str>,
        client: Option<RawFd>,
    ) -> Result<(), Taken> {
        if let Some(m) = model {
            self.registry
                .last_model
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    child.slot,
                    (child, m.to_string(), std::time::Instant::now()),
                );
        }
        // A duplicate, so the watch never polls a number reused by another
        // connection after this request ended.
        let client = client.and_then(|fd| {
            // SAFETY: the caller's request holds `fd` open during this call.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            b.try_clone_to_owned().ok().map(Arc::new)
        });
        let mut entries = self.registry.lock();
        let Some(e) = entries.get_mut(&self.id) else {
            return Ok(());
        };
        if let Some(t) = e.taken {
            return Err(t);
        }
        e.phase = Phase::Running(Running {
            agent: agent.clone(),
            profile: profile.to_string(),
            child,
            model: model.map(str::to_string),
            answering: false,
            client,
        });
        Ok(())
    }

    /// The answer's head is about to reach the client: from now on it is
    /// not taken back. Err when it was taken meanwhile.
    pub fn answering(&self) -> Result<(), Taken> {
        let mut entries = self.registry.lock();
        let Some(e) = entries.get_mut(&self.id) else {
            return Ok(());
        };
        if let Some(t) = e.taken {
            return Err(t);
        }
        if let Phase::Running(r) = &mut e.phase {
            r.answering = true;
        }
        Ok(())
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn child(slot: usize) -> ChildId {
        ChildId {
            slot,
            generation: 1,
        }
    }

    #[test]
    fn reclaim_takes_back_only_unanswered_requests_of_that_child() {
        let r = Registry::default();
        let agent = ureq::Agent::new_with_defaults();
        let a = r.enter(1, "a", None, Dialect::OpenAi);
        let b = r.enter(2, "b", None, Dialect::OpenAi);
        let c = r.enter(3, "c", None, Dialect::OpenAi);
        a.running(&agent, "p", child(0), Some("pro"), None).unwrap();
        b.running(&agent, "p", child(0), Some("pro"), None).unwrap();
        b.answering().unwrap();
        c.running(&agent, "q", child(1), Some("flash"), None)
            .unwrap();
        assert_eq!(r.models_on(child(0)), vec!["pro"]);
        assert_eq!(r.models_on(child(2)), Vec::<String>::new());
        assert_eq!(r.reclaim(child(0)), 1);
        assert_eq!(a.taken(), Some(Taken::Reclaimed));
        assert_eq!(b.taken(), None, "its answer had begun");
        assert_eq!(c.taken(), None, "another child");
        assert_eq!(a.answering(), Err(Taken::Reclaimed));
        // Back to waiting, it may run (and be taken back) again.
        a.waiting();
        assert_eq!(a.taken(), None);
        a.running(&agent, "q", child(1), None, None).unwrap();
        assert_eq!(r.reclaim(child(1)), 2);
        drop((a, b, c));
        assert_eq!(r.models_on(child(1)), vec!["flash"], "the last one it ran");
    }

    #[test]
    fn a_client_that_leaves_is_noticed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let r = Arc::new(Registry::default());
        let agent = ureq::Agent::new_with_defaults();
        let reg = r.enter(7, "x", None, Dialect::OpenAi);
        reg.running(&agent, "p", child(0), None, Some(server_side.as_raw_fd()))
            .unwrap();
        r.free_left_clients();
        assert_eq!(reg.taken(), None, "still there");
        client.write_all(b"more").unwrap();
        r.free_left_clients();
        assert_eq!(reg.taken(), None, "data is no hang-up");
        drop(client);
        std::thread::sleep(Duration::from_millis(20));
        r.free_left_clients();
        assert_eq!(reg.taken(), Some(Taken::ClientGone));
        assert_eq!(
            reg.done(),
            Err(Taken::ClientGone),
            "its connection is not kept"
        );
        // A request whose answer went out whole is watched no more.
        let c2 = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (s2, _) = listener.accept().unwrap();
        let reg2 = r.enter(8, "y", None, Dialect::OpenAi);
        reg2.running(&agent, "p", child(0), None, Some(s2.as_raw_fd()))
            .unwrap();
        assert_eq!(reg2.done(), Ok(()));
        drop(c2);
        std::thread::sleep(Duration::from_millis(20));
        r.free_left_clients();
        assert_eq!(reg2.taken(), None);
        drop(server_side);
    }
}
