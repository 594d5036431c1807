//! `aistudioproxy ctl`: the operator's command, over the admin socket.
//!
//! ```text
//! aistudioproxy ctl [--socket PATH | --auth-profile-cache-dir DIR] [--json] COMMAND
//!   status | restart SLOT | rotate SLOT | disable PROFILE | enable PROFILE
//!   reset PROFILE [MODEL] | reload | logs PROFILE [-n LINES]
//!   usage | events [-f] [--after SEQ]
//! ```
//!
//! `events -f` follows: it asks again every second for what came after the
//! last sequence number it printed (each ask bounded by the socket's
//! timeouts) until interrupted or the coordinator goes away.
//!
//! The socket is found from the same settings as the coordinator's:
//! `--socket`, else `ADMIN_SOCKET`, else `admin.sock` in
//! `--auth-profile-cache-dir` / `AUTH_PROFILE_CACHE_DIR` (default
//! `/tmp/auth_profiles`). Exit codes: 0 done, 1 the coordinator could not be
//! reached or refused, 2 a usage error.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::proto::Request;
use super::text::{columns, human, text};

pub const USAGE: &str = "usage: aistudioproxy ctl [--socket PATH | --auth-profile-cache-dir DIR] [--json] \
status | restart SLOT | rotate SLOT | disable PROFILE | enable PROFILE | reset PROFILE [MODEL] | reload | logs PROFILE [-n LINES] | usage | events [-f] [--after SEQ]";

/// A parsed `ctl` command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub socket: PathBuf,
    pub json: bool,
    pub request: Request,
    /// `events -f`: keep asking for new events.
    pub follow: bool,
}

/// Parse the words after `ctl`; `env` looks up environment variables.
pub fn parse(
    words: &[String],
    env: impl Fn(&str) -> Option<String>,
    cwd: &std::path::Path,
) -> Result<Args, String> {
    let (opts, rest) = options(words)?;
    let request = request_of(&rest, &opts)?;
    if opts.follow && !matches!(request, Request::Events { .. }) {
        return Err("-f goes with events only".into());
    }
    let abs = |p: PathBuf| if p.is_absolute() { p } else { cwd.join(p) };
    let set = |name: &str| env(name).filter(|s| !s.is_empty()).map(PathBuf::from);
    let socket = opts
        .socket
        .or_else(|| set("ADMIN_SOCKET"))
        .map(abs)
        .unwrap_or_else(|| {
            let dir = opts
                .cache
                .or_else(|| set("AUTH_PROFILE_CACHE_DIR"))
                .unwrap_or_else(|| PathBuf::from("/tmp/auth_profiles"));
            abs(dir).join("admin.sock")
        });
    Ok(Args {
        socket,
        json: opts.json,
        request,
        follow: opts.follow,
    })
}

/// The options of a `ctl` command line.
struct Options {
    socket: Option<PathBuf>,
    cache: Option<PathBuf>,
    json: bool,
    lines: usize,
    follow: bool,
    after: u64,
}

/// The options, and the words that are not options (the command).
fn options(words: &[String]) -> Result<(Options, Vec<&str>), String> {
    let mut o = Options {
        socket: None,
        cache: None,
        json: false,
        lines: 50,
        follow: false,
        after: 0,
    };
    let mut rest: Vec<&str> = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match w.as_str() {
            "--json" => o.json = true,
            "-f" | "--follow" => o.follow = true,
            "--after" => {
                let v = value("--after")?;
                o.after = v
                    .parse()
                    .map_err(|_| format!("--after {v}: expected an event sequence number"))?;
            }
            "--socket" => o.socket = Some(value("--socket")?.into()),
            "--auth-profile-cache-dir" => o.cache = Some(value("--auth-profile-cache-dir")?.into()),
            "-n" | "--lines" => {
                let v = value("-n")?;
                o.lines = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .ok_or_else(|| {
                        format!("-n {v}: expected a number of lines from 1 to 100000")
                    })?;
            }
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            word => rest.push(word),
        }
    }
    Ok((o, rest))
}

/// The command words as a request.
fn request_of(rest: &[&str], o: &Options) -> Result<Request, String> {
    Ok(match rest {
        ["status"] => Request::Status,
        ["usage"] => Request::Usage,
        ["events"] => Request::Events {
            after: o.after,
            limit: crate::events::CAPACITY,
        },
        ["reload"] => Request::Reload,
        [op @ ("restart" | "rotate"), slot] => {
            let slot: usize = slot
                .parse()
                .map_err(|_| format!("{op} {slot}: expected a slot number (see ctl status)"))?;
            if *op == "restart" {
                Request::Restart { slot }
            } else {
                Request::Rotate { slot }
            }
        }
        ["disable", p] => Request::Disable {
            profile: p.to_string(),
        },
        ["enable", p] => Request::Enable {
            profile: p.to_string(),
        },
        ["reset", p] => Request::Reset {
            profile: p.to_string(),
            model: None,
        },
        ["reset", p, m] => Request::Reset {
            profile: p.to_string(),
            model: Some(m.to_string()),
        },
        ["logs", p] => Request::Logs {
            profile: p.to_string(),
            lines: o.lines,
        },
        [] => return Err("no command given".into()),
        other => return Err(format!("unknown command: {}", other.join(" "))),
    })
}

/// Send one request and read the answer.
pub fn ask(socket: &std::path::Path, request: &Request) -> Result<Value, String> {
    let no_coordinator = |e: std::io::Error| {
        format!(
            "no coordinator listening on {} ({e}): is it running with this AUTH_PROFILE_CACHE_DIR?",
            socket.display()
        )
    };
    let (_dir, at) = super::socket::reachable(socket).map_err(no_coordinator)?;
    let mut s = UnixStream::connect(at).map_err(no_coordinator)?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    writeln!(s, "{line}").map_err(no_coordinator)?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from {}: {e}", socket.display()))?;
    serde_json::from_str(&answer).map_err(|e| format!("unreadable answer ({e}): {answer}"))
}

/// `aistudioproxy ctl ...`: run, print, return the exit code.
pub fn main(words: &[String]) -> ExitCode {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let args = match parse(words, |k| std::env::var(k).ok(), &cwd) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("aistudioproxy ctl: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.follow {
        return follow(&args);
    }
    let answer = match ask(&args.socket, &args.request) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("aistudioproxy ctl: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else if answer["ok"] != true {
        // Printed below as the error.
    } else if args.request == Request::Status {
        let _ = write!(out, "{}", status_table(&answer, SystemTime::now()));
    } else if args.request == Request::Usage {
        let _ = write!(out, "{}", usage_table(&answer));
    } else if let Request::Events { .. } = args.request {
        for e in answer["events"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "{}", event_line(e));
        }
    } else if let Request::Logs { .. } = args.request {
        for l in answer["lines"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "{}", l.as_str().unwrap_or(""));
        }
    } else {
        let _ = writeln!(out, "{}", answer["message"].as_str().unwrap_or("done"));
    }
    if answer["ok"] == true {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "aistudioproxy ctl: {}",
            answer["error"]
                .as_str()
                .unwrap_or("the coordinator refused")
        );
        ExitCode::from(1)
    }
}

/// `events -f`: print events as they come, until the coordinator goes away.
fn follow(args: &Args) -> ExitCode {
    let Request::Events { mut after, limit } = args.request else {
        return ExitCode::from(2);
    };
    loop {
        let answer = match ask(&args.socket, &Request::Events { after, limit }) {
            Ok(a) if a["ok"] == true => a,
            Ok(a) => {
                eprintln!("aistudioproxy ctl: {}", text(&a["error"]));
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("aistudioproxy ctl: {e}");
                return ExitCode::from(1);
            }
        };
        let mut out = std::io::stdout().lock();
        for e in answer["events"].as_array().into_iter().flatten() {
            let line = if args.json {
                e.to_string()
            } else {
                event_line(e)
            };
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                return ExitCode::SUCCESS; // the reader went away
            }
        }
        after = answer["last_seq"].as_u64().unwrap_or(after).max(after);
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// How often `events -f` asks again.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// `2024-05-01 12:00:03Z` for a time in unix ms (UTC).
fn utc(ms: u64) -> String {
    crate::civil::utc((ms / 1000) as i64, ' ')
}

/// One event as a line: seq, time, kind, slot, profile, text.
pub fn event_line(e: &Value) -> String {
    let slot = e["slot"]
        .as_u64()
        .map(|s| format!("slot {s}"))
        .unwrap_or_else(|| "-".into());
    format!(
        "{:>5}  {}  {:<14}  {:<7}  {:<16}  {}",
        text(&e["seq"]),
        utc(e["at_unix_ms"].as_u64().unwrap_or(0)),
        text(&e["kind"]),
        slot,
        text(&e["profile"]),
        text(&e["text"])
    )
}

/// The usage answer as two tables: per profile and model, per key.
pub fn usage_table(usage: &Value) -> String {
    /// The figures of one row: a `total` and a `last_hour` object.
    fn figures(row: &Value) -> Vec<String> {
        let n = |v: &Value| v.as_u64().unwrap_or(0).to_string();
        let t = &row["total"];
        let answers = t["answers"].as_u64().unwrap_or(0);
        let not_ok = answers.saturating_sub(t["ok"].as_u64().unwrap_or(0));
        vec![
            answers.to_string(),
            n(&t["ok"]),
            not_ok.to_string(),
            n(&t["prompt_tokens"]),
            n(&t["completion_tokens"]),
            n(&t["total_tokens"]),
            format!(
                "{} answers, {} tokens",
                n(&row["last_hour"]["answers"]),
                n(&row["last_hour"]["tokens"])
            ),
        ]
    }
    let head = |first: &[&str]| -> Vec<String> {
        first
            .iter()
            .chain(&[
                "ANSWERS",
                "OK",
                "NOT-OK",
                "PROMPT",
                "COMPLETION",
                "TOTAL",
                "LAST-HOUR",
            ])
            .map(|h| h.to_string())
            .collect()
    };
    let mut rows = vec![head(&["PROFILE", "MODEL"])];
    for p in usage["profiles"].as_array().into_iter().flatten() {
        for m in p["models"].as_array().into_iter().flatten() {
            let mut row = vec![text(&p["profile"]), text(&m["model"])];
            row.extend(figures(m));
            rows.push(row);
        }
    }
    let mut out = columns(&rows);
    let mut keys = vec![head(&["KEY"])];
    for k in usage["keys"].as_array().into_iter().flatten() {
        let mut row = vec![text(&k["key"])];
        row.extend(figures(k));
        keys.push(row);
    }
    if keys.len() > 1 {
        out.push('\n');
        out.push_str(&columns(&keys));
    }
    out.push_str(&today_table(&usage["today"]));
    let accounts = usage["budgets"]["accounts"]
        .as_array()
        .into_iter()
        .flatten();
    out.push_str(&super::budgets::table(
        &usage["budgets"],
        accounts,
        crate::civil::now_ms(),
    ));
    out
}

/// The budget day's part of the usage answer: per key its use and limits,
/// per profile and model its answers.
fn today_table(today: &Value) -> String {
    if today.is_null() {
        return String::new();
    }
    let n = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let mut out = format!(
        "\ntoday {} ({}):\n",
        text(&today["day"]),
        text(&today["zone"])
    );
    let mut keys = vec![[
        "KEY", "REQUESTS", "TOKENS", "LAST-MIN", "RPM", "RPD", "TPD", "MODELS",
    ]
    .map(String::from)
    .to_vec()];
    for k in today["keys"].as_array().into_iter().flatten() {
        let (u, l) = (&k["today"], &k["limits"]);
        let models = l["models"].as_array().map_or("-".to_string(), |m| {
            m.iter().map(text).collect::<Vec<_>>().join(",")
        });
        keys.push(vec![
            text(&k["key"]),
            n(&u["requests"]),
            n(&u["tokens"]),
            n(&u["last_minute"]),
            n(&l["rpm"]),
            n(&l["rpd"]),
            n(&l["tpd"]),
            models,
        ]);
    }
    if keys.len() > 1 {
        out.push_str(&columns(&keys));
    }
    let mut rows = vec![["PROFILE", "MODEL", "ANSWERS", "OK", "TOKENS"]
        .map(String::from)
        .to_vec()];
    for p in today["profiles"].as_array().into_iter().flatten() {
        let row = [text(&p["profile"]), text(&p["model"]), n(&p["answers"])];
        let mut row = row.to_vec();
        row.extend([n(&p["ok"]), n(&p["tokens"])]);
        rows.push(row);
    }
    if rows.len() > 1 {
        out.push_str(&columns(&rows));
    }
    out
}

/// ` (cools for m1, m2)` when profile `p` cools for some models, else empty.
fn cools_for(p: &Value) -> String {
    let models: Vec<String> = p["cools_for"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    if models.is_empty() {
        String::new()
    } else {
        format!(" (cools for {})", models.join(", "))
    }
}

/// The status answer as a table a person reads at a glance.
pub fn status_table(status: &Value, now: SystemTime) -> String {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut out = slots_table(status, now_ms);
    let q = &status["queue"];
    out.push_str(&format!(
        "\nqueue: {} waiting, oldest {}\n",
        q["queue_length"].as_u64().unwrap_or(0),
        q["oldest_wait_ms"]
            .as_u64()
            .map(human)
            .unwrap_or_else(|| "-".into())
    ));
    profiles_lines(status, &mut out);
    let profiles = status["profiles"].as_array().into_iter().flatten();
    let lines = profiles.flat_map(|p| p["budgets"].as_array().into_iter().flatten());
    out.push_str(&super::budgets::table(&status["budgets"], lines, now_ms));
    let r = &status["last_reload"];
    if r.is_object() {
        let ago = r["at_unix_ms"]
            .as_u64()
            .map(|t| human(now_ms.saturating_sub(t)));
        out.push_str(&format!(
            "last reload: {} ago, {}{}\n",
            ago.unwrap_or_else(|| "-".into()),
            text(&r["outcome"]),
            r["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    out
}

/// The slots, one line each, in aligned columns.
fn slots_table(status: &Value, now_ms: u64) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "SLOT".into(),
        "PROFILE".into(),
        "STATE".into(),
        "SINCE".into(),
        "RESTARTS".into(),
        "IN-FLIGHT".into(),
        "RSS-MB".into(),
        "LAST ERROR".into(),
    ]];
    for s in status["slots"].as_array().into_iter().flatten() {
        let since = s["since_unix_ms"]
            .as_u64()
            .map(|t| human(now_ms.saturating_sub(t)));
        rows.push([
            text(&s["slot"]),
            text(&s["profile"]),
            text(&s["state"]),
            since.unwrap_or_else(|| "-".into()),
            text(&s["restarts"]),
            text(&s["in_flight"]),
            text(&s["rss_mb"]),
            text(&s["last_error"]),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c == 7 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The profiles not running: queued, cooling (whole or per model), needing
/// a login, disabled.
fn profiles_lines(status: &Value, out: &mut String) {
    let profiles: Vec<&Value> = status["profiles"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let named = |state: &str| -> Vec<&Value> {
        profiles
            .iter()
            .copied()
            .filter(|p| p["state"] == state)
            .collect()
    };
    let queued: Vec<String> = named("queued")
        .iter()
        .map(|p| text(&p["profile"]) + &cools_for(p))
        .collect();
    out.push_str(&format!(
        "rotation queue: {}\n",
        if queued.is_empty() {
            "-".into()
        } else {
            queued.join(", ")
        }
    ));
    for p in named("cooling") {
        out.push_str(&format!(
            "cooling: {} ({}, {} left)\n",
            text(&p["profile"]),
            text(&p["reason"]),
            p["cooldown_left_s"]
                .as_u64()
                .map(|s| human(s * 1000))
                .unwrap_or_else(|| "-".into())
        ));
    }
    for p in &profiles {
        for m in p["model_cooldowns"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "cooling for model {}: {} ({}, {} left)\n",
                text(&m["model"]),
                text(&p["profile"]),
                text(&m["reason"]),
                m["left_s"]
                    .as_u64()
                    .map(|s| human(s * 1000))
                    .unwrap_or_else(|| "-".into())
            ));
        }
    }
    for p in named("needs_login") {
        out.push_str(&format!(
            "NEEDS LOGIN: {} ({}; renew the login, upload the profile, reload)\n",
            text(&p["profile"]),
            text(&p["needs_login"]["why"]),
        ));
    }
    for p in named("disabled") {
        out.push_str(&format!("disabled: {}\n", text(&p["profile"])));
    }
    // Any other state (needs_login, ...) by its own name.
    for p in &profiles {
        let state = text(&p["state"]);
        if !["running", "queued", "cooling", "needs_login", "disabled"].contains(&state.as_str()) {
            out.push_str(&format!("{state}: {}\n", text(&p["profile"])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn commands_and_the_socket_path() {
        let none = |_: &str| None;
        let cwd = Path::new("/w");
        let a = parse(&words("restart 1"), none, cwd).unwrap();
        assert_eq!(a.request, Request::Restart { slot: 1 });
        assert_eq!(a.socket, PathBuf::from("/tmp/auth_profiles/admin.sock"));
        let a = parse(
            &words("--auth-profile-cache-dir c --json logs alice -n 7"),
            none,
            cwd,
        )
        .unwrap();
        assert_eq!(
            a.request,
            Request::Logs {
                profile: "alice".into(),
                lines: 7
            }
        );
        assert!(a.json);
        assert_eq!(a.socket, PathBuf::from("/w/c/admin.sock"));
        let env = |k: &str| (k == "AUTH_PROFILE_CACHE_DIR").then(|| "/cache".to_string());
        assert_eq!(
            parse(&words("status"), env, cwd).unwrap().socket,
            PathBuf::from("/cache/admin.sock")
        );
        let a = parse(&words("events -f --after 9"), env, cwd).unwrap();
        assert!(a.follow);
        assert!(matches!(a.request, Request::Events { after: 9, .. }));
        let a = parse(&words("--socket /s.sock status"), env, cwd).unwrap();
        assert_eq!(a.socket, PathBuf::from("/s.sock"));
        for bad in [
            "",
            "restart",
            "restart x",
            "frobnicate",
            "logs a -n 0",
            "--what status",
            "status -f",
            "events --after x",
        ] {
            assert!(parse(&words(bad), none, cwd).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usage_and_events_read_as_tables_and_lines() {
        let u = json!({"profiles": [{"profile": "alice", "models": [{"model": "gemini-x",
            "total": {"answers": 5, "ok": 4, "prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
            "last_hour": {"answers": 2, "tokens": 12}}]}],
            "keys": [{"key": "team-a", "total": {"answers": 5, "ok": 4}, "last_hour": {"answers": 1, "tokens": 2}}]});
        let t = usage_table(&u);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("PROFILE  MODEL     ANSWERS  OK  NOT-OK"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("alice    gemini-x  5        4   1       10      20          30"),
            "{t}"
        );
        assert!(t.contains("team-a  5        4   1"), "{t}");
        let mut u = u;
        u["today"] = json!({"day": "2026-03-08", "zone": "America/Los_Angeles", "keys": [
            {"key": "team-a", "today": {"requests": 3, "tokens": 40, "last_minute": 1},
             "limits": {"rpm": 60, "rpd": null, "tpd": 1000, "models": ["g-*"]}}],
            "profiles": [{"profile": "alice", "model": "gemini-x", "answers": 3, "ok": 2, "tokens": 40}]});
        let t = usage_table(&u);
        assert!(t.contains("today 2026-03-08 (America/Los_Angeles):"), "{t}");
        assert!(
            t.contains("team-a  3         40      1         60   -    1000  g-*"),
            "{t}"
        );
        assert!(t.contains("alice    gemini-x  3        2   40"), "{t}");
        let e = json!({"seq": 12, "at_unix_ms": 1_700_000_003_000u64, "kind": "rotation", "slot": 1, "profile": "bob", "text": "alice -> bob"});
        assert_eq!(
            event_line(&e),
            "   12  2023-11-14 22:13:23Z  rotation        slot 1   bob               alice -> bob"
        );
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn the_status_table_has_its_columns_and_sections() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        let status = json!({
            "ok": true,
            "slots": [
                {"slot": 0, "profile": "alice", "state": "ready", "since_unix_ms": 9_808_000u64,
                 "restarts": 0, "in_flight": 1, "rss_mb": 812, "last_error": null},
                {"slot": 1, "profile": "bob", "state": "backoff", "since_unix_ms": 9_988_000u64,
                 "restarts": 3, "in_flight": 0, "last_error": "camoufox port 127.0.0.1:9223 is in use"}
            ],
            "queue": {"queue_length": 2, "oldest_wait_ms": 1200},
            "profiles": [
                {"profile": "alice", "state": "running"},
                {"profile": "carol", "state": "queued"},
                {"profile": "hal", "state": "queued", "cools_for": ["gemini-2.5-pro"]},
                {"profile": "dave", "state": "cooling", "reason": "exhausted", "cooldown_left_s": 3480},
                {"profile": "eve", "state": "disabled"},
                {"profile": "fay", "state": "needs_login", "needs_login": {"why": "its 3 Google session cookies have all expired"}},
                {"profile": "gus", "state": "running", "model_cooldowns": [{"model": "gemini-2.5-pro", "left_s": 600, "reason": "exhausted"}]}
            ],
            "last_reload": {"at_unix_ms": 9_000_000u64, "outcome": "ok"}
        });
        let t = status_table(&status, now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with(
                "SLOT  PROFILE  STATE    SINCE  RESTARTS  IN-FLIGHT  RSS-MB  LAST ERROR"
            ),
            "{t}"
        );
        assert!(
            lines[1].starts_with("0     alice    ready    3m12s  0         1          812     -"),
            "{t}"
        );
        assert!(lines[2].contains("camoufox port 127.0.0.1:9223 is in use"));
        assert!(t.contains("queue: 2 waiting, oldest 1.2s"));
        assert!(
            t.contains("rotation queue: carol, hal (cools for gemini-2.5-pro)"),
            "{t}"
        );
        assert!(t.contains("cooling: dave (exhausted, 58m00s left)"));
        assert!(t.contains("disabled: eve"));
        assert!(
            t.contains("NEEDS LOGIN: fay (its 3 Google session cookies have all expired;"),
            "{t}"
        );
        assert!(
            t.contains("cooling for model gemini-2.5-pro: gus (exhausted, 10m00s left)"),
            "{t}"
        );
        assert!(t.contains("last reload: 16m40s ago, ok"));
    }
}
