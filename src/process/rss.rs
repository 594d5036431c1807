//! Resident memory of a child's whole process tree, from `/proc`.
//!
//! The tree is the one `tree::Scan::child_tree` finds (launcher, its group,
//! everything carrying its tag, and descendants: the browser included,
//! though it lives in sessions of its own). Each member's resident set is
//! read from `/proc/<pid>/statm` (resident pages times the page size) and
//! the sizes are summed, as `ps` would show them: pages shared between
//! members (a browser's content processes share most of their code) count
//! once per member, so the sum is an upper bound of what the tree holds.
//! Pure reads, run on the calling watcher's thread with no lock held; a
//! process that vanishes mid-read simply counts nothing.

use std::fs;
use std::sync::OnceLock;

use super::tree::Scan;

/// Resident pages, the second field of `/proc/<pid>/statm`.
pub fn parse_statm(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

fn page_size() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            n as u64
        } else {
            4096
        }
    })
}

/// Bytes resident for process `pid` now (None: gone or unreadable).
pub fn of(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    Some(parse_statm(&text)? * page_size())
}

/// The summed resident bytes of the tree of the child led by `leader` and
/// tagged `tag`, and how many processes it counted.
pub fn of_tree(leader: i32, tag: &str) -> (u64, usize) {
    let members = Scan::take().child_tree(leader, tag);
    let bytes = members.iter().filter_map(|s| of(s.pid)).sum();
    (bytes, members.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_lines_parse() {
        assert_eq!(parse_statm("2593 345 286 27 0 117 0\n"), Some(345));
        assert_eq!(parse_statm("2593"), None);
        assert_eq!(parse_statm(""), None);
        assert_eq!(parse_statm("a b c"), None);
    }

    #[test]
    fn a_process_with_a_megabyte_more_shows_it() {
        let me = std::process::id() as i32;
        let before = of(me).unwrap();
        assert!(before > 0);
        // Touch 16 MiB so it is resident, then look again.
        let block = vec![1u8; 16 << 20];
        let after = of(me).unwrap();
        assert!(block.iter().step_by(4096).all(|b| *b == 1));
        assert!(after >= before + (8 << 20), "before {before} after {after}");
        assert_eq!(of(-1), None);
    }

    #[test]
    fn a_tree_sums_its_members() {
        // A child of ours in its own group counts with its leader.
        let mut c = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = c.id() as i32;
        let (bytes, n) = of_tree(pid, "no-such-tag");
        let _ = c.kill();
        let _ = c.wait();
        assert_eq!(n, 1);
        assert!(bytes > 0);
    }
}
