//! Ballast: memory the launcher takes on request and keeps until it exits
//! (`POST /_testchild/grow_rss/<MiB>`), so a test can push a child's tree
//! past the coordinator's `CHILD_MAX_RSS_MB` at a moment of its choosing.
//! Every page is written, so all of it is resident at once.

use std::sync::Mutex;

/// The most one request may add.
pub const MAX_MB: u64 = 1024;

static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Take `mb` MiB more (at most `MAX_MB`); returns the MiB held in all.
pub fn grow(mb: u64) -> u64 {
    // A non-zero fill writes every page: resident, not just reserved.
    let block = vec![0x5au8; (mb.min(MAX_MB) << 20) as usize];
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    held.push(block);
    held.iter().map(|b| b.len() as u64).sum::<u64>() >> 20
}

#[cfg(test)]
mod tests {
    #[test]
    fn grows_and_keeps() {
        assert_eq!(super::grow(1), 1);
        assert_eq!(super::grow(2), 3);
    }
}
