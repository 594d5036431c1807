//! The account-budget part of the budget benchmark: the added cost per
//! completion, and the spread of 100 completions over four accounts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::support::{self, chat_body, Coordinator, CoordinatorSpec};
use super::{compare, CLIENTS, ROUNDS};

const ACCOUNTS: u16 = 4;

/// Four children, with a budgets file of `budget` a day each when Some.
fn coordinator(dir: &support::TempDir, budget: Option<u64>, per_child: usize) -> Coordinator {
    let mut spec = CoordinatorSpec::plain(ACCOUNTS);
    spec.env = vec![
        ("MAX_INFLIGHT_PER_CHILD".into(), per_child.to_string()),
        ("TESTCHILD_COMPLETION_DELAY_MS".into(), "0".into()),
    ];
    if let Some(b) = budget {
        let file = dir.path().join(format!("budgets-{b}.conf"));
        std::fs::write(&file, format!("[all]\nprofiles = *\ngemini-test = {b}\n"))
            .expect("write the budgets file");
        spec.env
            .push(("MODEL_BUDGETS_FILE".into(), file.display().to_string()));
    }
    Coordinator::start(&spec)
}

fn request(port: u16) -> Vec<u8> {
    let body = chat_body(false);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The added cost of the budget check, budgets / none, same run.
pub fn cost(measure: Duration) {
    let dir = support::TempDir::new("budget-accounts");
    let none = coordinator(&dir, None, 0);
    let with = coordinator(&dir, Some(1_000_000_000), 0);
    println!();
    println!("== budget: account budgets (MODEL_BUDGETS_FILE), POST /v1/chat/completions, c={CLIENTS}, keep-alive ==");
    println!(
        "two coordinators of {ACCOUNTS} children: no budgets file, and a budget on every account for the model (never reached); {ROUNDS} rounds each, alternating"
    );
    compare(
        ("none", request(none.port), none.port),
        ("budgets", request(with.port), with.port),
        measure,
    );
}

/// `total` completions from `clients` threads: how many each profile served.
fn served_by(port: u16, total: usize, clients: usize) -> BTreeMap<String, u64> {
    let left = Arc::new(AtomicUsize::new(total));
    let by = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (left, by) = (left.clone(), by.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                while left
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
                    let r = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(chat_body(false));
                    let who = r
                        .ok()
                        .and_then(|mut r| r.body_mut().read_to_string().ok())
                        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                        .and_then(|v| {
                            let c = v["choices"][0]["message"]["content"].as_str()?.to_string();
                            Some(c.strip_prefix("profile=")?.split(' ').next()?.to_string())
                        })
                        .unwrap_or_else(|| "(failed)".into());
                    *by.lock().unwrap().entry(who).or_default() += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread");
    }
    let by = by.lock().unwrap().clone();
    by
}

/// How evenly 100 completions spread over four accounts with equal
/// budgets, against the same with no budgets: at c=8 (more clients than
/// children: a freed child takes the next request, there is rarely a
/// choice) and at c=3 (a free child is always there to choose).
pub fn spread() {
    const TOTAL: usize = 100;
    let dir = support::TempDir::new("budget-spread");
    for clients in [CLIENTS, 3] {
        println!();
        println!("== budget: spread of {TOTAL} completions at c={clients} over {ACCOUNTS} accounts (one completion per child at a time) ==");
        for (name, budget) in [("none", None), ("budgets 100 each", Some(100))] {
            let c = coordinator(&dir, budget, 1);
            let by = served_by(c.port, TOTAL, clients);
            let counts: Vec<u64> = (0..ACCOUNTS)
                .map(|i| by.get(&format!("p{i}")).copied().unwrap_or(0))
                .collect();
            let (max, min) = (counts.iter().max().unwrap(), counts.iter().min().unwrap());
            let failed = by.get("(failed)").copied().unwrap_or(0);
            let r = match *min {
                0 => "inf".to_string(),
                m => format!("{:.2}", *max as f64 / m as f64),
            };
            let failed = match failed {
                0 => String::new(),
                n => format!(", {n} failed"),
            };
            println!("{name:<17} per account {counts:?}, max/min {max}/{min} = {r}{failed}");
        }
    }
}
