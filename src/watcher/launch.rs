//! Launching one child: its command line, its environment and its ports.
//! [`spec`] builds what `process::child` starts for one profile on one
//! slot's ports; [`wait_ports_free`] makes sure nothing else holds them
//! first; [`is_ready`] asks the child's `/health`.
//!
//! Runs on the slot's watcher thread. It decides nothing about profiles
//! and never talks to the supervisor.

use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select, Receiver};
use log::warn;

use super::Settings;
use crate::config::Ports;
use crate::hydrate::Profile;
use crate::outbound;
use crate::process::child;
use crate::process::env;
use crate::process::ports::{self, Busy};
use crate::process::tree;

/// Beyond the stop grace, how long a port held by our own earlier child
/// may take to come free.
const PORT_WAIT: Duration = Duration::from_secs(3);
const PORT_RECHECK: Duration = Duration::from_millis(50);

/// The command line and environment of one start of `profile` on slot
/// `slot`, whose auth file for this start is `auth`.
pub fn spec(
    s: &Settings,
    slot: usize,
    profile: &Profile,
    auth: &Path,
    ports: &Ports,
    tag: String,
) -> child::Spec {
    let mut args: Vec<String> = s.command[1..].to_vec();
    args.extend([
        "--server-port".to_string(),
        ports.api.to_string(),
        "--stream-port".to_string(),
        ports.stream.to_string(),
        "--camoufox-debug-port".to_string(),
        ports.camoufox.to_string(),
        "--active-auth-json".to_string(),
        auth.display().to_string(),
    ]);
    if s.headless {
        args.push("--headless".to_string());
    }
    let proxy = s.proxies.of(&profile.name);
    let env = env::for_child(
        std::env::vars_os(),
        s.key_file.as_deref(),
        &tag,
        proxy.as_ref().map(outbound::ProxyUrl::secret),
    );
    child::Spec {
        program: s.command[0].clone(),
        args,
        env,
        workdir: s.workdir.clone(),
        log_path: s.log_dir.join(format!("{}.log", profile.name)),
        name: format!("slot{slot}"),
        tag,
        listener: None,
    }
}

/// None once the slot's three ports are free. A port held by a process of
/// this slot's earlier children (a stop that gave up, or a socket still
/// closing) is waited for, and such processes stopped again, up to a
/// bound; a foreign holder is returned at once.
pub fn wait_ports_free(
    s: &Settings,
    slot: usize,
    p: &Ports,
    shutdown: &Receiver<()>,
    hurry: &Receiver<()>,
) -> Option<Busy> {
    let triple = [
        ("api", p.api),
        ("stream", p.stream),
        ("camoufox", p.camoufox),
    ];
    let deadline = Instant::now() + s.stop_grace + PORT_WAIT;
    loop {
        let busy = ports::first_busy(&triple)?;
        let ours = busy
            .holder
            .as_ref()
            .and_then(|h| h.tag.clone())
            .filter(|t| s.identity.is_slot_tag(t, slot));
        if busy.holder.is_some() && ours.is_none() {
            return Some(busy);
        }
        let stopping = matches!(
            shutdown.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        );
        if Instant::now() >= deadline || stopping {
            return Some(busy);
        }
        if let Some(tag) = ours {
            warn!("slot {slot}: {busy}, left by an earlier child of this slot; stopping it");
            tree::stop(|scan| scan.child_tree(-1, &tag), s.stop_grace, hurry);
        }
        select! {
            recv(shutdown) -> _ => {}
            recv(after(PORT_RECHECK)) -> _ => {}
        }
    }
}

/// The agent that asks children's `/health`.
pub fn health_agent() -> ureq::Agent {
    crate::upstream::agent(
        crate::upstream::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(1000)))
            .max_idle_connections_per_host(1)
            .build(),
    )
}

/// A child is ready when /health answers 200 with `"status": "OK"`.
pub fn is_ready(agent: &ureq::Agent, url: &str) -> bool {
    let Ok(mut resp) = agent.get(url).call() else {
        return false;
    };
    if resp.status() != 200 {
        return false;
    }
    let Ok(body) = resp.body_mut().with_config().limit(64 * 1024).read_to_vec() else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(|s| s == "OK"))
        .unwrap_or(false)
}
