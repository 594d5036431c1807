//! Profile leases (`PROFILE_LEASES=s3`) end to end: several real
//! coordinators over one bucket of a real S3 server on 127.0.0.1.
//!
//! The server is moto's (`tests/python/serial_s3.py`, from `.venv`), run
//! serving one request at a time so each conditional write is checked and
//! applied atomically; it enforces `If-None-Match: *` and `If-Match` on
//! PutObject (and `If-Match` on DeleteObject). s3s-fs, the S3 tests'
//! server, enforces the PutObject preconditions too but checks them without
//! a lock, so two racing takes could both pass: fine for write-back, not
//! for a storm of takeovers. `--lax` makes the same server ignore every
//! precondition, for the refusal test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{self, secs, wait_until, Builder, Coordinator, TestDir};

const BUCKET: &str = "fleet";
const PREFIX: &str = "team";
const TTL_S: u64 = 6;

/// moto's S3 server on 127.0.0.1, killed on Drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(lax: bool) -> Moto {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".venv/bin/python");
        assert!(
            python.is_file(),
            "{} missing: run scripts/test.sh once (it installs tests/python/requirements.txt)",
            python.display()
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut cmd = Command::new(python);
        cmd.arg(root.join("tests/python/serial_s3.py"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if lax {
            cmd.arg("--lax");
        }
        let child = cmd.spawn().expect("start moto");
        let m = Moto { child, port };
        wait_until("moto to listen", secs(30.0), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert_eq!(m.request("PUT", &format!("/{BUCKET}"), b"").0, 200);
        m
    }

    /// One HTTP/1.0 request; (status, body). moto checks no signature,
    /// but wants an `Authorization` header to know the account.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect moto");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nAuthorization: AWS4-HMAC-SHA256 \
             Credential=AKIATEST/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Length: {}\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        (status, body.to_string())
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn put_profiles(&self, names: &[&str]) {
        for n in names {
            let body = serde_json::json!({ "cookies": [], "name": n }).to_string();
            let (code, _) = self.request(
                "PUT",
                &format!("/{BUCKET}/{PREFIX}/active/{n}.json"),
                body.as_bytes(),
            );
            assert_eq!(code, 200);
        }
    }

    /// Every lease object: (key, document).
    fn leases(&self) -> Vec<(String, serde_json::Value)> {
        let (_, list) = self.request(
            "GET",
            &format!("/{BUCKET}?list-type=2&prefix={PREFIX}/leases/"),
            b"",
        );
        list.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|x| x.0.to_string()))
            .map(|k| {
                let (_, doc) = self.request("GET", &format!("/{BUCKET}/{k}"), b"");
                (k, serde_json::from_str(&doc).unwrap_or_default())
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn builder(moto: &Moto, replica: &str) -> Builder {
    Builder::new()
        .pool_size(2)
        .grace_s(2)
        .env("PROFILE_BACKEND", "s3")
        .env("AUTH_PROFILE_S3_BUCKET", BUCKET)
        .env("AUTH_PROFILE_S3_PREFIX", PREFIX)
        .env("AUTH_PROFILE_S3_ENDPOINT", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "AKIATEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AUTH_WRITEBACK", "off")
        .env("PROFILE_LEASES", "s3")
        .env("LEASE_TTL_S", TTL_S)
        .env("REPLICA_ID", replica)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The profiles with a child process on the coordinator at `port` (empty
/// when it does not answer).
fn running(port: u16) -> BTreeSet<String> {
    let Some(r) = common::http_get(port, "/ready") else {
        return BTreeSet::new();
    };
    common::slots(&r.json())
        .into_iter()
        .filter(|s| s.pid.is_some())
        .filter_map(|s| s.profile)
        .collect()
}

#[test]
fn a_store_that_ignores_preconditions_is_refused_at_start() {
    let moto = Moto::start(true);
    moto.put_profiles(&["a"]);
    let dir = TestDir::new("lease_lax_store");
    let done = Coordinator::run_to_exit(&dir, builder(&moto, "r1"));
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    let line = done
        .stderr
        .lines()
        .find(|l| l.starts_with("aistudioproxy: "))
        .unwrap_or_else(|| panic!("no error line: {}", done.stderr));
    assert!(
        line.contains("does not honour S3 conditional writes") && line.contains(&moto.endpoint()),
        "{line}"
    );
    assert!(running_children(&dir).is_empty());
}

fn running_children(dir: &TestDir) -> Vec<(i32, String)> {
    common::tree_survivors(dir)
}

#[test]
fn leases_are_refused_without_the_s3_backend() {
    let dir = TestDir::new("lease_local");
    dir.write_profiles(&["a"]);
    let done = Coordinator::run_to_exit(
        &dir,
        Builder::new()
            .env("PROFILE_LEASES", "s3")
            .env("REPLICA_ID", "x"),
    );
    assert_eq!(done.status.code(), Some(2));
    assert!(
        done.stderr
            .contains("PROFILE_LEASES=s3 needs PROFILE_BACKEND=s3"),
        "{}",
        done.stderr
    );
}

/// What the sampler saw.
#[derive(Default)]
struct Samples {
    rounds: u64,
    /// A profile certainly running on two coordinators at once: seen on X,
    /// then on Y, then on X again, within one round.
    doubles: Vec<String>,
    /// Seen on two coordinators in one pass (may be a handoff between
    /// two samples).
    naive: u64,
}

/// Sample `/ready` of every live coordinator twice per round, every 50 ms.
fn sampler(
    live: Arc<Mutex<BTreeMap<String, u16>>>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Samples>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let begun = Instant::now();
            let who: Vec<(String, u16)> = live
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            let first: Vec<BTreeSet<String>> = who.iter().map(|(_, p)| running(*p)).collect();
            let second: Vec<BTreeSet<String>> = who.iter().map(|(_, p)| running(*p)).collect();
            let mut o = out.lock().unwrap();
            o.rounds += 1;
            for x in 0..who.len() {
                for y in x + 1..who.len() {
                    o.naive += first[x].intersection(&first[y]).count() as u64;
                    // x is sampled before y in each pass: x, y, x or y, x, y
                    // in sample order proves both ran it at one moment.
                    let all: BTreeSet<&String> = first[x].union(&first[y]).collect();
                    for p in all {
                        let xyx =
                            first[x].contains(p) && first[y].contains(p) && second[x].contains(p);
                        let yxy =
                            first[y].contains(p) && second[x].contains(p) && second[y].contains(p);
                        if xyx || yxy {
                            o.doubles.push(format!(
                                "{p} on {} and {} at {}",
                                who[x].0,
                                who[y].0,
                                now_ms()
                            ));
                        }
                    }
                }
            }
            drop(o);
            std::thread::sleep(Duration::from_millis(50).saturating_sub(begun.elapsed()));
        }
    })
}

/// Where each profile runs now, over the coordinators in `live`.
fn placement(live: &Mutex<BTreeMap<String, u16>>) -> BTreeMap<String, String> {
    let who: Vec<(String, u16)> = live
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let mut m = BTreeMap::new();
    for (id, port) in who {
        for p in running(port) {
            m.insert(p, id.clone());
        }
    }
    m
}

#[test]
fn three_coordinators_never_drive_one_profile_twice_through_a_storm() {
    let moto = Moto::start(false);
    let names = ["p1", "p2", "p3", "p4", "p5", "p6", "p7"];
    moto.put_profiles(&names);
    let dirs: Vec<TestDir> = (0..5)
        .map(|i| TestDir::with_deadline(&format!("lease_storm{i}"), Duration::from_secs(240)))
        .collect();
    let live: Arc<Mutex<BTreeMap<String, u16>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Samples>> = Default::default();
    let sampling = sampler(live.clone(), stop.clone(), samples.clone());

    let mut coords: BTreeMap<String, Coordinator> = BTreeMap::new();
    for (i, id) in ["ra", "rb", "rc"].iter().enumerate() {
        let c = Coordinator::start(&dirs[i], builder(&moto, id));
        live.lock()
            .unwrap()
            .insert(id.to_string(), c.ports.coordinator);
        coords.insert(id.to_string(), c);
    }
    let started = Instant::now();
    wait_until("six profiles to run", secs(40.0), || {
        placement(&live).len() == 6
    });
    let spread: BTreeMap<String, usize> =
        placement(&live)
            .values()
            .fold(BTreeMap::new(), |mut m, id| {
                *m.entry(id.clone()).or_default() += 1;
                m
            });
    eprintln!("spread at start: {spread:?}");

    // Child kills: each dies, its slot rotates, its lease moves on.
    for round in 0..6 {
        let (id, _) = coords.iter().nth(round % 3).unwrap();
        let port = live.lock().unwrap()[id];
        if let Some(pid) = common::slots(&common::http_get(port, "/ready").unwrap().json())
            .iter()
            .find_map(|s| s.pid)
        {
            common::send_signal_to(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_until("six profiles to run after the kills", secs(30.0), || {
        placement(&live).len() == 6
    });

    // A rolling update: a new pod (rd) comes up, then rb gets SIGTERM.
    let rd = Coordinator::start(&dirs[3], builder(&moto, "rd"));
    live.lock()
        .unwrap()
        .insert("rd".into(), rd.ports.coordinator);
    coords.insert("rd".into(), rd);
    std::thread::sleep(Duration::from_secs(2));
    let of_rb: Vec<String> = placement(&live)
        .into_iter()
        .filter(|(_, id)| id == "rb")
        .map(|(p, _)| p)
        .collect();
    assert!(!of_rb.is_empty(), "rb runs nothing before its SIGTERM");
    let t = Instant::now();
    coords["rb"].send_signal(libc::SIGTERM);
    let mut rb = coords.remove("rb").unwrap();
    wait_until(
        // ra, rc and rd have six slots for seven profiles: every slot
        // runs, one with a profile of rb's (rd had one slot free).
        &format!("a profile of rb's {of_rb:?} to run elsewhere"),
        secs(30.0),
        || {
            let now = placement(&live);
            let elsewhere: BTreeMap<&String, &String> =
                now.iter().filter(|(_, id)| *id != "rb").collect();
            elsewhere.len() == 6 && of_rb.iter().any(|p| elsewhere.contains_key(p))
        },
    );
    let after_sigterm = t.elapsed();
    rb.wait_exit(secs(20.0));
    live.lock().unwrap().remove("rb");

    // A crash: rc is SIGKILLed; re (new) takes over once its leases expire.
    let re = Coordinator::start(&dirs[4], builder(&moto, "re"));
    live.lock()
        .unwrap()
        .insert("re".into(), re.ports.coordinator);
    coords.insert("re".into(), re);
    std::thread::sleep(Duration::from_secs(2));
    let of_rc: Vec<String> = placement(&live)
        .into_iter()
        .filter(|(_, id)| id == "rc")
        .map(|(p, _)| p)
        .collect();
    assert!(!of_rc.is_empty(), "rc runs nothing before its SIGKILL");
    let t = Instant::now();
    coords["rc"].send_signal(libc::SIGKILL);
    let mut rc = coords.remove("rc").unwrap();
    live.lock().unwrap().remove("rc");
    wait_until(
        // ra, rd and re: six slots again, one free for rc's profiles.
        &format!("a profile of rc's {of_rc:?} to run elsewhere"),
        secs(TTL_S as f64 + 20.0),
        || {
            let now = placement(&live);
            now.len() == 6 && of_rc.iter().any(|p| now.contains_key(p))
        },
    );
    let after_sigkill = t.elapsed();
    rc.wait_exit(secs(5.0));
    // Its children died with it (PDEATHSIG).
    common::wait_no_survivors(&dirs[2], Duration::from_secs(5));

    // The lease writes of a replica that ran the whole time.
    let ra_ready = coords["ra"].ready().1;
    let writes = ra_ready["leases"]["writes"].as_u64().unwrap_or(0);
    let per_minute = writes as f64 * 60.0 / started.elapsed().as_secs_f64();

    // Everyone stops; every lease ends released or expired, no child left.
    for c in coords.values() {
        c.send_signal(libc::SIGTERM);
    }
    for c in coords.values_mut() {
        c.wait_exit(secs(20.0));
    }
    live.lock().unwrap().clear();
    stop.store(true, Ordering::Relaxed);
    sampling.join().unwrap();
    for d in &dirs {
        common::wait_no_survivors(d, Duration::from_secs(5));
    }
    let leases = moto.leases();
    assert!(!leases.is_empty(), "no lease objects were written");
    for (key, doc) in &leases {
        let expires = doc["expires_unix_ms"].as_u64().unwrap_or(u64::MAX);
        assert!(
            expires <= now_ms(),
            "{key} still held after every coordinator stopped: {doc}"
        );
    }
    let s = samples.lock().unwrap();
    eprintln!(
        "LEASE STORM: {} rounds sampled; double-held samples: {} (naive same-pass overlaps: {}); \
         takeover after SIGTERM {after_sigterm:.1?}, after SIGKILL {after_sigkill:.1?} (TTL {TTL_S}s); \
         ra wrote {writes} leases in {:.0?} = {per_minute:.1}/min",
        s.rounds,
        s.doubles.len(),
        s.naive,
        started.elapsed()
    );
    assert!(s.doubles.is_empty(), "double-held: {:?}", s.doubles);
    assert!(after_sigterm < Duration::from_secs(5), "{after_sigterm:?}");
    assert!(
        after_sigkill < Duration::from_secs(TTL_S + 5),
        "{after_sigkill:?}"
    );
}

/// The wall-clock time (unix ms) of the last write of each lease object,
/// from its expiry (`expires = write + TTL`, at takes and renewals alike),
/// and that expiry: profile -> (written, expires).
fn lease_writes(moto: &Moto) -> BTreeMap<String, (u64, u64)> {
    moto.leases()
        .into_iter()
        .filter_map(|(key, doc)| {
            let name = key.rsplit('/').next()?.strip_suffix(".json")?.to_string();
            let expires = doc["expires_unix_ms"].as_u64()?;
            Some((name, (expires - TTL_S * 1000, expires)))
        })
        .collect()
}

/// The network-split guarantee end to end: a replica that cannot reach S3
/// keeps its children only until `keep_for` (TTL − TTL/6 − stop grace)
/// after its last successful lease write, so each is gone before the lease
/// expires (on a clock up to the margin ahead, even); when S3 comes back it
/// leases the profiles again and restarts them.
///
/// The split is moto SIGSTOPped, not killed: connections still open (the
/// kernel's listen backlog) but nothing answers, as when a network drops
/// packets, so every lease request runs into the client's timeout (TTL/6 =
/// 1 s here) instead of failing at once; the harder case for the leaser's
/// timing. It heals with SIGCONT: serial_s3.py keeps the bucket in memory
/// only (no persistent data dir), so a new server on the same port would
/// be an empty store, not the same one back; SIGCONT is the same store,
/// which also applies the requests that queued meanwhile, as a real store
/// may apply writes whose answers were lost.
#[test]
fn a_replica_cut_off_from_s3_stops_its_children_before_their_leases_expire() {
    const GRACE_S: u64 = 1;
    let margin_ms = TTL_S * 1000 / 6;
    let keep_for_ms = TTL_S * 1000 - margin_ms - GRACE_S * 1000;
    let moto = Moto::start(false);
    let names = ["a", "b", "c", "d"];
    moto.put_profiles(&names);
    let dir = TestDir::with_deadline("lease_split", Duration::from_secs(120));
    let c = Coordinator::start(&dir, builder(&moto, "r1").pool_size(4).grace_s(GRACE_S));
    c.wait_all_ready(secs(30.0));
    wait_until("every lease held", secs(10.0), || {
        let (_, r) = c.ready();
        common::strings(&r["leases"]["held"]) == names
    });
    wait_until("every lease renewed once", secs(10.0), || {
        c.ready().1["leases"]["renewed"].as_u64().unwrap_or(0) >= 4
    });
    // Renewals run every TTL/3 = 2 s. Cut S3 off just after one, when no
    // write is more than 1.2 s old (two profiles' renewals are at most 1 s
    // apart in phase), so none can land between this read and the stop.
    let mut before = BTreeMap::new();
    wait_until("a fresh renewal of every lease", secs(20.0), || {
        before = lease_writes(&moto);
        let now = now_ms();
        before.len() == names.len() && before.values().all(|(w, _)| now.saturating_sub(*w) < 1_200)
    });
    let pids: BTreeMap<String, i32> = c
        .slots()
        .into_iter()
        .filter_map(|s| Some((s.profile?, s.pid?)))
        .collect();
    assert_eq!(pids.len(), names.len(), "{pids:?}");
    let split = now_ms();
    common::send_signal_to(moto.child.id() as i32, libc::SIGSTOP);

    // Each child's end, on the wall clock the lease objects use.
    let mut gone: BTreeMap<String, u64> = BTreeMap::new();
    wait_until("every child to stop", secs(TTL_S as f64 + 10.0), || {
        for (name, pid) in &pids {
            if !gone.contains_key(name) && common::process_gone(*pid) {
                gone.insert(name.clone(), now_ms());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
        gone.len() == pids.len()
    });
    let slots = c.slots();
    // The slots leave `stopping` once the watchers have reaped the children.
    wait_until("no slot to name a stopped child", secs(5.0), || {
        c.slots()
            .iter()
            .all(|s| s.pid.is_none_or(|p| !pids.values().any(|&q| q == p)))
    });
    let log = c.stderr();
    let mut report = Vec::new();
    for (name, (written, expires)) in &before {
        let stop = gone[name];
        report.push(format!(
            "{name}: last write -> stop {} ms (keep_for {keep_for_ms} ms), stop -> expiry {} ms \
             (margin {margin_ms} ms), split -> stop {} ms",
            stop as i64 - *written as i64,
            *expires as i64 - stop as i64,
            stop as i64 - split as i64,
        ));
    }
    eprintln!("LEASE SPLIT: {}", report.join("; "));
    for (name, (written, expires)) in &before {
        let stop = gone[name];
        assert!(
            stop < *expires,
            "{name}: child gone at {stop}, after its lease expired at {expires}: {report:?}"
        );
        // Not early: kept at least keep_for (the write's wall time is taken
        // just before the request, so a little slack).
        assert!(
            stop + 300 >= written + keep_for_ms,
            "{name}: child stopped {} ms after the last write, keep_for is {keep_for_ms} ms",
            stop - written
        );
        assert!(
            log.contains(&format!(
                "profile {name}: its lease could not be renewed for"
            )),
            "no give-up logged for {name}:\n{log}"
        );
        assert!(
            log.contains(&format!(
                "stopping profile {name} pid {}: lease lost",
                pids[name]
            )),
            "no lease-lost stop logged for {name}:\n{log}"
        );
        // Only the lease holder writes a profile back.
        wait_until(
            &format!("{name}'s write-back to be skipped"),
            secs(5.0),
            || {
                c.stderr().contains(&format!(
                    "profile {name}: not writing back, its lease belongs to another replica now"
                ))
            },
        );
        assert!(
            slots
                .iter()
                .all(|s| s.pid != Some(pids[name]) || s.state != "ready"),
            "{name} still ready: {slots:?}"
        );
    }
    let (_, r) = c.ready();
    assert!(r["leases"]["lost"].as_u64().unwrap_or(0) >= 4, "{r}");

    // The split heals: the same store answers again; once the leases have
    // expired (plus the margin) the replica takes them back.
    common::send_signal_to(moto.child.id() as i32, libc::SIGCONT);
    let healed = Instant::now();
    wait_until(
        "both profiles to run again",
        secs(TTL_S as f64 * 3.0 + 20.0),
        || {
            let slots = c.slots();
            slots.len() == names.len()
                && slots.iter().all(|s| {
                    s.state == "ready" && s.pid.is_some_and(|p| !pids.values().any(|&q| q == p))
                })
        },
    );
    let back = healed.elapsed();
    let (_, r) = c.ready();
    assert_eq!(common::strings(&r["leases"]["held"]), names, "{r}");
    let after = lease_writes(&moto);
    for (name, (written, _)) in &after {
        assert!(
            *written > gone[name],
            "{name}: no lease written after its child stopped: {after:?}"
        );
    }
    eprintln!("LEASE SPLIT: healed -> every slot ready again {back:.1?}");
}

/// A completion of `model` on the coordinator at `port`.
fn chat(port: u16, model: &str) -> common::Reply {
    common::post_json(
        port,
        "/v1/chat/completions",
        &serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .expect("the coordinator answers a completion")
}

/// `/ready`'s `used` of profile `p`'s budget line `line` (None: no such line).
fn used(c: &Coordinator, p: &str, line: &str) -> Option<u64> {
    let (_, r) = c.ready();
    common::profile_of(&r, p)?["budgets"]
        .as_array()?
        .iter()
        .find(|b| b["model"] == line)?["used"]
        .as_u64()
}

/// The served counts profile `p`'s lease object carries.
fn lease_served(moto: &Moto, p: &str) -> serde_json::Value {
    let key = format!("{PREFIX}/leases/{p}.json");
    moto.leases()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, doc)| doc["served"].clone())
        .unwrap_or_default()
}

/// Issue 24's budgets across replicas: a profile's served completions go
/// with its lease, so the replica that takes it over goes on from the
/// count of the one that had it, not from zero. Each replica has its own
/// cache dir (its own usage ledger); they share only the bucket.
#[test]
fn a_profile_moved_to_another_replica_keeps_its_budget_count() {
    const MODEL: &str = "gemini-test";
    let moto = Moto::start(false);
    moto.put_profiles(&["p"]);
    let budgets = "default = free\n[free]\ngemini-test = 3\n";
    let dirs: Vec<TestDir> = ["lease_budget_a", "lease_budget_b", "lease_budget_c"]
        .iter()
        .map(|n| {
            let d = TestDir::with_deadline(n, Duration::from_secs(120));
            std::fs::write(d.path.join("budgets.txt"), budgets).unwrap();
            d
        })
        .collect();
    let replica = |i: usize, id: &str| {
        builder(&moto, id).pool_size(1).env(
            "MODEL_BUDGETS_FILE",
            dirs[i].path.join("budgets.txt").display(),
        )
    };

    // A serves two of the three.
    let mut a = Coordinator::start(&dirs[0], replica(0, "ra"));
    a.wait_all_ready(secs(30.0));
    for _ in 0..2 {
        let r = chat(a.ports.coordinator, MODEL);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The book hears of an answer just after the client has it.
    wait_until("A's /ready to count two", secs(5.0), || {
        used(&a, "p", "gemini-test*") == Some(2)
    });
    // B waits for a profile: A holds the only one.
    let mut b = Coordinator::start(&dirs[1], replica(1, "rb"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(running(b.ports.coordinator).is_empty());

    // A stops and releases; its count is in the lease.
    a.send_signal(libc::SIGTERM);
    a.wait_exit(secs(20.0));
    let served = lease_served(&moto, "p");
    assert_eq!(served["counts"][MODEL], 2, "{served}");
    let day = served["day"].as_i64().expect("a budget day");

    // B takes p over and starts from A's two.
    b.wait_all_ready(secs(30.0));
    assert_eq!(
        running(b.ports.coordinator),
        BTreeSet::from(["p".to_string()])
    );
    assert_eq!(used(&b, "p", "gemini-test*"), Some(2), "B's /ready");
    assert!(
        b.stderr()
            .contains("profile p: its lease brings 2 completions served today elsewhere"),
        "{}",
        b.stderr()
    );
    // One more is within the budget, the next is not.
    let r = chat(b.ports.coordinator, MODEL);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = chat(b.ports.coordinator, MODEL);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.json()["error"]["code"],
        "model_quota_exhausted",
        "{}",
        r.body
    );
    assert!(r.header("retry-after").is_some(), "{r:?}");
    wait_until("B's /ready to count three", secs(5.0), || {
        used(&b, "p", "gemini-test*") == Some(3)
    });
    // B's renewals write its count: the next holder would see all three.
    wait_until("B's count in the lease", secs(TTL_S as f64), || {
        lease_served(&moto, "p")["counts"][MODEL] == 3
    });
    assert_eq!(lease_served(&moto, "p")["day"], day);

    // B dies after that renewal; C takes p once the lease has expired and
    // goes on from the renewal's count (what B served after it is lost).
    b.send_signal(libc::SIGKILL);
    b.wait_exit(secs(5.0));
    let c = Coordinator::start(&dirs[2], replica(2, "rc"));
    c.wait_all_ready(secs(TTL_S as f64 + 30.0));
    assert_eq!(used(&c, "p", "gemini-test*"), Some(3), "C's /ready");
    let r = chat(c.ports.coordinator, MODEL);
    assert_eq!(r.status, 503, "{}", r.body);
    eprintln!(
        "LEASE BUDGET: A served 2 of 3 and released, B took p over at used=2, served 1, \
         refused the next (503); B SIGKILLed, C took p over at used=3 and refused"
    );
}
