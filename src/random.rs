//! Unguessable bytes from the kernel (`getrandom(2)`, the same source as
//! `/dev/urandom`), for request ids and the per-boot key of key labels.
//! No state; callable from any thread.

/// `N` random bytes. The kernel's pool is ready long before a container
/// starts us; should the call fail anyway, `/dev/urandom` is read instead,
/// and as a last resort the clock and a counter are mixed (never panics).
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writes at most N - filled bytes into our own buffer.
        let r = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr() as *mut libc::c_void,
                N - filled,
                0,
            )
        };
        if r > 0 {
            filled += r as usize;
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return urandom_or_clock();
    }
    buf
}

fn urandom_or_clock<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut buf = [0u8; N];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
    {
        return buf;
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
    for b in buf.iter_mut() {
        // splitmix64 steps
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *b = (z ^ (z >> 31)) as u8;
    }
    buf
}

/// `N` random bytes as lowercase hex.
pub fn hex<const N: usize>() -> String {
    bytes::<N>().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_bytes_differ_and_are_hex() {
        let (a, b) = (super::hex::<16>(), super::hex::<16>());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
