//! Watching the children's ports from outside: `tcpdump` (Debian's package)
//! records every TCP segment with data to or from them on the loopback
//! interface, with the kernel's timestamp (µs, wall clock), and this module
//! reads the capture back and finds, per child, when each completion
//! reached it (its request's first segment) and when the child freed up (the
//! last segment of its answer). Nothing of the proxies or of the children is
//! changed or instrumented, so the same measure applies to every proxy.
//!
//! Needs root (a packet socket) and tcpdump; without them the caller skips
//! the figures that need it.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{die_with_parent, forget_group, kill_group, register_group, wait_for, TempDir};

/// tcpdump on PATH or in /usr/bin, /usr/sbin.
pub fn find_tcpdump() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tcpdump"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        ["/usr/bin/tcpdump", "/usr/sbin/tcpdump"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

/// A running capture of the data segments to and from `ports` on `lo`.
pub struct Capture {
    proc: Option<Child>,
    file: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

impl Capture {
    pub fn start(binary: &Path, ports: &[u16]) -> Result<Capture, String> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: a packet capture needs CAP_NET_RAW".into());
        }
        let dir = TempDir::new("pcap");
        let file = dir.path().join("children.pcap");
        let stderr = dir.path().join("tcpdump.log");
        let ports: Vec<String> = ports.iter().map(|p| format!("port {p}")).collect();
        // Segments that carry data only (IP length minus both headers).
        let filter = format!(
            "tcp and ({}) and (((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) != 0)",
            ports.join(" or ")
        );
        let log = std::fs::File::create(&stderr).map_err(|e| format!("tcpdump log: {e}"))?;
        let mut cmd = Command::new(binary);
        // -s 128: headers and the first bytes of data are enough; -B: a
        // 16 MiB kernel buffer so nothing is dropped under load; -Z root:
        // keep writing into our temp dir; -U: write each packet as it
        // comes; -n: no name look-ups.
        cmd.args([
            "-i", "lo", "-n", "-s", "128", "-B", "16384", "-Z", "root", "-U", "-w",
        ])
        .arg(&file)
        .arg(&filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
        die_with_parent(&mut cmd);
        let proc = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        register_group(proc.id() as i32);
        let mut c = Capture {
            proc: Some(proc),
            file,
            stderr,
            _dir: dir,
        };
        let listening = wait_for(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(10),
            || {
                std::fs::read_to_string(&c.stderr)
                    .ok()
                    .filter(|s| s.contains("listening on"))
            },
        );
        if listening.is_none() {
            let log = std::fs::read_to_string(&c.stderr).unwrap_or_default();
            c.stop();
            return Err(format!("tcpdump did not start: {}", log.trim()));
        }
        Ok(c)
    }

    fn stop(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        let pgid = p.id() as i32;
        // The kernel hands tcpdump its packets in blocks, a partly filled
        // one after at most 1 s (tcpdump's buffer timeout); what is still
        // in a block at SIGINT is lost, so the last one is let through.
        std::thread::sleep(Duration::from_millis(1500));
        // SIGINT: tcpdump flushes its file and prints its counts.
        kill_group(pgid, libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(5);
        if wait_for(deadline, Duration::from_millis(10), || {
            p.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = p.kill();
            let _ = p.wait();
        }
        kill_group(pgid, libc::SIGKILL);
        forget_group(pgid);
    }

    /// Stops the capture and reads it: the segments in time order, and
    /// tcpdump's own account (captured, dropped by the kernel).
    pub fn finish(mut self) -> Result<(Vec<Segment>, String), String> {
        self.stop();
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let counts: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("packets"))
            .map(str::trim)
            .collect();
        let mut bytes = Vec::new();
        std::fs::File::open(&self.file)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("read the capture: {e}"))?;
        let mut segs = parse(&bytes)?;
        segs.sort_by_key(|s| s.ts_us);
        Ok((segs, counts.join(", ")))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One TCP segment with data.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    /// Kernel timestamp, µs since the epoch.
    pub ts_us: i64,
    pub src: u16,
    pub dst: u16,
    /// Whether its data starts like an HTTP request line (`POST `,
    /// `GET `, ...), and whether that is a `POST`.
    pub request_start: bool,
    pub post: bool,
}

/// Reads a classic pcap file (µs or ns timestamps, either byte order) of
/// Ethernet, Linux cooked (v1, v2) or raw IP frames; IPv4/TCP only.
pub fn parse(b: &[u8]) -> Result<Vec<Segment>, String> {
    if b.len() < 24 {
        return Err("capture shorter than its header".into());
    }
    let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let (le, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        m => return Err(format!("not a pcap file (magic {m:#x})")),
    };
    let u32_at = |o: usize| {
        let a = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let link = u32_at(20);
    let link_len = match link {
        1 => 14,   // Ethernet (what `lo` gives)
        113 => 16, // Linux cooked v1
        276 => 20, // Linux cooked v2
        101 => 0,  // raw IP
        228 => 0,  // raw IPv4
        l => return Err(format!("unsupported link type {l}")),
    };
    let mut out = Vec::new();
    let mut o = 24;
    while o + 16 <= b.len() {
        let sec = i64::from(u32_at(o));
        let frac = i64::from(u32_at(o + 4));
        let incl = u32_at(o + 8) as usize;
        let data_at = o + 16;
        o = data_at + incl;
        if o > b.len() {
            break; // a record cut short by the end of the file
        }
        let ts_us = sec * 1_000_000 + if nanos { frac / 1000 } else { frac };
        let f = &b[data_at..data_at + incl];
        if f.len() < link_len + 20 {
            continue;
        }
        let ip = &f[link_len..];
        if ip[0] >> 4 != 4 || ip[9] != 6 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip.len() < ihl + 20 {
            continue;
        }
        let tcp = &ip[ihl..];
        let src = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dst = u16::from_be_bytes([tcp[2], tcp[3]]);
        let doff = usize::from(tcp[12] >> 4) * 4;
        if total <= ihl + doff {
            continue; // no data
        }
        let data = tcp.get(doff..).unwrap_or(&[]);
        let request_start = ["POST ", "GET ", "HEAD ", "PUT ", "DELETE ", "OPTIONS "]
            .iter()
            .any(|m| data.starts_with(m.as_bytes()));
        out.push(Segment {
            ts_us,
            src,
            dst,
            request_start,
            post: data.starts_with(b"POST "),
        });
    }
    Ok(out)
}

/// One completion as the child's port saw it.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub child: u16,
    /// Its request's first segment reached the child.
    pub arrived_us: i64,
    /// The last segment of its answer left the child.
    pub freed_us: i64,
}

/// The completions seen at `children` between `from_us` and `to_us`: a
/// `POST` request's first segment, then the last segment the child sent on
/// that connection before the connection's next request.
pub fn completions(segs: &[Segment], children: &[u16], from_us: i64, to_us: i64) -> Vec<Served> {
    // Per connection (child port, peer port): the open request, if a POST.
    let mut open: HashMap<(u16, u16), Option<usize>> = HashMap::new();
    let mut out: Vec<(Served, bool)> = Vec::new();
    for s in segs
        .iter()
        .filter(|s| s.ts_us >= from_us && s.ts_us <= to_us)
    {
        if children.contains(&s.dst) {
            let key = (s.dst, s.src);
            if s.request_start {
                let idx = s.post.then(|| {
                    out.push((
                        Served {
                            child: s.dst,
                            arrived_us: s.ts_us,
                            freed_us: s.ts_us,
                        },
                        false,
                    ));
                    out.len() - 1
                });
                open.insert(key, idx);
            }
        } else if children.contains(&s.src) {
            if let Some(Some(i)) = open.get(&(s.src, s.dst)) {
                out[*i].0.freed_us = s.ts_us;
                out[*i].1 = true;
            }
        }
    }
    out.into_iter()
        .filter(|(_, answered)| *answered)
        .map(|(s, _)| s)
        .collect()
}

/// How fast freed children got the next waiting request.
#[derive(Debug, Default)]
pub struct Handoffs {
    /// From a child freeing up, while a request sent by a client had not
    /// reached any child yet, to the next request reaching that child (µs).
    pub gaps_us: Vec<i64>,
    /// Completions after which the next request had already reached the
    /// child while it was busy: it waited inside the child.
    pub inside: usize,
    /// Completions after which nothing was waiting.
    pub idle: usize,
    pub completions: usize,
}

/// A request sent this long before a child frees up and not at any child
/// by then is taken to be waiting in the proxy's queue (rather than still
/// being read by the proxy).
pub const QUEUED_AFTER_US: i64 = 1000;

/// `sent_us`: when clients sent each request (µs since the epoch). A child
/// that frees up at `t` has a request waiting for it when more requests
/// were sent by `t - QUEUED_AFTER_US` than reached any child by `t`, beyond
/// one for each other child idle at `t` (such a request may be on its way
/// there).
pub fn handoffs(served: &[Served], children: &[u16], sent_us: &[i64]) -> Handoffs {
    let mut sent = sent_us.to_vec();
    sent.sort_unstable();
    let mut arrived: Vec<i64> = served.iter().map(|s| s.arrived_us).collect();
    arrived.sort_unstable();
    let count_le = |v: &[i64], t: i64| v.partition_point(|&x| x <= t);
    let mut h = Handoffs {
        completions: served.len(),
        ..Handoffs::default()
    };
    for &c in children {
        let mut mine: Vec<&Served> = served.iter().filter(|s| s.child == c).collect();
        mine.sort_by_key(|s| s.arrived_us);
        for w in mine.windows(2) {
            let (done, next) = (w[0], w[1]);
            if next.arrived_us <= done.freed_us {
                h.inside += 1;
            } else if count_le(&sent, done.freed_us - QUEUED_AFTER_US)
                > count_le(&arrived, done.freed_us) + idle_others(served, c, done.freed_us)
            {
                h.gaps_us.push(next.arrived_us - done.freed_us);
            } else {
                h.idle += 1;
            }
        }
    }
    h
}

/// Children other than `child` serving nothing at `t`.
fn idle_others(served: &[Served], child: u16, t: i64) -> usize {
    let mut busy: Vec<u16> = served
        .iter()
        .filter(|s| s.child != child && s.arrived_us <= t && t < s.freed_us)
        .map(|s| s.child)
        .collect();
    busy.sort_unstable();
    busy.dedup();
    let mut others: Vec<u16> = served
        .iter()
        .map(|s| s.child)
        .filter(|&c| c != child)
        .collect();
    others.sort_unstable();
    others.dedup();
    others.len() - busy.len()
}

/// Times from arrival to freeing at `child`, for completions that did not
/// wait inside the child (the child's own service time as seen on its
/// port), in µs.
pub fn service_samples(served: &[Served], child: u16) -> Vec<i64> {
    let mut mine: Vec<&Served> = served.iter().filter(|s| s.child == child).collect();
    mine.sort_by_key(|s| s.arrived_us);
    let mut d: Vec<i64> = Vec::new();
    for (i, s) in mine.iter().enumerate() {
        let after_prev = i == 0 || mine[i - 1].freed_us < s.arrived_us;
        if after_prev {
            d.push(s.freed_us - s.arrived_us);
        }
    }
    d
}

/// The median of [`service_samples`].
pub fn service_us(served: &[Served], child: u16) -> Option<i64> {
    let mut d = service_samples(served, child);
    d.sort_unstable();
    d.get(d.len() / 2).copied()
}
