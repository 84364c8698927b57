//! Load scenarios. Each drives real SDK clients against a real edge and fills a [`Run`].

pub mod chat;
pub mod connections;
pub mod offline;

use crate::edge_process::SpawnedEdge;
use crate::fleet::Target;
use crate::tracker::Tracker;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Knobs shared by the scenarios (from the command line).
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Clients (a pair is two clients).
    pub clients: usize,
    /// Total messages to send (ignored when `seconds` is set).
    pub messages: u64,
    /// Send for this long instead of a fixed count.
    pub seconds: Option<f64>,
    /// Total offered rate in msgs/s; `None` = as fast as the window allows.
    pub rate: Option<f64>,
    /// Message size in bytes.
    pub size: usize,
    /// Unacknowledged sends per sender.
    pub window: usize,
    /// `chat`: only the first client of each pair sends (the MQTT peers' shape) instead of both.
    pub one_way: bool,
}

/// What a scenario measured.
#[derive(Debug)]
pub struct Run {
    /// Loss / duplicates / order / latency.
    pub tracker: Arc<Mutex<Tracker>>,
    /// Wall time of the measured phase.
    pub duration: Duration,
    /// Scenario-specific figures (name → value), printed and put in the JSON `extra`.
    pub extra: BTreeMap<String, f64>,
}

/// The clock every stamp uses: µs since the run started.
#[derive(Debug, Clone, Copy)]
pub struct RunClock(pub Instant);

impl RunClock {
    /// µs since start.
    pub fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// The edge under test: where it is and, when spawned, the process itself.
pub struct Under<'a> {
    /// Address and certificate.
    pub target: Target,
    /// The spawned edge, if `--spawn`.
    pub spawned: Option<&'a mut SpawnedEdge>,
}

/// Locks the tracker; a poisoned lock (a panicked task) still yields the counts.
pub fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}
