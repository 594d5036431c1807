//! Everything about the processes the coordinator starts, below the slot
//! watchers: how one child is started and stopped (`child`), how every
//! process it started is found again wherever it moved (`tree`), what the
//! child's environment holds (`env`), whether a slot's ports are free and who
//! holds them (`ports`), the child's log files (`childlog`), the account
//! signs read from its log lines (`logsigns`), the reaping of orphans
//! (`reaper`), the memory a child's tree holds (`rss`) and whether its
//! browser, in a session of its own, still lives (`sessions`).
//!
//! Nothing here decides which profile runs where; the watchers do, and ask
//! these modules to carry it out.

pub mod child;
pub mod childlog;
pub mod env;
pub mod logsigns;
pub mod ports;
pub mod proc;
pub mod reaper;
pub mod rss;
pub mod sessions;
pub mod tree;
