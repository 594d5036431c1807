//! Child logs: each profile's stdout and stderr, line by line, into
//! `<COORDINATOR_LOG_DIR>/<profile>.log`, rotated at 5 MiB with 5 backups
//! (`.log.1` newest .. `.log.5` oldest).
//!
//! A `RotatingLog` is shared (behind a mutex) by the two pump threads of one
//! child; the lock is held for one line's write only. Write errors are logged
//! once and then dropped: a full disk must never block or kill a child.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
            let _ = fs::create_dir_all(dir);
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)
        {
            Ok(f) => {
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

    /// Append one line (a newline is added).
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

/// Copy `input` into `log` line by line on a thread named `name`, until EOF
/// (every holder of the pipe's write end has exited).
pub fn pump(
    name: String,
    input: impl Read + Send + 'static,
    log: Arc<Mutex<RotatingLog>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut reader = BufReader::with_capacity(16 * 1024, input);
            let mut line = Vec::new();
            loop {
                line.clear();
                match read_line_capped(&mut reader, &mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            line.pop();
                        }
                        // A poisoned lock only means another pump panicked
                        // mid-line; the file itself is still usable.
                        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                        log.write_line(&line);
                    }
                    Err(_) => break,
                }
            }
        })
}

/// Like `read_until(b'\n')` but stops after `MAX_LINE` bytes.
fn read_line_capped(r: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let (done, used) = {
            let buf = match r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok(total);
            }
            let room = MAX_LINE - out.len();
            let take = buf.len().min(room);
            match buf[..take].iter().position(|b| *b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&buf[..=i]);
                    (true, i + 1)
                }
                None => {
                    out.extend_from_slice(&buf[..take]);
                    (out.len() >= MAX_LINE, take)
                }
            }
        };
        r.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
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
    fn long_lines_are_cut() {
        let data = vec![b'x'; MAX_LINE * 2 + 10];
        let mut r = BufReader::new(&data[..]);
        let mut out = Vec::new();
        assert_eq!(read_line_capped(&mut r, &mut out).unwrap(), MAX_LINE);
        out.clear();
        assert_eq!(read_line_capped(&mut r, &mut out).unwrap(), MAX_LINE);
        out.clear();
        assert_eq!(read_line_capped(&mut r, &mut out).unwrap(), 10);
    }
}
