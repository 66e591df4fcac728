//! A small client for ferry's admin HTTP API (JSON, `/metrics`), and waiting
//! for what it reports.
//!
//! The field names follow the admin API contract: sessions carry `id`,
//! `backend`, `backend_connection_id`, `in_txn`, `safe`, `blocked_by`,
//! `migrations`, `pending_migration` and `last_migration`; backends carry
//! `id`, `addr`, `state`, `health`, `connections` and `drain`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Ferry;

/// The admin API of one ferry.
#[derive(Clone, Debug)]
pub struct Admin {
    pub addr: SocketAddr,
    /// ferry's log file, shown when a wait times out.
    pub log_path: Option<std::path::PathBuf>,
}

/// The `admin_listen` address in a RON config.
pub fn admin_addr_of(config: &str) -> SocketAddr {
    let start = config
        .find("admin_listen:")
        .unwrap_or_else(|| panic!("config has no `admin_listen:` field:\n{config}"));
    let rest = &config[start + "admin_listen:".len()..];
    let quoted = rest
        .trim_start()
        .strip_prefix('"')
        .expect("admin_listen: \"...\"");
    let addr = &quoted[..quoted.find('"').expect("closing quote")];
    addr.parse()
        .unwrap_or_else(|e| panic!("admin_listen address '{addr}': {e}"))
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Admin {
        Admin {
            addr,
            log_path: None,
        }
    }

    /// The admin API of a ferry started by the harness (read from its config).
    pub fn of(ferry: &Ferry) -> Admin {
        let config = std::fs::read_to_string(&ferry.config_path).expect("read ferry's config");
        Admin {
            addr: admin_addr_of(&config),
            log_path: Some(ferry.log_path.clone()),
        }
    }

    fn log_tail(&self) -> String {
        let Some(path) = &self.log_path else {
            return String::new();
        };
        tail(path, 40)
    }

    /// One request; `None` when nothing answers.
    pub fn try_http(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        http_request(self.addr, Duration::from_secs(10), method, path, body)
    }

    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.try_http(method, path, body).unwrap_or_else(|| {
            panic!(
                "{method} {path}: no HTTP answer from {}; ferry log tail:\n{}",
                self.addr,
                self.log_tail()
            )
        })
    }

    /// A request whose answer must be JSON (any status).
    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.http(method, path, body);
        let value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path}: answer {status} is not JSON ({e}): {text}")
        });
        (status, value)
    }

    /// `GET /api/sessions`.
    pub fn sessions(&self) -> Vec<Value> {
        let (status, v) = self.json("GET", "/api/sessions", None);
        assert_eq!(status, 200, "GET /api/sessions: {v}");
        v.as_array().expect("GET /api/sessions: an array").clone()
    }

    /// The session with ferry connection id `id`; panics if there is none.
    pub fn session(&self, id: u64) -> Value {
        self.try_session(id).unwrap_or_else(|| {
            panic!(
                "no session {id} in GET /api/sessions: {:?}",
                self.sessions()
            )
        })
    }

    pub fn try_session(&self, id: u64) -> Option<Value> {
        self.sessions()
            .into_iter()
            .find(|s| s["id"].as_u64() == Some(id))
    }

    /// `GET /api/backends` by id.
    pub fn backends(&self) -> BTreeMap<String, Value> {
        let (status, v) = self.json("GET", "/api/backends", None);
        assert_eq!(status, 200, "GET /api/backends: {v}");
        v.as_array()
            .expect("GET /api/backends: an array")
            .iter()
            .map(|b| (b["id"].as_str().expect("backend id").to_string(), b.clone()))
            .collect()
    }

    pub fn backend(&self, id: &str) -> Value {
        self.backends()
            .remove(id)
            .unwrap_or_else(|| panic!("no backend {id} in GET /api/backends"))
    }

    /// The id of the backend at `127.0.0.1:port`.
    pub fn backend_id_of_port(&self, port: u16) -> String {
        self.backends()
            .into_iter()
            .find(|(_, b)| {
                b["addr"]
                    .as_str()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .is_some_and(|a| a.port() == port)
            })
            .map(|(id, _)| id)
            .unwrap_or_else(|| panic!("no backend with port {port} in GET /api/backends"))
    }

    /// `connections` of each backend.
    pub fn connections(&self) -> BTreeMap<String, u64> {
        self.backends()
            .into_iter()
            .map(|(id, b)| (id, b["connections"].as_u64().unwrap_or(0)))
            .collect()
    }

    /// `POST /api/sessions/{id}/migrate`, with `{"to": ..}` when `to` is given.
    pub fn migrate(&self, id: u64, to: Option<&str>) -> (u16, Value) {
        let body = to.map(|t| format!(r#"{{"to": "{t}"}}"#));
        self.json(
            "POST",
            &format!("/api/sessions/{id}/migrate"),
            body.as_deref(),
        )
    }

    /// A migration request that the contract says must be accepted: 202
    /// `{"id": id, "requested": true}`.
    pub fn request_migration(&self, id: u64, to: Option<&str>) {
        let (status, body) = self.migrate(id, to);
        assert_eq!(
            status, 202,
            "POST /api/sessions/{id}/migrate {to:?} must be accepted with 202 (session migration); got {status} {body}"
        );
        assert_eq!(body["id"].as_u64(), Some(id), "{body}");
        assert_eq!(body["requested"], Value::Bool(true), "{body}");
    }

    pub fn drain(&self, backend: &str) {
        let (status, body) = self.json("POST", &format!("/api/backends/{backend}/drain"), None);
        assert_eq!(status, 200, "drain {backend}: {body}");
    }

    pub fn resume(&self, backend: &str) {
        let (status, body) = self.json("POST", &format!("/api/backends/{backend}/resume"), None);
        assert_eq!(status, 200, "resume {backend}: {body}");
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> String {
        let (status, text) = self.http("GET", "/metrics", None);
        assert_eq!(status, 200, "GET /metrics");
        text
    }

    /// The value of the sample named exactly `sample` (name and labels as
    /// printed, e.g. `ferry_migrations_succeeded_total{trigger="admin"}`),
    /// or `None` when there is none.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_in(&self.metrics(), sample)
    }

    /// The sum of every sample of `name` whose labels contain all `labels`
    /// (`key="value"` strings); 0 when there is none.
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum_in(&self.metrics(), name, labels)
    }

    /// Poll `probe` every 50 ms until it returns `(true, _)` and return what
    /// it saw; panics after `within` with `what`, the last thing it saw and
    /// ferry's log tail.
    pub fn wait_for<T: std::fmt::Debug>(
        &self,
        what: &str,
        within: Duration,
        mut probe: impl FnMut(&Admin) -> (bool, T),
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let (ok, seen) = probe(self);
            if ok {
                return seen;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {within:?} waiting for {what}; last seen: {seen:#?}\nferry log tail:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until session `id` has completed `count` migrations and has none
    /// pending; returns the session. Panics unless the last one succeeded.
    /// (A failed attempt before it, e.g. while something blocked the move,
    /// does not end the wait: the move may still happen.)
    pub fn wait_migrated(&self, id: u64, count: u64, within: Duration) -> Value {
        let s = self.wait_for(
            &format!("session {id} to complete migration number {count}"),
            within,
            |a| {
                let s = a.session(id);
                let done = s["migrations"].as_u64() == Some(count)
                    && s.get("pending_migration").is_some_and(Value::is_null);
                (done, s)
            },
        );
        assert_eq!(
            s["last_migration"]["outcome"], "ok",
            "session {id}: the last migration did not succeed: {s:#}"
        );
        s
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The value of the sample named exactly `sample` in Prometheus text.
pub fn metric_in(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok())?
    })
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
pub fn metric_sum_in(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (sample, value) = l.rsplit_once(' ')?;
            let (sample_name, sample_labels) = match sample.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (sample, ""),
            };
            let parts: Vec<&str> = sample_labels.split(',').collect();
            (sample_name == name && labels.iter().all(|l| parts.contains(l)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// One HTTP/1.1 request to the admin API at `addr`: status and body, `None` when nothing answers.
pub fn http_request(
    addr: std::net::SocketAddr,
    read_timeout: Duration,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_address_is_read_from_the_config() {
        let ron = "(\n    listen: \"127.0.0.1:1\",\n    admin_listen: \"127.0.0.1:2\",\n)";
        assert_eq!(admin_addr_of(ron).port(), 2);
    }

    #[test]
    fn metrics_are_found_and_summed() {
        let text = "# HELP x\n\
            ferry_migrations_started_total{trigger=\"admin\"} 2\n\
            ferry_migrations_started_total{trigger=\"drain\"} 3\n\
            ferry_migrations_failed_total{trigger=\"drain\",reason=\"blocked\"} 1\n\
            ferry_migrations_failed_total{trigger=\"drain\",reason=\"login\"} 4\n\
            ferry_sessions 5\n";
        assert_eq!(
            metric_in(text, "ferry_migrations_started_total{trigger=\"drain\"}"),
            Some(3.0)
        );
        assert_eq!(metric_in(text, "ferry_sessions"), Some(5.0));
        assert_eq!(metric_in(text, "nope"), None);
        assert_eq!(
            metric_sum_in(
                text,
                "ferry_migrations_failed_total",
                &["trigger=\"drain\""]
            ),
            5.0
        );
        assert_eq!(
            metric_sum_in(text, "ferry_migrations_started_total", &[]),
            5.0
        );
        assert_eq!(metric_sum_in(text, "ferry_sessions", &[]), 5.0);
    }
}
