//! Reading `/proc`: the few facts about other processes the coordinator
//! needs (parent, group, session, state, start time, one environment
//! variable, command line, listening sockets). Pure reads, no signals; every
//! function tolerates a process vanishing mid-read (it is then simply not
//! there).

use std::fs;
use std::path::Path;

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub state: char,
    /// Clock ticks after boot; with the pid it names one process for good.
    pub start: u64,
}

impl Stat {
    /// A zombie holds no memory, files or ports; it only waits to be reaped.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself contain spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_stat(pid: i32, text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) session(3) ... starttime(19).
    Some(Stat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        sid: f.get(3)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Every process id in `/proc` right now.
pub fn pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The value of `name` in the environment the process was started with
/// (`/proc/<pid>/environ`; unreadable for other users' processes unless we
/// are privileged, and empty for zombies).
pub fn env_var(pid: i32, name: &str) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    find_var(&raw, name)
}

/// `name`'s value in a NUL-separated `KEY=VALUE` block.
pub fn find_var(raw: &[u8], name: &str) -> Option<String> {
    raw.split(|b| *b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(rest).into_owned())
    })
}

/// The command line, words joined by spaces, cut to `max` characters (for
/// log lines; never parsed).
pub fn cmdline(pid: i32, max: usize) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let mut line = words.join(" ");
    if line.is_empty() {
        line = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| format!("[{}]", c.trim()))
            .unwrap_or_else(|_| "?".into());
    }
    if line.chars().count() > max {
        line = line.chars().take(max).collect::<String>() + "…";
    }
    line
}

/// Inodes of the sockets bound to local port `port` (any address, IPv4 or
/// IPv6), from `/proc/net/tcp{,6}`: listening ones first.
pub fn socket_inodes(port: u16) -> Vec<u64> {
    let mut listening = Vec::new();
    let mut other = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for (local_port, state, inode) in text.lines().skip(1).filter_map(parse_tcp_line) {
            if local_port != port || inode == 0 {
                continue;
            }
            if state == 0x0A {
                listening.push(inode);
            } else {
                other.push(inode);
            }
        }
    }
    listening.extend(other);
    listening
}

/// `(local port, state, inode)` of one line of `/proc/net/tcp`.
fn parse_tcp_line(line: &str) -> Option<(u16, u8, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let local = f.get(1)?;
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let inode = f.get(9)?.parse().ok()?;
    Some((port, state, inode))
}

/// The first process holding a file descriptor on socket `inode`.
pub fn socket_owner(inode: u64) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    pids().into_iter().find(|pid| {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            fs::read_link(fd.path())
                .map(|target| target == Path::new(&want))
                .unwrap_or(false)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let line = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        let s = parse_stat(4242, line).unwrap();
        assert_eq!(
            (s.ppid, s.pgid, s.sid, s.state, s.start),
            (1, 4242, 4242, 'S', 98765)
        );
        assert!(!s.is_zombie());
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[test]
    fn our_own_stat_and_environment_read_back() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(pids().contains(&me));
        assert!(env_var(me, "PATH").is_some() || std::env::var_os("PATH").is_none());
    }

    #[test]
    fn variables_are_matched_by_whole_name() {
        let raw = b"AB=1\0A=2\0A_B=3\0";
        assert_eq!(find_var(raw, "A").as_deref(), Some("2"));
        assert_eq!(find_var(raw, "AB").as_deref(), Some("1"));
        assert_eq!(find_var(raw, "B"), None);
    }

    #[test]
    fn a_listening_socket_is_traced_to_us() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let inodes = socket_inodes(port);
        assert!(!inodes.is_empty());
        assert_eq!(socket_owner(inodes[0]), Some(std::process::id() as i32));
    }

    #[test]
    fn tcp_table_lines_parse() {
        let line = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_tcp_line(line), Some((8080, 0x0A, 123456)));
    }
}
