//! One waiter's wake-up: an eventfd the dispatcher signals when it decided
//! the waiter's fate, polled together with the client's socket, so a waiter
//! sleeps until exactly one of three things happens: it is decided, its
//! client hangs up (POLLRDHUP), or its deadline passes. No polling loop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    Signalled,
    ClientGone,
    TimedOut,
}

#[derive(Debug)]
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd(2) with valid flags; a negative result is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Wake {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Wake the waiter (idempotent until it has woken).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd; the only
        // possible failure (counter overflow) cannot happen with one write
        // per decision.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            );
        }
    }

    /// Sleep until signalled, `client` hangs up, or `deadline`.
    ///
    /// A hang-up shows as POLLRDHUP, but so does our own shutdown of the
    /// socket's read side, which tiny_http does as soon as it knows no
    /// further request will come (HTTP/1.0, `Connection: close`). So a
    /// POLLRDHUP is confirmed by the TCP state (a peer's FIN moves it out of
    /// ESTABLISHED); when it was ours, the state is checked every
    /// `RECHECK` instead, while the wake-up itself stays immediate.
    pub fn wait(&self, client: Option<RawFd>, deadline: Instant) -> Woke {
        let mut watch = match client {
            Some(fd) => Watch::HangUp(fd),
            None => Watch::Nothing,
        };
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: match watch {
                        Watch::HangUp(fd) => fd,
                        _ => -1,
                    },
                    events: libc::POLLRDHUP,
                    revents: 0,
                },
            ];
            let mut left = deadline.saturating_duration_since(Instant::now());
            if let Watch::State(_) = watch {
                left = left.min(RECHECK);
            }
            // Round up, so a wait never ends just before its deadline.
            let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 > 0);
            let ms = ms.min(i32::MAX as u128) as i32;
            // SAFETY: two valid pollfd entries (a negative fd is ignored).
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if rc < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Woke::TimedOut;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let mut n: u64 = 0;
                // SAFETY: reads 8 bytes into a valid u64 (non-blocking).
                unsafe {
                    libc::read(
                        self.fd.as_raw_fd(),
                        &mut n as *mut u64 as *mut libc::c_void,
                        8,
                    );
                }
                if let Watch::HangUp(fd) | Watch::State(fd) = watch {
                    if peer_gone(fd) == Some(true) {
                        return Woke::ClientGone;
                    }
                }
                return Woke::Signalled;
            }
            match watch {
                Watch::HangUp(fd) if fds[1].revents != 0 => {
                    let hard = fds[1].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL);
                    // Not TCP: no state to ask, the hang-up is believed.
                    if hard != 0 || peer_gone(fd) != Some(false) {
                        return Woke::ClientGone;
                    }
                    watch = Watch::State(fd);
                }
                Watch::State(fd) if peer_gone(fd) == Some(true) => return Woke::ClientGone,
                _ => {}
            }
            if Instant::now() >= deadline {
                return Woke::TimedOut;
            }
        }
    }
}

/// How often a client whose read side we shut is checked for a hang-up.
const RECHECK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
enum Watch {
    Nothing,
    /// Poll the socket for POLLRDHUP.
    HangUp(RawFd),
    /// Our side shut reading: look at the TCP state now and then.
    State(RawFd),
}

/// Whether the peer of TCP socket `fd` has closed; `None` when `fd` is not
/// a TCP socket.
fn peer_gone(fd: RawFd) -> Option<bool> {
    // `tcpi_state` is the first byte of `struct tcp_info`; the kernel
    // copies no more than the length asked for.
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: valid buffer and length for getsockopt(2).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    const TCP_ESTABLISHED: u8 = 1;
    (rc == 0).then_some(info[0] != TCP_ESTABLISHED)
}
