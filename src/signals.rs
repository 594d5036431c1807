//! Signals: ctrlc owns SIGINT (Ctrl-C on a terminal), signal-hook owns
//! SIGTERM (orchestrators, `podman stop`) and SIGHUP (reload). Each signal
//! has exactly one owner; they only send on channels: the termination
//! signals' names on one (read by the main thread), SIGHUP on another (read
//! by the reload thread). SIGCHLD belongs to the reaper.

use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGHUP, SIGTERM};
use signal_hook::iterator::Signals;

pub struct Installed {
    /// "SIGINT" or "SIGTERM", once per signal.
    pub stop: Receiver<&'static str>,
    /// One message per SIGHUP.
    pub hup: Receiver<()>,
}

pub fn install() -> Result<Installed, String> {
    let (tx, stop) = crossbeam_channel::unbounded();
    let (hup_tx, hup) = crossbeam_channel::unbounded();
    let int_tx = tx.clone();
    ctrlc::set_handler(move || {
        let _ = int_tx.send("SIGINT");
    })
    .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
    let mut signals = Signals::new([SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install the SIGTERM and SIGHUP handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                let sent = if sig == SIGHUP {
                    hup_tx.send(()).is_ok()
                } else {
                    tx.send("SIGTERM").is_ok()
                };
                if !sent {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(Installed { stop, hup })
}
