//! Termination signals: ctrlc owns SIGINT (Ctrl-C on a terminal),
//! signal-hook owns SIGTERM (orchestrators, `podman stop`). Each signal has
//! exactly one owner; both only send the signal's name on one channel, which
//! the main thread reads. SIGCHLD belongs to the reaper.

use crossbeam_channel::Receiver;
use signal_hook::consts::SIGTERM;
use signal_hook::iterator::Signals;

pub fn install() -> Result<Receiver<&'static str>, String> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let int_tx = tx.clone();
    ctrlc::set_handler(move || {
        let _ = int_tx.send("SIGINT");
    })
    .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
    let mut term =
        Signals::new([SIGTERM]).map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    std::thread::Builder::new()
        .name("sigterm".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for _ in term.forever() {
                if tx.send("SIGTERM").is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(rx)
}
