//! Child logs: each profile's stdout and stderr, line by line, into
//! `<COORDINATOR_LOG_DIR>/<profile>.log`, rotated at 5 MiB with 5 backups
//! (`.log.1` newest .. `.log.5` oldest).
//!
//! A `RotatingLog` is shared (behind a mutex) by the two pump threads of one
//! child; the lock is held for one line's write only. Write errors are logged
//! once and then dropped: a full disk must never block or kill a child.
//!
//! Each line is also shown to the child's [`Listener`], when it has one: the
//! account signs in the log (see `logsigns`) go to the slot's watcher.
//!
//! Credentials inside URLs (`scheme://user:pass@host`) are written as `***`.
//! Files are 0600 in a 0700 directory: only the coordinator's user reads
//! them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::logsigns::{Sign, Signs};

pub const ROTATE_BYTES: u64 = 5 * 1024 * 1024;
pub const BACKUPS: u32 = 5;
/// A longer line is cut into pieces of this size, so one endless line cannot
/// grow a buffer without bound.
const MAX_LINE: usize = 64 * 1024;

pub struct RotatingLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    limit: u64,
    failed: bool,
}

impl RotatingLog {
    pub fn open(path: &Path) -> RotatingLog {
        Self::with_limit(path, ROTATE_BYTES)
    }

    pub fn with_limit(path: &Path, limit: u64) -> RotatingLog {
        let mut log = RotatingLog {
            path: path.to_path_buf(),
            file: None,
            size: 0,
            limit,
            failed: false,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        if let Some(dir) = self.path.parent() {
            // Private: a child's log can hold what its account shows.
            let _ = crate::private::make_dir(dir);
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
        {
            Ok(f) => {
                // A file left by an older version may be wider.
                let _ = f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(e) => {
                self.note_failure(&e);
                self.file = None;
            }
        }
    }

    fn note_failure(&mut self, e: &std::io::Error) {
        if !self.failed {
            log::warn!(
                "cannot write child log {}: {e}; further output of this child is dropped until it works (check COORDINATOR_LOG_DIR)",
                self.path.display()
            );
            self.failed = true;
        }
    }

    fn backup(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) {
        self.file = None;
        let _ = fs::remove_file(self.backup(BACKUPS));
        for n in (1..BACKUPS).rev() {
            let _ = fs::rename(self.backup(n), self.backup(n + 1));
        }
        let _ = fs::rename(&self.path, self.backup(1));
        self.reopen();
    }

    /// Append newline-ended lines, with one write per file they land in:
    /// the file rotates between two lines when the next would take it past
    /// its limit.
    pub fn write_batch(&mut self, lines: &[u8]) {
        // A URL's credentials (a proxy's `user:pass@`, which the real child
        // prints at start) never reach the file.
        let redacted = crate::outbound::redact_bytes(lines);
        let mut lines: &[u8] = &redacted;
        while !lines.is_empty() {
            let room = self.limit.saturating_sub(self.size);
            // The longest run of whole lines that fits; at least one line.
            let mut cut = 0;
            for (i, b) in lines.iter().enumerate() {
                if *b == b'\n' {
                    if (i + 1) as u64 > room && (cut > 0 || self.size > 0) {
                        break;
                    }
                    cut = i + 1;
                }
            }
            if cut == 0 && self.size == 0 {
                // No newline at all (never from the pump): write it as is.
                self.append(lines);
                return;
            }
            if cut == 0 {
                self.rotate();
                continue;
            }
            self.append(&lines[..cut]);
            lines = &lines[cut..];
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.file.is_none() {
            self.reopen();
        }
        let Some(f) = self.file.as_mut() else { return };
        match f.write_all(bytes) {
            Ok(()) => {
                self.size += bytes.len() as u64;
                self.failed = false;
            }
            Err(e) => self.note_failure(&e),
        }
    }

    /// Append one line (a newline is added).
    #[cfg(test)]
    pub fn write_line(&mut self, line: &[u8]) {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.limit {
            self.rotate();
        }
        if self.file.is_none() {
            self.reopen();
        }
        let Some(f) = self.file.as_mut() else { return };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        match f.write_all(&buf) {
            Ok(()) => {
                self.size += len;
                self.failed = false;
            }
            Err(e) => self.note_failure(&e),
        }
    }
}

/// How long a pump waits after a short read so that lines written in quick
/// succession are read and written together: a child logging a line per
/// request would otherwise cost a wakeup and a write per line.
const COALESCE: Duration = Duration::from_millis(10);
/// Pipe capacity asked for, so a child can write this much during one
/// coalescing pause without ever blocking on us.
const PIPE_BYTES: i32 = 1 << 20;

/// Who hears of the signs in one child's log lines.
#[derive(Clone)]
pub struct Listener {
    pub signs: Arc<Signs>,
    /// Unbounded: the pump never waits for the watcher.
    pub tx: Sender<Sign>,
}

impl Listener {
    fn hear(&self, line: &[u8]) {
        if let Some(sign) = self.signs.classify(&String::from_utf8_lossy(line)) {
            let _ = self.tx.send(sign);
        }
    }
}

/// Copy `input` into `log` line by line on a thread named `name`, until EOF
/// (every holder of the pipe's write end has exited). Complete lines read
/// together are written with one write; lines longer than `MAX_LINE` are cut.
pub fn pump(
    name: String,
    input: impl Read + AsRawFd + Send + 'static,
    log: Arc<Mutex<RotatingLog>>,
    listener: Option<Listener>,
) -> std::io::Result<JoinHandle<()>> {
    // SAFETY: F_SETPIPE_SZ on our own pipe's read end; failure only leaves
    // the default 64 KiB, and the pump still works.
    unsafe {
        libc::fcntl(input.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES);
    }
    std::thread::Builder::new()
        .name(name)
        .stack_size(64 * 1024)
        .spawn(move || pump_lines(input, &log, listener.as_ref()))
}

fn pump_lines(mut input: impl Read, log: &Mutex<RotatingLog>, listener: Option<&Listener>) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes of a line whose end has not arrived yet.
    let mut partial: Vec<u8> = Vec::new();
    let mut batch: Vec<u8> = Vec::with_capacity(buf.len() + 1024);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        batch.clear();
        for &b in &buf[..n] {
            if b == b'\n' {
                end_line(&mut partial, &mut batch, listener);
            } else {
                partial.push(b);
                if partial.len() >= MAX_LINE {
                    end_line(&mut partial, &mut batch, listener);
                }
            }
        }
        if !batch.is_empty() {
            // A poisoned lock only means another pump panicked mid-write;
            // the file itself is still usable.
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_batch(&batch);
        }
        if n < buf.len() / 2 {
            std::thread::sleep(COALESCE);
        }
    }
    if !partial.is_empty() {
        let mut batch = Vec::new();
        end_line(&mut partial, &mut batch, listener);
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_batch(&batch);
    }
}

/// Move the line in `partial` (without its CR) into `batch`, newline-ended,
/// after showing it to `listener`.
fn end_line(partial: &mut Vec<u8>, batch: &mut Vec<u8>, listener: Option<&Listener>) {
    if partial.last() == Some(&b'\r') {
        partial.pop();
    }
    if let Some(l) = listener {
        l.hear(partial);
    }
    batch.extend_from_slice(partial);
    batch.push(b'\n');
    partial.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_keeping_five_backups() {
        let dir = std::env::temp_dir().join(format!("aisp-childlog-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("p.log");
        let mut log = RotatingLog::with_limit(&path, 100);
        for i in 0..100 {
            log.write_line(format!("line {i:03} ..................").as_bytes());
        }
        for n in 1..=BACKUPS {
            let b = log.backup(n);
            let len = fs::metadata(&b).unwrap().len();
            assert!(len <= 100 && len > 0, "{} has {len}", b.display());
        }
        assert!(!log.backup(BACKUPS + 1).exists());
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("line 099 ..................\n"));
        let older = fs::read_to_string(log.backup(1)).unwrap();
        assert!(older.contains("line 09"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn url_credentials_never_reach_the_file() {
        let dir = std::env::temp_dir().join(format!("aisp-childlog-redact-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("p.log");
        let mut log = RotatingLog::open(&path);
        log.write_batch(
            b"Env var UNIFIED_PROXY_CONFIG: http://u:secretpw@10.0.0.5:3128\nplain line\n",
        );
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "Env var UNIFIED_PROXY_CONFIG: http://***@10.0.0.5:3128\nplain line\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_are_batched_cut_and_completed_at_eof() {
        let dir = std::env::temp_dir().join(format!("aisp-childlog-pump-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("p.log");
        let log = Mutex::new(RotatingLog::open(&path));
        let mut data = b"one\r\ntwo\n".to_vec();
        data.extend(vec![b'x'; MAX_LINE + 5]);
        data.extend_from_slice(b"\nlast without newline");
        let (tx, rx) = crossbeam_channel::unbounded();
        let listener = Listener {
            signs: Arc::new(Signs::default()),
            tx,
        };
        data.extend_from_slice(b"\nGLOBAL ALERT: Quota Exceeded! Type: RATE_LIMIT\nquiet");
        pump_lines(&data[..], &log, Some(&listener));
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![Sign::RateLimit]);
        let got = fs::read(&path).unwrap();
        let lines: Vec<&[u8]> = got.split(|b| *b == b'\n').collect();
        assert_eq!(lines[0], b"one");
        assert_eq!(lines[1], b"two");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], b"xxxxx");
        assert_eq!(lines[4], b"last without newline");
        assert_eq!(lines[6], b"quiet");
        fs::remove_dir_all(&dir).unwrap();
    }
}
