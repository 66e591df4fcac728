//! Counters for `/metrics`, kept in atomics so the hot path takes no lock.
//!
//! Per-backend gauges (connections, health, state) are read from the cluster
//! when the page is rendered, so they are exact and cost nothing meanwhile.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use ferry_core::cluster::{Backend, BackendId, Health};
use ferry_core::config::WorkState;
use ferry_core::session::{CloseReason, MoveFailure, MoveReport, Trigger};

/// Why a login failed, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginFailure {
    /// Ferry refused the client (unknown user, wrong password, bad login name).
    Refused,
    /// No backend could take the session.
    NoBackend,
    /// The backend could not be reached or refused the login.
    Backend,
    /// The client did not finish logging in in time.
    Timeout,
    /// The client broke the protocol while logging in.
    Protocol,
    /// The client went away before its login finished.
    ClientGone,
}

impl LoginFailure {
    const ALL: [LoginFailure; 6] = [
        LoginFailure::Refused,
        LoginFailure::NoBackend,
        LoginFailure::Backend,
        LoginFailure::Timeout,
        LoginFailure::Protocol,
        LoginFailure::ClientGone,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::Refused => "refused",
            LoginFailure::NoBackend => "no_backend",
            LoginFailure::Backend => "backend",
            LoginFailure::Timeout => "timeout",
            LoginFailure::Protocol => "protocol",
            LoginFailure::ClientGone => "client_gone",
        }
    }

    /// Why a session that never logged in was closed.
    pub fn of(reason: &CloseReason) -> LoginFailure {
        match reason {
            CloseReason::LoginTimeout => LoginFailure::Timeout,
            CloseReason::ProtocolError(_) | CloseReason::BackendProtocolError(_) => {
                LoginFailure::Protocol
            }
            CloseReason::Shutdown => LoginFailure::ClientGone,
            CloseReason::ClientClosed => LoginFailure::ClientGone,
            CloseReason::LoginRefused(why) if why == "no backend" => LoginFailure::NoBackend,
            CloseReason::LoginRefused(why) if why.starts_with("backend") => LoginFailure::Backend,
            CloseReason::BackendClosed => LoginFailure::Backend,
            CloseReason::LoginRefused(_) => LoginFailure::Refused,
            CloseReason::Closed(_) | CloseReason::IdleTimeout => LoginFailure::ClientGone,
        }
    }
}

/// Upper bounds (seconds) of the migration duration histogram.
const MIGRATION_BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

const TRIGGERS: usize = Trigger::ALL.len();
const FAILURES: usize = MoveFailure::ALL.len();

/// Upper bounds (seconds) of the histogram of how long a client command waited for a move.
const PAUSE_BUCKETS: [f64; 8] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];

/// The proxy's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sessions logged in and not yet closed.
    pub sessions_current: AtomicU64,
    /// Sessions logged in since start.
    pub sessions_total: AtomicU64,
    /// Client connections accepted since start.
    pub connections_total: AtomicU64,
    logins_failed: [AtomicU64; 6],
    /// Bytes read from clients (and forwarded or consumed by the login).
    pub bytes_from_clients: AtomicU64,
    /// Bytes read from backends.
    pub bytes_from_backends: AtomicU64,
    /// Route requests no backend could take.
    pub route_failures: AtomicU64,
    migrations_started: [AtomicU64; TRIGGERS],
    migrations_succeeded: [AtomicU64; TRIGGERS],
    migrations_failed: [[AtomicU64; FAILURES]; TRIGGERS],
    pause_buckets: [AtomicU64; 8],
    pause_count: AtomicU64,
    pause_sum_micros: AtomicU64,
    migration_buckets: [AtomicU64; 8],
    migration_count: AtomicU64,
    migration_sum_micros: AtomicU64,
    /// Config reloads applied / rejected.
    pub reloads_ok: AtomicU64,
    /// Config reloads rejected.
    pub reloads_failed: AtomicU64,
    /// Reads of the `user_source` backend's `mysql.user` (at start, periodic, asked for by logins).
    pub user_source_reads: AtomicU64,
    /// Of those, the ones that failed.
    pub user_source_failures: AtomicU64,
    /// Client commands passed on, per backend (`ferry top` turns them into QPS).
    pub commands: CommandCounters,
}

/// One counter of commands per backend id, each handed out once per session and
/// backend, so that counting a command is one relaxed add, without a lock.
#[derive(Debug, Default)]
pub struct CommandCounters(RwLock<BTreeMap<BackendId, Arc<AtomicU64>>>);

impl CommandCounters {
    /// The counter for `backend` (created at 0 the first time).
    pub fn counter(&self, backend: &BackendId) -> Arc<AtomicU64> {
        if let Some(c) = self.0.read().expect("commands lock").get(backend) {
            return c.clone();
        }
        let mut map = self.0.write().expect("commands lock");
        map.entry(backend.clone()).or_default().clone()
    }

    /// Commands passed on to `backend` since start.
    pub fn total(&self, backend: &BackendId) -> u64 {
        self.0
            .read()
            .expect("commands lock")
            .get(backend)
            .map_or(0, |c| c.load(Relaxed))
    }
}

impl Metrics {
    /// Counts a failed login.
    pub fn login_failed(&self, why: LoginFailure) {
        let i = LoginFailure::ALL
            .iter()
            .position(|f| *f == why)
            .unwrap_or(0);
        self.logins_failed[i].fetch_add(1, Relaxed);
    }

    /// Failed logins for one reason.
    pub fn logins_failed(&self, why: LoginFailure) -> u64 {
        let i = LoginFailure::ALL
            .iter()
            .position(|f| *f == why)
            .unwrap_or(0);
        self.logins_failed[i].load(Relaxed)
    }

    /// Counts a move that started.
    pub fn migration_started(&self, trigger: Trigger) {
        self.migrations_started[trigger_index(trigger)].fetch_add(1, Relaxed);
    }

    /// Counts a move that ended, with its duration and the pause it caused.
    pub fn migration_ended(&self, report: &MoveReport) {
        let t = trigger_index(report.trigger);
        match &report.outcome {
            Ok(()) => {
                self.migrations_succeeded[t].fetch_add(1, Relaxed);
                self.migration_duration(report.duration.as_secs_f64());
            }
            Err((kind, _)) => {
                let k = MoveFailure::ALL.iter().position(|f| f == kind).unwrap_or(0);
                self.migrations_failed[t][k].fetch_add(1, Relaxed);
            }
        }
        if let Some(paused) = report.paused {
            let seconds = paused.as_secs_f64();
            for (i, bound) in PAUSE_BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    self.pause_buckets[i].fetch_add(1, Relaxed);
                }
            }
            self.pause_count.fetch_add(1, Relaxed);
            self.pause_sum_micros
                .fetch_add(paused.as_micros() as u64, Relaxed);
        }
    }

    /// Moves that succeeded, all triggers.
    pub fn migrations_succeeded(&self) -> u64 {
        self.migrations_succeeded
            .iter()
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// Records the duration of a completed migration.
    fn migration_duration(&self, seconds: f64) {
        for (i, bound) in MIGRATION_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.migration_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.migration_count.fetch_add(1, Relaxed);
        self.migration_sum_micros
            .fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, backends: &[Backend]) -> String {
        let mut out = String::with_capacity(4096);
        let put = |out: &mut String, line: String| {
            out.push_str(&line);
            out.push('\n');
        };
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let load = |a: &AtomicU64| a.load(Relaxed);

        head(
            &mut out,
            "ferry_sessions",
            "gauge",
            "Sessions logged in now.",
        );
        put(
            &mut out,
            format!("ferry_sessions {}", load(&self.sessions_current)),
        );
        head(
            &mut out,
            "ferry_sessions_total",
            "counter",
            "Sessions logged in since start.",
        );
        put(
            &mut out,
            format!("ferry_sessions_total {}", load(&self.sessions_total)),
        );
        head(
            &mut out,
            "ferry_connections_accepted_total",
            "counter",
            "Client connections accepted since start.",
        );
        put(
            &mut out,
            format!(
                "ferry_connections_accepted_total {}",
                load(&self.connections_total)
            ),
        );
        head(
            &mut out,
            "ferry_logins_total",
            "counter",
            "Logins by result and, for failures, reason.",
        );
        put(
            &mut out,
            format!(
                "ferry_logins_total{{result=\"ok\"}} {}",
                load(&self.sessions_total)
            ),
        );
        for why in LoginFailure::ALL {
            put(
                &mut out,
                format!(
                    "ferry_logins_total{{result=\"failed\",reason=\"{}\"}} {}",
                    why.as_str(),
                    self.logins_failed(why)
                ),
            );
        }
        head(
            &mut out,
            "ferry_route_failures_total",
            "counter",
            "Sessions no backend could take.",
        );
        put(
            &mut out,
            format!("ferry_route_failures_total {}", load(&self.route_failures)),
        );
        head(
            &mut out,
            "ferry_bytes_forwarded_total",
            "counter",
            "Bytes read from each side.",
        );
        put(
            &mut out,
            format!(
                "ferry_bytes_forwarded_total{{from=\"client\"}} {}",
                load(&self.bytes_from_clients)
            ),
        );
        put(
            &mut out,
            format!(
                "ferry_bytes_forwarded_total{{from=\"backend\"}} {}",
                load(&self.bytes_from_backends)
            ),
        );

        head(
            &mut out,
            "ferry_backend_connections",
            "gauge",
            "Sessions counted on each backend.",
        );
        for b in backends {
            put(
                &mut out,
                format!(
                    "ferry_backend_connections{{backend=\"{}\"}} {}",
                    escape(&b.id.0),
                    b.connections
                ),
            );
        }
        head(
            &mut out,
            "ferry_commands_total",
            "counter",
            "Client commands passed on to each backend.",
        );
        for b in backends {
            put(
                &mut out,
                format!(
                    "ferry_commands_total{{backend=\"{}\"}} {}",
                    escape(&b.id.0),
                    self.commands.total(&b.id)
                ),
            );
        }
        head(
            &mut out,
            "ferry_backend_up",
            "gauge",
            "1 if health checks find the backend up.",
        );
        for b in backends {
            put(
                &mut out,
                format!(
                    "ferry_backend_up{{backend=\"{}\"}} {}",
                    escape(&b.id.0),
                    u8::from(b.health == Health::Up)
                ),
            );
        }
        head(
            &mut out,
            "ferry_backend_state",
            "gauge",
            "1 for the backend's current work state.",
        );
        for b in backends {
            for (state, name) in [
                (WorkState::Working, "working"),
                (WorkState::Draining, "draining"),
                (WorkState::Drained, "drained"),
            ] {
                put(
                    &mut out,
                    format!(
                        "ferry_backend_state{{backend=\"{}\",state=\"{name}\"}} {}",
                        escape(&b.id.0),
                        u8::from(b.state == state)
                    ),
                );
            }
        }

        head(
            &mut out,
            "ferry_migrations_started_total",
            "counter",
            "Session moves begun, by trigger.",
        );
        for t in Trigger::ALL {
            put(
                &mut out,
                format!(
                    "ferry_migrations_started_total{{trigger=\"{t}\"}} {}",
                    load(&self.migrations_started[trigger_index(t)])
                ),
            );
        }
        head(
            &mut out,
            "ferry_migrations_succeeded_total",
            "counter",
            "Session moves completed, by trigger.",
        );
        for t in Trigger::ALL {
            put(
                &mut out,
                format!(
                    "ferry_migrations_succeeded_total{{trigger=\"{t}\"}} {}",
                    load(&self.migrations_succeeded[trigger_index(t)])
                ),
            );
        }
        head(
            &mut out,
            "ferry_migrations_failed_total",
            "counter",
            "Session moves abandoned (the session stayed), by trigger and reason.",
        );
        for t in Trigger::ALL {
            for (k, why) in MoveFailure::ALL.iter().enumerate() {
                put(
                    &mut out,
                    format!(
                        "ferry_migrations_failed_total{{trigger=\"{t}\",reason=\"{}\"}} {}",
                        why.as_str(),
                        load(&self.migrations_failed[trigger_index(t)][k])
                    ),
                );
            }
        }
        head(
            &mut out,
            "ferry_migration_pause_seconds",
            "histogram",
            "How long a client command waited because its session was moving.",
        );
        for (i, bound) in PAUSE_BUCKETS.iter().enumerate() {
            put(
                &mut out,
                format!(
                    "ferry_migration_pause_seconds_bucket{{le=\"{bound}\"}} {}",
                    load(&self.pause_buckets[i])
                ),
            );
        }
        let pauses = load(&self.pause_count);
        put(
            &mut out,
            format!("ferry_migration_pause_seconds_bucket{{le=\"+Inf\"}} {pauses}"),
        );
        put(
            &mut out,
            format!(
                "ferry_migration_pause_seconds_sum {}",
                load(&self.pause_sum_micros) as f64 / 1e6
            ),
        );
        put(
            &mut out,
            format!("ferry_migration_pause_seconds_count {pauses}"),
        );
        head(
            &mut out,
            "ferry_migration_duration_seconds",
            "histogram",
            "Time from migration start to swap.",
        );
        for (i, bound) in MIGRATION_BUCKETS.iter().enumerate() {
            put(
                &mut out,
                format!(
                    "ferry_migration_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                    load(&self.migration_buckets[i])
                ),
            );
        }
        let count = load(&self.migration_count);
        put(
            &mut out,
            format!("ferry_migration_duration_seconds_bucket{{le=\"+Inf\"}} {count}"),
        );
        put(
            &mut out,
            format!(
                "ferry_migration_duration_seconds_sum {}",
                load(&self.migration_sum_micros) as f64 / 1e6
            ),
        );
        put(
            &mut out,
            format!("ferry_migration_duration_seconds_count {count}"),
        );

        head(
            &mut out,
            "ferry_config_reloads_total",
            "counter",
            "SIGHUP reloads by result.",
        );
        put(
            &mut out,
            format!(
                "ferry_config_reloads_total{{result=\"ok\"}} {}",
                load(&self.reloads_ok)
            ),
        );
        put(
            &mut out,
            format!(
                "ferry_config_reloads_total{{result=\"rejected\"}} {}",
                load(&self.reloads_failed)
            ),
        );
        head(
            &mut out,
            "ferry_user_source_reads_total",
            "counter",
            "Reads of the user source's mysql.user (at start, every interval, and for logins ferry could not verify).",
        );
        put(
            &mut out,
            format!(
                "ferry_user_source_reads_total {}",
                load(&self.user_source_reads)
            ),
        );
        head(
            &mut out,
            "ferry_user_source_read_failures_total",
            "counter",
            "Reads of the user source that failed.",
        );
        put(
            &mut out,
            format!(
                "ferry_user_source_read_failures_total {}",
                load(&self.user_source_failures)
            ),
        );
        out
    }
}

/// One session's part in the command counters: how many of its commands are
/// counted, and the counter of the backend it is on (asked for again only
/// when it moved), so the pump adds at most once per wake-up, without a lock.
#[derive(Debug, Default)]
pub struct SessionCommands {
    counted: u64,
    on: Option<(BackendId, Arc<AtomicU64>)>,
}

impl SessionCommands {
    /// Adds to `backend`'s counter the commands since the last call (`total`
    /// is the session's count so far); `counter` gives a backend's counter.
    pub fn count(
        &mut self,
        total: u64,
        backend: Option<&BackendId>,
        counter: impl FnOnce(&BackendId) -> Option<Arc<AtomicU64>>,
    ) {
        if total <= self.counted {
            return;
        }
        let Some(backend) = backend else {
            return;
        };
        if self.on.as_ref().is_none_or(|(b, _)| b != backend) {
            self.on = counter(backend).map(|c| (backend.clone(), c));
        }
        if let Some((_, c)) = &self.on {
            c.fetch_add(total - self.counted, Relaxed);
        }
        self.counted = total;
    }
}

/// Escapes a label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn trigger_index(t: Trigger) -> usize {
    Trigger::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_failures_are_classified() {
        assert_eq!(
            LoginFailure::of(&CloseReason::LoginRefused("no backend".into())),
            LoginFailure::NoBackend
        );
        assert_eq!(
            LoginFailure::of(&CloseReason::LoginRefused("backend cn1: timed out".into())),
            LoginFailure::Backend
        );
        assert_eq!(
            LoginFailure::of(&CloseReason::LoginRefused("Access denied".into())),
            LoginFailure::Refused
        );
        assert_eq!(
            LoginFailure::of(&CloseReason::LoginTimeout),
            LoginFailure::Timeout
        );
    }

    #[test]
    fn a_session_adds_its_new_commands_to_the_backend_it_is_on() {
        let counters = CommandCounters::default();
        let (cn1, cn2) = (BackendId("cn1".into()), BackendId("cn2".into()));
        let mut s = SessionCommands::default();
        let mut asked = 0;
        let mut count = |s: &mut SessionCommands, total, b: Option<&BackendId>| {
            s.count(total, b, |b| {
                asked += 1;
                Some(counters.counter(b))
            })
        };
        count(&mut s, 0, Some(&cn1));
        count(&mut s, 3, None);
        count(&mut s, 3, Some(&cn1));
        count(&mut s, 5, Some(&cn1));
        count(&mut s, 6, Some(&cn2));
        count(&mut s, 0, Some(&cn2));
        assert_eq!(asked, 2, "asked once per backend");
        assert_eq!(counters.total(&cn1), 5);
        assert_eq!(counters.total(&cn2), 1);
    }

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.sessions_total.fetch_add(3, Relaxed);
        m.login_failed(LoginFailure::NoBackend);
        m.migration_duration(0.02);
        m.commands
            .counter(&BackendId("cn1".into()))
            .fetch_add(7, Relaxed);
        assert_eq!(m.commands.total(&BackendId("cn1".into())), 7);
        assert_eq!(m.commands.total(&BackendId("cn2".into())), 0);
        let text = m.render(&[]);
        assert!(text.contains("ferry_sessions_total 3\n"), "{text}");
        assert!(text.contains("ferry_logins_total{result=\"failed\",reason=\"no_backend\"} 1\n"));
        assert!(text.contains("ferry_migration_duration_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("ferry_migration_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("ferry_migration_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
