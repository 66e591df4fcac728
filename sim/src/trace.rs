//! The run's trace: one readable line per event, in simulated time.

use std::fmt::Display;
use std::sync::{Arc, Mutex};

/// Collects trace lines; clones share the same trace.
#[derive(Clone, Debug, Default)]
pub struct Trace(Arc<Mutex<Vec<String>>>);

/// Milliseconds of simulated time (0 outside a simulation).
pub fn now_ms() -> u128 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis())
}

impl Trace {
    /// An empty trace.
    pub fn new() -> Self {
        Trace::default()
    }

    /// Records `what` by `who` now.
    pub fn log(&self, who: &str, what: impl Display) {
        self.log_at(now_ms(), who, what);
    }

    /// Records `what` by `who` at `ms`.
    pub fn log_at(&self, ms: u128, who: &str, what: impl Display) {
        self.0
            .lock()
            .expect("trace lock")
            .push(format!("{ms}ms {who} {what}"));
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().expect("trace lock").clone()
    }

    /// The whole trace as text, one line per event.
    pub fn text(&self) -> String {
        let mut s = self.lines().join("\n");
        s.push('\n');
        s
    }
}
