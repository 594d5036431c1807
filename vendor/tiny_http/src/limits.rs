//! aistudioproxy patch (a new file): what one client connection may cost.
//!
//! Upstream tiny_http gives every connection a thread for its whole life and
//! waits for request heads without any bound, so a client that opens a
//! connection and sends half a head (or nothing) holds a thread and a
//! descriptor for as long as it likes. [`Limits`] bounds both:
//!
//! - how many connections are open at once (`max_connections`), the last
//!   `probe_reserve` of them kept for clients that come when the rest are
//!   taken: such a connection must send its head within
//!   `reserve_header_timeout`, carries one request, and is marked
//!   ([`Request::in_reserve`](crate::Request::in_reserve)) so the
//!   application can answer only what must always answer (health probes);
//!   past `max_connections` a new connection is closed at once;
//! - how long a head may take (`header_timeout`, from the accept for the
//!   first request, from its first byte for later ones) and how long a
//!   keep-alive connection may sit idle between requests
//!   (`keepalive_timeout`, from the end of the previous answer);
//! - how a connection whose request was refused before its body was read is
//!   closed ([`Linger`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a connection was let in, told to the admission hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Below the ordinary limit.
    Normal,
    /// In the probe reserve: one request, head within the reserve timeout.
    Reserve,
    /// Over `max_connections`: closed at once.
    Refused,
}

/// Called on the accept thread for every accepted connection, with how it
/// was admitted and how many connections were open before it.
pub type AdmissionHook = Box<dyn FnMut(Admission, usize) + Send + 'static>;

/// A bounded lingering close (nginx's `lingering_close`): after the answer
/// the server shuts its sending side, then reads and discards what the
/// client still sends until it closes, at most `max_bytes`, for at most
/// `max_time` in all and `max_silence` between reads; then it closes.
/// Without it, closing a socket with unread input makes the kernel send a
/// reset, which destroys the answer at a client still writing its body
/// (Python's urllib and requests write the whole body before reading).
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    pub max_bytes: u64,
    pub max_time: Duration,
    pub max_silence: Duration,
}

impl Default for Linger {
    fn default() -> Self {
        Linger {
            max_bytes: 64 << 20,
            max_time: Duration::from_secs(5),
            max_silence: Duration::from_secs(1),
        }
    }
}

/// Connection limits; the default is upstream's behaviour (none), but for
/// the bounded lingering close.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// The whole head of a connection's first request must arrive within
    /// this of the accept; a later head within this of its first byte.
    pub header_timeout: Option<Duration>,
    /// An idle keep-alive connection is closed this long after its last
    /// answer was written.
    pub keepalive_timeout: Option<Duration>,
    /// Read and write timeout of body and answer I/O (each read or write).
    pub io_timeout: Option<Duration>,
    /// Open connections at most (0: no limit), including the reserve.
    pub max_connections: usize,
    /// How many of `max_connections` are kept for the reserve.
    pub probe_reserve: usize,
    /// Head deadline of a connection admitted into the reserve.
    pub reserve_header_timeout: Option<Duration>,
    pub linger: Linger,
}

impl Limits {
    pub(crate) fn admit(&self, open: usize) -> Admission {
        if self.max_connections == 0 {
            return Admission::Normal;
        }
        let ordinary = self.max_connections.saturating_sub(self.probe_reserve);
        if open < ordinary {
            Admission::Normal
        } else if open < self.max_connections {
            Admission::Reserve
        } else {
            Admission::Refused
        }
    }
}

/// Counts a connection as open from its accept until both halves of its
/// socket are dropped.
pub(crate) struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    pub(crate) fn new(open: &Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The instant by which the read in progress must have returned; shared by
/// a connection's head reader (which sets it) and the reading half of its
/// socket (which turns it into the socket's read timeout before each read).
#[derive(Default)]
pub(crate) struct ReadDeadline(Mutex<Option<Instant>>);

impl ReadDeadline {
    pub(crate) fn set(&self, at: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    pub(crate) fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_keeps_the_last_places_for_the_reserve() {
        let l = Limits {
            max_connections: 10,
            probe_reserve: 2,
            ..Limits::default()
        };
        let got: Vec<Admission> = (0..12).map(|open| l.admit(open)).collect();
        let mut want = vec![Admission::Normal; 8];
        want.extend([Admission::Reserve; 2]);
        want.extend([Admission::Refused; 2]);
        assert_eq!(got, want);
        assert_eq!(Limits::default().admit(1 << 30), Admission::Normal);
    }
}
