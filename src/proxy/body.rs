//! Reading a client's request body under `MAX_BODY_BYTES`, and cutting off a
//! client whose body we refuse.
//!
//! The body is kept whole in memory because a failed attempt is replayed to
//! the next child byte for byte. A declared length over the limit is refused
//! before a byte is read; a chunked body is refused as soon as it passes it.
//! A refused client's connection is shut down, because tiny_http would
//! otherwise read (and discard) the rest of the body to find the next request.

use std::io::Read;
use std::net::SocketAddr;

use tiny_http::Request;

#[derive(Debug)]
pub enum BodyError {
    TooLarge { limit: u64 },
    Io(std::io::Error),
}

pub fn read_limited(rq: &mut Request, limit: u64) -> Result<Vec<u8>, BodyError> {
    if let Some(n) = rq.body_length() {
        if n as u64 > limit {
            return Err(BodyError::TooLarge { limit });
        }
    }
    let mut body = Vec::with_capacity(rq.body_length().unwrap_or(0).min(1 << 20));
    let mut reader = rq.as_reader().take(limit + 1);
    reader.read_to_end(&mut body).map_err(BodyError::Io)?;
    if body.len() as u64 > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(body)
}

/// Whether the request still has body bytes we have not read.
pub fn has_unread_body(rq: &Request) -> bool {
    rq.body_length().map(|n| n > 0).unwrap_or_else(|| {
        rq.headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"))
    })
}

/// Stop reading from the client of `rq`: its socket (found among our open
/// file descriptors by peer address and our port; tiny_http hides it) is
/// shut for reading, so tiny_http's drain of the unread body ends at once
/// instead of consuming whatever the client keeps sending. Our answer can
/// still be written.
pub fn stop_reading(rq: &Request, local_port: u16) {
    if let Some(peer) = rq.remote_addr() {
        shutdown_client(*peer, local_port, libc::SHUT_RD);
    }
}

pub fn shutdown_client(peer: SocketAddr, local_port: u16, how: i32) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if sock_addr(fd, true) == Some(peer)
            && sock_addr(fd, false).map(|a| a.port()) == Some(local_port)
        {
            // SAFETY: `fd` is an open socket of ours; shutdown does not close it.
            unsafe {
                libc::shutdown(fd, how);
            }
            return;
        }
    }
}

fn sock_addr(fd: i32, peer: bool) -> Option<SocketAddr> {
    // SAFETY: storage is large enough for any address; len is its size.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut storage as *mut _ as *mut libc::sockaddr;
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(p as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(p as *const libc::sockaddr_in6) };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}
