//! Signals: ctrlc owns SIGINT (Ctrl-C on a terminal), signal-hook owns
//! SIGTERM (orchestrators, `podman stop`) and SIGHUP (reload). Each signal
//! has exactly one owner; they only send on channels: the termination
//! signals' names on one (read by the main thread), SIGHUP on another (read
//! by the reload thread). SIGCHLD belongs to the reaper.
//!
//! Before `install`, from the first line of `main`: [`exit_on_sigterm`]
//! makes a SIGTERM end the process at once (hydration is all that runs
//! then). As PID 1 in a container a signal without a handler is ignored,
//! so without it a `docker stop` during a long S3 hydration would wait for
//! the hydration to end.

use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGHUP, SIGTERM};
use signal_hook::iterator::Signals;

pub struct Installed {
    /// "SIGINT" or "SIGTERM", once per signal.
    pub stop: Receiver<&'static str>,
    /// One message per SIGHUP.
    pub hup: Receiver<()>,
}

/// While alive, SIGTERM ends the process with 143 (128 + 15, what a shell
/// reports for it). Drop it once `install` has run: until then both would
/// act on a SIGTERM, and this one exits first.
pub struct EarlyExit(signal_hook::SigId);

/// SIGTERM only: ctrlc refuses SIGINT once any handler is installed, and
/// Ctrl-C comes from a terminal, where we are seldom PID 1.
pub fn exit_on_sigterm() -> Result<EarlyExit, String> {
    // SAFETY: the action only calls _exit(2), which is async-signal-safe.
    unsafe { signal_hook::low_level::register(SIGTERM, || signal_hook::low_level::exit(143)) }
        .map(EarlyExit)
        .map_err(|e| format!("cannot install the early SIGTERM handler: {e}"))
}

impl Drop for EarlyExit {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.0);
    }
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
