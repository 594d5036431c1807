//! Connections to children: ureq agents kept per child port, each used by
//! one request at a time, so that one request's connection can be cut from
//! another thread (`Agent::shutdown`, for cancel) and so that its read
//! limit can change once the answer's head has arrived.
//!
//! ureq's per-read timeout also covers the wait for the head, and the real
//! child sends a head only when it starts working on a request; so the
//! head gets `REQUEST_TIMEOUT_S` alone, and each agent's transports consult
//! a cell (set by the forwarder after the head, cleared when the agent is
//! given back) for the idle limit of every later read. An agent that served
//! a request cleanly is kept for the next request to the same port, so
//! keep-alive connections are reused as before.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport,
};

/// Agents kept per port beyond those in use.
const KEEP_PER_PORT: usize = 32;

pub struct Conns {
    config: ureq::config::Config,
    /// Per port, the child generation the kept agents talked to, and them:
    /// a replacement child on the same port never gets its predecessor's
    /// dead connections.
    free: Mutex<HashMap<u16, (u64, Vec<Conn>)>>,
}

/// One agent, for one request at a time.
pub struct Conn {
    agent: ureq::Agent,
    /// Idle limit of each read in milliseconds; 0: none.
    idle_ms: Arc<AtomicU64>,
}

impl Conns {
    pub fn new(config: ureq::config::Config) -> Conns {
        Conns {
            config,
            free: Mutex::new(HashMap::new()),
        }
    }

    /// A plain agent on the same configuration (for the cancel fan-out).
    pub fn shared_agent(&self) -> ureq::Agent {
        crate::upstream::agent(self.config.clone())
    }

    /// An agent for the child of `generation` on `port`.
    pub fn take(&self, port: u16, generation: u64) -> Conn {
        let kept = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            match free.get_mut(&port) {
                Some((g, list)) if *g == generation => list.pop(),
                Some(entry) => {
                    *entry = (generation, Vec::new());
                    None
                }
                None => None,
            }
        };
        kept.unwrap_or_else(|| {
            let idle_ms = Arc::new(AtomicU64::new(0));
            let connector = DefaultConnector::default().chain(IdleCap {
                idle_ms: idle_ms.clone(),
            });
            Conn {
                agent: crate::upstream::agent_with(self.config.clone(), connector),
                idle_ms,
            }
        })
    }

    /// Keep `conn` for the next request to the child of `generation` on
    /// `port` (only after a clean exchange: a cut or failed one is dropped).
    pub fn give_back(&self, port: u16, generation: u64, conn: Conn) {
        conn.set_idle(None);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let (g, list) = free.entry(port).or_insert((generation, Vec::new()));
        if *g != generation {
            // A newer child took the port meanwhile, or this one is stale.
            if generation < *g {
                return;
            }
            *g = generation;
            list.clear();
        }
        if list.len() < KEEP_PER_PORT {
            list.push(conn);
        }
    }
}

impl Conn {
    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// The longest wait of every later read (None: no limit).
    pub fn set_idle(&self, d: Option<Duration>) {
        let ms = d.map(|d| (d.as_millis() as u64).max(1)).unwrap_or(0);
        self.idle_ms.store(ms, Ordering::Relaxed);
    }
}

/// A failed exchange with a child, in a log's words.
pub fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::ConnectionFailed => "connection refused".to_string(),
        ureq::Error::Timeout(t) => format!("silent too long ({t})"),
        other => other.to_string(),
    }
}

/// Wraps each transport so its reads honour the agent's idle cell.
struct IdleCap {
    idle_ms: Arc<AtomicU64>,
}

impl fmt::Debug for IdleCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdleCap")
    }
}

impl Connector<Box<dyn Transport>> for IdleCap {
    type Out = Capped;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Capped>, ureq::Error> {
        Ok(chained.map(|inner| Capped {
            inner,
            idle_ms: self.idle_ms.clone(),
        }))
    }
}

struct Capped {
    inner: Box<dyn Transport>,
    idle_ms: Arc<AtomicU64>,
}

impl fmt::Debug for Capped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capped")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Transport for Capped {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, mut timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let ms = self.idle_ms.load(Ordering::Relaxed);
        if ms > 0 {
            let cap: ureq::unversioned::transport::time::Duration =
                Duration::from_millis(ms).into();
            timeout.per_read = Some(match timeout.per_read {
                Some(d) if *d < *cap => d,
                _ => cap,
            });
        }
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}
