//! Cluster control end to end: balancing, tenants, drain, adding backends,
//! health checks, metrics, SIGHUP reload and SIGTERM, against real MariaDB.
//!
//! Needs `FERRY_TEST_BACKENDS` (three `127.0.0.1:PORT` MariaDB servers with
//! users root/111 and app/secret, mysql_native_password) and the ferry binary
//! (`FERRY_BIN`, default `<workspace>/target/debug/ferry`). Without servers
//! every test fails: a missing server is never a silent pass.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ferry_tests::{ferry_bin, free_port};
use mysql::prelude::Queryable;
use serde_json::Value;

// ---------------------------------------------------------------- helpers

/// Three MariaDB servers (the cluster tests need all three).
fn backends() -> Vec<SocketAddr> {
    ferry_tests::backends_n(3)
}

/// A ferry process on free ports, killed when dropped.
struct Ferry {
    child: Option<Child>,
    listen: SocketAddr,
    admin: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `(id, addr, labels-as-RON)`.
type BackendSpec<'a> = (&'a str, SocketAddr, &'a str);

fn backends_ron(list: &[BackendSpec]) -> String {
    list.iter()
        .map(|(id, addr, labels)| {
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!(", labels: {{{labels}}}")
            };
            format!("(id: \"{id}\", addr: \"{addr}\"{labels}),")
        })
        .collect::<Vec<_>>()
        .join("\n        ")
}

impl Ferry {
    /// Starts ferry with these backends; `extra` is more RON fields. If a
    /// free port was taken meanwhile (ferry exits on bind), tries fresh ones.
    fn start(list: &[BackendSpec], extra: &str) -> Ferry {
        for _ in 0..2 {
            if let Some(ferry) = Ferry::try_start(list, extra) {
                return ferry;
            }
        }
        Ferry::try_start(list, extra).expect("ferry exited at start (see log above)")
    }

    fn try_start(list: &[BackendSpec], extra: &str) -> Option<Ferry> {
        let dir = std::env::temp_dir().join(format!(
            "ferry-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut ferry = Ferry {
            child: None,
            listen,
            admin,
            config_path: dir.join("ferry.ron"),
            log_path: dir.join("ferry.log"),
            _dir: TempDir(dir),
        };
        ferry.write_config(list, extra);
        let log = std::fs::File::create(&ferry.log_path).unwrap();
        let child = Command::new(ferry_bin())
            .arg("--config")
            .arg(&ferry.config_path)
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferry");
        ferry.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exited = ferry.child.as_mut().unwrap().try_wait().unwrap().is_some();
            if exited {
                let log = ferry.log();
                eprintln!("ferry exited at start:\n{log}");
                ferry.child = None;
                return None;
            }
            let up = ferry
                .try_http("GET", "/health", None)
                .is_some_and(|(status, _)| status == 200);
            if up {
                return Some(ferry);
            }
            assert!(
                Instant::now() < deadline,
                "ferry did not answer /health within 10 s; log:\n{}",
                ferry.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn write_config(&self, list: &[BackendSpec], extra: &str) {
        let config = format!(
            r#"(
    listen: "{}",
    admin_listen: "{}",
    users: [
        (user: "app", password: "secret", any_tenant: true),
        (user: "root", password: "111"),
    ],
    backends: [
        {}
    ],
    {extra}
)
"#,
            self.listen,
            self.admin,
            backends_ron(list)
        );
        std::fs::write(&self.config_path, config).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        child.try_wait().unwrap().is_none()
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ferry did not exit within {within:?}; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_http(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        ferry_tests::admin::http_request(self.admin, Duration::from_secs(5), method, path, body)
    }

    fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.try_http(method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer; log:\n{}", self.log()))
    }

    fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.http(method, path, body);
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        (status, value)
    }

    /// `id` → backend object.
    fn backends(&self) -> BTreeMap<String, Value> {
        let (status, list) = self.json("GET", "/api/backends", None);
        assert_eq!(status, 200);
        list.as_array()
            .expect("an array")
            .iter()
            .map(|b| (b["id"].as_str().unwrap().to_string(), b.clone()))
            .collect()
    }

    /// A metric's value (the first sample whose name and labels start with `prefix`).
    fn metric(&self, prefix: &str) -> f64 {
        let (status, text) = self.http("GET", "/metrics", None);
        assert_eq!(status, 200);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == prefix).then(|| value.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("metric {prefix} not found in:\n{text}"))
    }

    fn wait_for(&self, what: &str, within: Duration, mut ok: impl FnMut(&Ferry) -> bool) {
        let deadline = Instant::now() + within;
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn connect(&self, user: &str, password: &str) -> mysql::Conn {
        self.try_connect(user, password)
            .unwrap_or_else(|e| panic!("connect as {user}: {e}; log:\n{}", self.log()))
    }

    fn try_connect(&self, user: &str, password: &str) -> mysql::Result<mysql::Conn> {
        let opts = mysql::OptsBuilder::new()
            .ip_or_hostname(Some(self.listen.ip().to_string()))
            .tcp_port(self.listen.port())
            .user(Some(user))
            .pass(Some(password))
            .prefer_socket(false)
            .tcp_connect_timeout(Some(Duration::from_secs(5)));
        mysql::Conn::new(opts)
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn port_of(conn: &mut mysql::Conn) -> u16 {
    conn.query_first::<u16, _>("SELECT @@port")
        .expect("SELECT @@port")
        .expect("a row")
}

/// Ports of the sessions, counted.
fn spread(conns: &mut [mysql::Conn]) -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for c in conns {
        *out.entry(port_of(c)).or_default() += 1;
    }
    out
}

fn three() -> Vec<BackendSpec<'static>> {
    let b = backends();
    vec![("cn1", b[0], ""), ("cn2", b[1], ""), ("cn3", b[2], "")]
}

fn connections(f: &Ferry, id: &str) -> u64 {
    f.backends()[id]["connections"].as_u64().unwrap()
}

/// A fake backend that greets every connection with a MySQL handshake, until stopped.
struct FakeBackend {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

fn handshake_packet() -> Vec<u8> {
    let mut p = vec![10u8];
    p.extend_from_slice(b"5.5.5-10.11.6-MariaDB-fake\0");
    p.extend_from_slice(&42u32.to_le_bytes());
    p.extend_from_slice(b"abcdefgh\0");
    let caps: u32 = 0xF7FE | (1 << 19) | (1 << 15) | (1 << 9);
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0u8; 10]);
    p.extend_from_slice(b"ijklmnopqrst\0");
    p.extend_from_slice(b"mysql_native_password\0");
    let mut framed = (p.len() as u32).to_le_bytes()[..3].to_vec();
    framed.push(0);
    framed.extend(p);
    framed
}

impl FakeBackend {
    fn start(port: u16) -> FakeBackend {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind fake backend");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(&handshake_packet());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeBackend {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn thirty_sessions_land_ten_ten_ten_and_metrics_follow_them() {
    let b = backends();
    let f = Ferry::start(&three(), "");
    let logins_before = f.metric("ferry_sessions_total");
    let bytes_before = f.metric("ferry_bytes_forwarded_total{from=\"backend\"}");
    let mut conns: Vec<mysql::Conn> = (0..30).map(|_| f.connect("app", "secret")).collect();
    let spread = spread(&mut conns);
    let expected: BTreeMap<u16, usize> = b[..3].iter().map(|a| (a.port(), 10)).collect();
    assert_eq!(spread, expected, "30 sessions over three equal backends");
    for id in ["cn1", "cn2", "cn3"] {
        assert_eq!(connections(&f, id), 10, "{id}");
        assert_eq!(
            f.metric(&format!("ferry_backend_connections{{backend=\"{id}\"}}")),
            10.0
        );
    }
    assert_eq!(f.metric("ferry_sessions"), 30.0);
    assert_eq!(f.metric("ferry_sessions_total") - logins_before, 30.0);
    assert!(f.metric("ferry_bytes_forwarded_total{from=\"backend\"}") > bytes_before);
    // /api/sessions lists them with the contract's fields.
    let (status, sessions) = f.json("GET", "/api/sessions", None);
    assert_eq!(status, 200);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 30);
    let s = &sessions[0];
    for field in [
        "id",
        "tenant",
        "user",
        "labels",
        "backend",
        "in_txn",
        "safe",
        "blocked_by",
        "migrations",
    ] {
        assert!(s.get(field).is_some(), "session has no '{field}': {s}");
    }
    assert_eq!(s["user"], "app");
    // A bad password is a failed login, counted by reason.
    assert!(f.try_connect("app", "wrong").is_err());
    // The client has its ERR a moment before ferry counts the closed session.
    f.wait_for(
        "the failed login to be counted",
        Duration::from_secs(5),
        |f| f.metric("ferry_logins_total{result=\"failed\",reason=\"refused\"}") == 1.0,
    );
    drop(conns);
    f.wait_for("all sessions to be released", Duration::from_secs(5), |f| {
        f.metric("ferry_sessions") == 0.0 && f.backends().values().all(|b| b["connections"] == 0)
    });
}

#[test]
fn a_tenants_sessions_land_only_on_its_backends() {
    let b = backends();
    let f = Ferry::start(
        &[
            ("t1", b[0], r#""account": "acc1""#),
            ("t2", b[1], r#""account": "acc1""#),
            ("pool", b[2], ""),
        ],
        "",
    );
    let mut tenant: Vec<mysql::Conn> = (0..8).map(|_| f.connect("acc1:app", "secret")).collect();
    let ports = spread(&mut tenant);
    assert_eq!(
        ports,
        BTreeMap::from([(b[0].port(), 4), (b[1].port(), 4)]),
        "acc1 sessions only on acc1's backends, balanced"
    );
    let mut plain: Vec<mysql::Conn> = (0..3).map(|_| f.connect("app", "secret")).collect();
    assert_eq!(spread(&mut plain), BTreeMap::from([(b[2].port(), 3)]));
    let (_, sessions) = f.json("GET", "/api/sessions", None);
    let acc1 = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tenant"] == "acc1")
        .count();
    assert_eq!(acc1, 8);
}

#[test]
fn drain_stops_new_sessions_and_an_empty_draining_backend_is_drained() {
    let b = backends();
    let f = Ferry::start(&three(), "");
    let mut early: Vec<mysql::Conn> = (0..3).map(|_| f.connect("app", "secret")).collect();
    assert_eq!(connections(&f, "cn1"), 1);
    let (status, body) = f.json("POST", "/api/backends/cn1/drain", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "draining");
    let mut late: Vec<mysql::Conn> = (0..10).map(|_| f.connect("app", "secret")).collect();
    let ports = spread(&mut late);
    assert!(
        !ports.contains_key(&b[0].port()),
        "drained backend got new sessions: {ports:?}"
    );
    // Existing sessions on it keep working.
    assert_eq!(spread(&mut early).values().sum::<usize>(), 3);
    drop(early);
    f.wait_for("cn1 to be drained", Duration::from_secs(5), |f| {
        f.backends()["cn1"]["state"] == "drained"
    });
    assert_eq!(
        f.metric("ferry_backend_state{backend=\"cn1\",state=\"drained\"}"),
        1.0
    );
    let (status, body) = f.json("POST", "/api/backends/cn1/resume", None);
    assert_eq!(status, 200);
    assert_eq!(body["state"], "working");
    let mut next = f.connect("app", "secret");
    assert_eq!(
        port_of(&mut next),
        b[0].port(),
        "the emptiest backend takes the next one"
    );
    // Unknown ids and bad requests are clear errors.
    let (status, body) = f.json("POST", "/api/backends/nope/drain", None);
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let (status, body) = f.json("GET", "/api/backends/cn1/drain", None);
    assert_eq!(status, 405, "{body}");
    let (status, _) = f.json("GET", "/api/nothing", None);
    assert_eq!(status, 404);
}

#[test]
fn put_adds_a_backend_that_takes_new_sessions_and_delete_drains_it_away() {
    let b = backends();
    let f = Ferry::start(&[("cn1", b[0], ""), ("cn2", b[1], "")], "");
    let mut conns: Vec<mysql::Conn> = (0..4).map(|_| f.connect("app", "secret")).collect();
    // Bad bodies first.
    for (body, needle) in [
        ("{", "JSON"),
        (r#"{"addr": "localhost"}"#, "IP:port"),
        (
            r#"{"addr": "127.0.0.1:1", "state": "sleeping"}"#,
            "sleeping",
        ),
        (r#"{"addr": "127.0.0.1:1", "colour": "red"}"#, "colour"),
    ] {
        let (status, reply) = f.json("PUT", "/api/backends/cn3", Some(body));
        assert_eq!(status, 400, "{body} -> {reply}");
        assert!(reply["error"].as_str().unwrap().contains(needle), "{reply}");
    }
    assert!(!f.backends().contains_key("cn3"));
    let body = format!(r#"{{"addr": "{}", "labels": {{"zone": "a"}}}}"#, b[2]);
    let (status, reply) = f.json("PUT", "/api/backends/cn3", Some(&body));
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["state"], "working");
    assert_eq!(reply["labels"]["zone"], "a");
    // cn3 has the fewest sessions: it takes the next two (labelled backends
    // serve sessions that ask for no labels only when there is no pool, so
    // relabel it into the pool first).
    let body = format!(r#"{{"addr": "{}", "labels": {{}}}}"#, b[2]);
    let (status, _) = f.json("PUT", "/api/backends/cn3", Some(&body));
    assert_eq!(status, 200);
    for _ in 0..2 {
        let mut c = f.connect("app", "secret");
        assert_eq!(port_of(&mut c), b[2].port());
        conns.push(c);
    }
    // DELETE with sessions: no new sessions there, forgotten when they end.
    let (status, reply) = f.json("DELETE", "/api/backends/cn3", None);
    assert_eq!(status, 202, "{reply}");
    let mut more: Vec<mysql::Conn> = (0..3).map(|_| f.connect("app", "secret")).collect();
    assert!(!spread(&mut more).contains_key(&b[2].port()));
    conns.retain_mut(|c| port_of(c) != b[2].port());
    f.wait_for("cn3 to be forgotten", Duration::from_secs(5), |f| {
        !f.backends().contains_key("cn3")
    });
    let (status, _) = f.json("DELETE", "/api/backends/cn3", None);
    assert_eq!(status, 404);
}

#[test]
fn a_dead_backend_goes_down_within_the_health_window_and_comes_back_up() {
    let port = free_port();
    let b = backends();
    let fake_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut fake = Some(FakeBackend::start(port));
    let f = Ferry::start(
        &[("cn1", b[0], ""), ("fake", fake_addr, "")],
        "health: (interval_ms: 200, timeout_ms: 200, fall: 3, rise: 2),",
    );
    assert_eq!(f.backends()["fake"]["health"], "up");
    thread::sleep(Duration::from_millis(700));
    assert_eq!(
        f.backends()["fake"]["health"],
        "up",
        "healthy checks keep it up"
    );
    let killed = Instant::now();
    fake.take();
    f.wait_for("fake to go down", Duration::from_secs(3), |f| {
        f.backends()["fake"]["health"] == "down"
    });
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_millis(350),
        "down after {took:?}: fewer than 3 failed checks?"
    );
    assert_eq!(f.metric("ferry_backend_up{backend=\"fake\"}"), 0.0);
    // A down backend takes no sessions: everything goes to cn1.
    let mut conns: Vec<mysql::Conn> = (0..4).map(|_| f.connect("app", "secret")).collect();
    assert_eq!(spread(&mut conns), BTreeMap::from([(b[0].port(), 4)]));
    let _fake = FakeBackend::start(port);
    f.wait_for("fake to come back up", Duration::from_secs(3), |f| {
        f.backends()["fake"]["health"] == "up"
    });
    f.wait_for("both transitions in the log", Duration::from_secs(3), |f| {
        let log = f.log();
        log.contains("backend is down") && log.contains("backend is up again")
    });
    let log = f.log();
    assert_eq!(
        log.matches("backend is down").count(),
        1,
        "logged once:\n{log}"
    );
    assert_eq!(
        log.matches("backend is up again").count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
fn sighup_applies_a_changed_backend_list_without_dropping_sessions() {
    let b = backends();
    let mut f = Ferry::start(&[("cn1", b[0], ""), ("cn2", b[1], "")], "");
    let mut on_cn1 = Vec::new();
    while on_cn1.is_empty() {
        let mut c = f.connect("app", "secret");
        if port_of(&mut c) == b[0].port() {
            on_cn1.push(c);
        }
    }
    // cn1 leaves, cn3 joins, cn2 is relabelled into tenant acc9.
    f.write_config(
        &[("cn2", b[1], r#""account": "acc9""#), ("cn3", b[2], "")],
        "",
    );
    f.signal("HUP");
    f.wait_for("the reload", Duration::from_secs(5), |f| {
        f.backends().contains_key("cn3")
    });
    // cn1 is removed: its session moves (to cn3, the only backend for it) and cn1 is forgotten.
    f.wait_for(
        "cn1 to be emptied and forgotten",
        Duration::from_secs(10),
        |f| !f.backends().contains_key("cn1"),
    );
    let now = f.backends();
    assert_eq!(now["cn2"]["labels"]["account"], "acc9");
    assert_eq!(
        port_of(&mut on_cn1[0]),
        b[2].port(),
        "the session survived, on cn3"
    );
    let mut plain: Vec<mysql::Conn> = (0..3).map(|_| f.connect("app", "secret")).collect();
    assert_eq!(spread(&mut plain), BTreeMap::from([(b[2].port(), 3)]));
    let mut tenant = f.connect("acc9:app", "secret");
    assert_eq!(port_of(&mut tenant), b[1].port());
    drop(on_cn1);
    f.wait_for("cn1 to be forgotten", Duration::from_secs(5), |f| {
        !f.backends().contains_key("cn1")
    });
    // A broken config is rejected and changes nothing.
    std::fs::write(&f.config_path, "(listen: ").unwrap();
    f.signal("HUP");
    f.wait_for("the rejection", Duration::from_secs(5), |f| {
        f.metric("ferry_config_reloads_total{result=\"rejected\"}") == 1.0
    });
    assert!(f.log().contains("config reload rejected"));
    assert_eq!(
        f.backends().keys().cloned().collect::<Vec<_>>(),
        ["cn2", "cn3"]
    );
    let mut c = f.connect("app", "secret");
    assert_eq!(port_of(&mut c), b[2].port());
    drop(c);
    drop(plain);
    drop(tenant);
    f.signal("TERM");
    assert!(f.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn sigterm_closes_idle_sessions_and_exits_zero() {
    let mut f = Ferry::start(&three(), "shutdown_grace_ms: 20000,");
    let mut idle: Vec<mysql::Conn> = (0..3).map(|_| f.connect("app", "secret")).collect();
    for c in &mut idle {
        port_of(c);
    }
    let started = Instant::now();
    f.signal("TERM");
    let status = f.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        f.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle sessions should not wait for the grace period ({:?})",
        started.elapsed()
    );
    for c in &mut idle {
        assert!(
            c.query_drop("SELECT 1").is_err(),
            "session still open after exit"
        );
    }
    assert!(f.log().contains("closed the session at a safe point"));
}

#[test]
fn sigterm_lets_an_open_transaction_finish_first() {
    use mysql::prelude::Queryable;
    let mut f = Ferry::start(&three(), "shutdown_grace_ms: 20000,");
    let mut busy = f.connect("app", "secret");
    busy.query_drop("BEGIN").unwrap();
    busy.query_drop("SELECT 1").unwrap();
    f.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    // Still inside its transaction: the session stays and keeps working.
    assert!(f.is_running(), "ferry exited while a transaction was open");
    let one: Option<u32> = busy.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1));
    busy.query_drop("COMMIT").unwrap();
    // At the safe point after COMMIT it is closed and ferry exits.
    let status = f.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        f.log()
    );
    assert!(busy.query_drop("SELECT 1").is_err());
}

#[test]
fn user_sync_reads_mysql_user_from_a_backend() {
    let b = backends();
    // An account that exists on the servers but not in ferry's config.
    for addr in &b[..3] {
        let opts = mysql::OptsBuilder::new()
            .ip_or_hostname(Some(addr.ip().to_string()))
            .tcp_port(addr.port())
            .user(Some("root"))
            .pass(Some("111"))
            .prefer_socket(false);
        let mut direct = mysql::Conn::new(opts).expect("connect to the backend directly");
        direct
            .query_drop(
                "CREATE USER IF NOT EXISTS 'ferry_sync_probe'@'%' \
                 IDENTIFIED VIA mysql_native_password USING PASSWORD('probe-pw')",
            )
            .expect("create the probe user");
    }
    // (By default ferry would let the backend verify an account it does not know.)
    let plain = Ferry::start(&three(), "unverified_logins: Refuse,");
    assert!(
        plain.try_connect("ferry_sync_probe", "probe-pw").is_err(),
        "without user_source the account is unknown to ferry"
    );
    drop(plain);
    let f = Ferry::start(
        &three(),
        r#"user_source: (backend: "cn1", user: "root", password: "111", interval_ms: 60000),"#,
    );
    let mut c = f.connect("ferry_sync_probe", "probe-pw");
    assert!(b[..3].iter().any(|a| a.port() == port_of(&mut c)));
    assert!(f.try_connect("ferry_sync_probe", "wrong").is_err());
    // Configured users win: app/secret still logs in.
    drop(f.connect("app", "secret"));
    assert!(
        f.log().contains("synced users from mysql.user"),
        "log:\n{}",
        f.log()
    );
}

#[test]
fn api_sessions_shows_transactions_and_what_blocks_a_move() {
    use mysql::prelude::Queryable;
    let f = Ferry::start(&three(), "");
    let mut c = f.connect("app", "secret");
    let session = |f: &Ferry| -> Value {
        let (status, body) = f.json("GET", "/api/sessions", None);
        assert_eq!(status, 200);
        body.as_array().expect("array")[0].clone()
    };
    c.query_drop("SELECT 1").unwrap();
    let s = session(&f);
    assert_eq!(s["in_txn"], Value::Bool(false), "{s}");
    assert_eq!(s["safe"], Value::Bool(true), "{s}");

    c.query_drop("BEGIN").unwrap();
    c.query_drop("SELECT 1").unwrap();
    let s = session(&f);
    assert_eq!(s["in_txn"], Value::Bool(true), "{s}");
    assert_eq!(s["safe"], Value::Bool(false), "{s}");
    c.query_drop("COMMIT").unwrap();

    c.query_drop("CREATE TEMPORARY TABLE test.scratch (a INT)")
        .unwrap();
    let s = session(&f);
    assert_eq!(s["in_txn"], Value::Bool(false), "{s}");
    assert_eq!(s["safe"], Value::Bool(false), "{s}");
    let reasons = s["blocked_by"].to_string();
    assert!(reasons.contains("scratch"), "{reasons}");

    c.query_drop("DROP TEMPORARY TABLE test.scratch").unwrap();
    let s = session(&f);
    assert_eq!(s["safe"], Value::Bool(true), "{s}");
    assert_eq!(s["blocked_by"], Value::Array(vec![]), "{s}");

    // COM_RESET_CONNECTION resets the server's trackers; ferry switches them
    // back on, so the session stays movable and its state stays visible.
    c.reset().unwrap();
    let tracked: Option<String> = c
        .query_first("SELECT @@session_track_system_variables")
        .unwrap();
    assert_eq!(tracked.as_deref(), Some("*"));
    let s = session(&f);
    assert_eq!(s["safe"], Value::Bool(true), "{s}");
    c.query_drop("CREATE TEMPORARY TABLE test.again (a INT)")
        .unwrap();
    let s = session(&f);
    assert!(s["blocked_by"].to_string().contains("again"), "{s}");
}
