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

/// A tracing subscriber that writes ferry's own log events (targets `ferry*`,
/// debug and up) into `trace`, one line each: `{ms}ms ferry [s{conn_id}] message k=v ...`.
pub fn subscriber(trace: Trace) -> impl tracing::Subscriber + Send + Sync {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("ferry_shell", tracing::Level::DEBUG)
        .with_target("ferry_core", tracing::Level::DEBUG);
    tracing_subscriber::registry().with(EventLayer { trace }.with_filter(filter))
}

struct EventLayer {
    trace: Trace,
}

#[derive(Default)]
struct Fields {
    message: String,
    conn_id: Option<String>,
    rest: Vec<String>,
}

impl Fields {
    fn put(&mut self, name: &str, value: String) {
        match name {
            "message" => self.message = value,
            "conn_id" => self.conn_id = Some(value),
            _ => self.rest.push(format!("{name}={value}")),
        }
    }
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field.name(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        event.record(&mut f);
        let mut line = String::new();
        if let Some(id) = f.conn_id {
            line.push('s');
            line.push_str(&id);
            line.push(' ');
        }
        line.push_str(&f.message);
        for kv in f.rest {
            line.push(' ');
            line.push_str(&kv);
        }
        self.trace.log("ferry", line);
    }
}
