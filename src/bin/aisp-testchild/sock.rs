//! Cutting one client connection at the socket.
//!
//! tiny_http never exposes a request's socket, and dropping its response
//! writer does not close the connection (its reader keeps waiting for the
//! next request), so a client would hang instead of seeing EOF. To give the
//! `reset` and `die_mid_stream` knobs a real EOF we find the connection's file
//! descriptor by its address pair and `shutdown(2)` it. The same lookup lets
//! a completion notice that its client went away ([`ConnWatch`]): it reads
//! the socket's TCP state, as the real child checks its connection every 0.3 s. Called
//! from the completion thread that owns the request; touches nothing else.

use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Reads a socket address of `fd` with `getsockname`/`getpeername`.
fn addr_of(
    fd: libc::c_int,
    get: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data, valid when zeroed, and large
    // enough for any address; `len` tells the kernel its size.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the pointers are to live locals of the sizes stated.
    let rc = unsafe { get(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) };
    if rc != 0 {
        return None;
    }
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { *(&ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { *(&ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Candidate descriptors: the open ones listed by /proc (Linux), else a
/// plain range.
fn open_fds() -> Vec<libc::c_int> {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => (0..4096).collect(),
    }
}

/// Shuts down (both directions) the connection whose local port is
/// `local_port` and whose peer is `peer`. The client sees EOF after any bytes
/// already sent. Returns whether such a socket was found.
pub fn shutdown_connection(local_port: u16, peer: SocketAddr) -> bool {
    let mut found = false;
    for fd in open_fds() {
        if addr_of(fd, libc::getpeername) != Some(peer) {
            continue;
        }
        if addr_of(fd, libc::getsockname).map(|a| a.port()) != Some(local_port) {
            continue;
        }
        // SAFETY: shutdown on a descriptor we just identified as this
        // connection's socket; it does not close or free the descriptor, so
        // tiny_http's own handles stay valid (their I/O just fails).
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        found = true;
    }
    found
}

/// The descriptors of the connection with this local port and peer.
fn connection_fds(local_port: u16, peer: SocketAddr) -> Vec<libc::c_int> {
    open_fds()
        .into_iter()
        .filter(|&fd| {
            addr_of(fd, libc::getpeername) == Some(peer)
                && addr_of(fd, libc::getsockname).map(|a| a.port()) == Some(local_port)
        })
        .collect()
}

/// Watches one client connection for its end, without reading from it.
pub struct ConnWatch {
    local_port: u16,
    peer: Option<SocketAddr>,
    /// The descriptor found last time; re-checked before each use, since a
    /// closed descriptor's number may be reused by another connection.
    fd: Option<libc::c_int>,
}

impl ConnWatch {
    pub fn new(local_port: u16, peer: Option<SocketAddr>) -> ConnWatch {
        ConnWatch {
            local_port,
            peer,
            fd: None,
        }
    }

    fn still_ours(&self, fd: libc::c_int) -> bool {
        self.peer.is_some() && addr_of(fd, libc::getpeername) == self.peer
    }

    /// True once the client closed or reset the connection (the socket has
    /// left the ESTABLISHED state; nothing is read), or its socket cannot be
    /// found any more. Unread data alone (a pipelined request) counts as
    /// "still there".
    pub fn gone(&mut self) -> bool {
        let Some(peer) = self.peer else {
            return false; // not a TCP client we can watch
        };
        let fd = match self.fd.filter(|&fd| self.still_ours(fd)) {
            Some(fd) => fd,
            None => match connection_fds(self.local_port, peer).first() {
                Some(&fd) => fd,
                None => return true,
            },
        };
        self.fd = Some(fd);
        // The TCP state tells the peer's FIN (CLOSE_WAIT) or reset (CLOSE)
        // apart from tiny_http's own `shutdown(SHUT_RD)` after a
        // `Connection: close` request, which poll would also report as a
        // read hang-up while the state stays ESTABLISHED.
        tcp_state(fd) != Some(TCP_ESTABLISHED)
    }
}

/// Linux's `TCP_ESTABLISHED` (include/net/tcp_states.h), absent from libc.
const TCP_ESTABLISHED: u8 = 1;

/// The TCP state (`tcpi_state`, e.g. [`TCP_ESTABLISHED`]) of socket `fd`.
fn tcp_state(fd: libc::c_int) -> Option<u8> {
    // SAFETY: tcp_info is plain data, valid when zeroed; `len` tells the
    // kernel its size, and it fills at most that much.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt into a live local of the stated size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_state)
}

/// Shut down our listening socket on `port`: new connections are refused
/// from then on, while connections already accepted carry on.
pub fn close_listener(port: u16) -> bool {
    let mut found = false;
    for fd in open_fds() {
        if addr_of(fd, libc::getpeername).is_some() {
            continue; // a connection, not the listener
        }
        if addr_of(fd, libc::getsockname).map(|a| a.port()) != Some(port) {
            continue;
        }
        // SAFETY: plain shutdown(2) on one of our own sockets.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        found = true;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn shutdown_gives_peer_eof() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server_side, peer) = l.accept().unwrap();
        assert!(shutdown_connection(port, peer));
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn watch_sees_the_client_leave() {
        use std::io::Write;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server_side, peer) = l.accept().unwrap();
        let mut w = ConnWatch::new(port, Some(peer));
        assert!(!w.gone());
        // tiny_http shuts its read side after `Connection: close`: not an end.
        server_side.shutdown(std::net::Shutdown::Read).unwrap();
        assert!(!w.gone(), "our own read shutdown is not the client leaving");
        client.write_all(b"x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!w.gone(), "unread data is not an end");
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(w.gone());
        assert!(!ConnWatch::new(port, None).gone());
    }
}
