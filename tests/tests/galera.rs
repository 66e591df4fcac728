//! ferry in front of a real three-node MariaDB Galera cluster
//! (`FERRY_TEST_GALERA`, started by `scripts/test` with `scripts/galera`).
//!
//! Twelve writers insert rows with unique ids (single autocommit INSERTs and
//! two-row explicit transactions) while node 2 is drained and resumed and
//! node 3 is killed and restarted. No writer may see an error except a
//! statement in flight on the killed node, and every acknowledged commit must
//! be on every node afterwards.
//!
//! The same workload also runs directly against the nodes (no ferry): that
//! checks the cluster, the crash/rejoin helpers and the bookkeeping, and is
//! what a client without ferry sees.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::{Conn, Error as DbError};
use ferry_tests::servers::{self, galera, galera_nodes, GaleraRestartOnDrop};
use ferry_tests::*;

const WRITERS: usize = 12;
const DB: &str = "ferry_galera";

/// The Galera tests kill and restart nodes: one at a time.
fn cluster_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn direct(addr: SocketAddr, user: &str, pass: &str) -> mysql::Result<Conn> {
    Conn::new(
        opts(addr.port(), user, pass)
            .read_timeout(Some(Duration::from_secs(60)))
            .write_timeout(Some(Duration::from_secs(60))),
    )
}

/// A fresh table for one run, created through node 1 (DDL replicates).
fn fresh_table(nodes: &[SocketAddr]) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let table = format!(
        "{DB}.writes_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut c = direct(nodes[0], "root", "111").expect("log in to Galera node 1");
    c.query_drop(format!("CREATE DATABASE IF NOT EXISTS {DB}"))
        .unwrap();
    c.query_drop(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, writer INT NOT NULL, kind VARCHAR(8) NOT NULL)"
    ))
    .unwrap();
    table
}

/// Every node is Synced in a cluster of three.
fn assert_synced(nodes: &[SocketAddr]) {
    for addr in nodes {
        let mut c = direct(*addr, "root", "111")
            .unwrap_or_else(|e| panic!("log in to Galera node {addr}: {e}"));
        let state: Option<(String, String)> = c
            .query_first(
                "SELECT MAX(IF(VARIABLE_NAME = 'WSREP_LOCAL_STATE_COMMENT', VARIABLE_VALUE, NULL)), \
                 MAX(IF(VARIABLE_NAME = 'WSREP_CLUSTER_SIZE', VARIABLE_VALUE, NULL)) \
                 FROM information_schema.GLOBAL_STATUS",
            )
            .unwrap();
        assert_eq!(
            state,
            Some(("Synced".into(), "3".into())),
            "node {addr} state and cluster size"
        );
    }
}

// ------------------------------------------------------------ the workload

/// What one writer saw.
#[derive(Debug, Default)]
struct Report {
    /// Committed and acknowledged: must be on every node.
    acked: Vec<u64>,
    /// In flight when the connection was lost: may or may not be there.
    unknown: Vec<u64>,
    /// Inserted in a transaction that lost its connection before COMMIT:
    /// must not be there.
    rolled_back: Vec<u64>,
    /// The accepted lost-connection errors.
    lost: Vec<String>,
    /// Any other error: the test fails on these.
    errors: Vec<String>,
}

/// How a writer connects and which errors it accepts as "the node died".
trait Route: Send + Sync + 'static {
    /// A new connection for writer `w` (after `attempt` lost ones).
    fn connect(&self, w: usize, attempt: usize) -> Result<(Conn, String), String>;
    /// Whether `e`, on a connection made by `connect` with tag `tag`, is the
    /// accepted lost-connection error.
    fn lost(&self, tag: &str, e: &DbError) -> bool;
}

struct Writers {
    stop: Arc<AtomicBool>,
    progress: Vec<Arc<AtomicU64>>,
    handles: Vec<JoinHandle<Report>>,
}

enum Step {
    Ok,
    Lost(String),
    Failed(String),
}

fn step<T>(route: &dyn Route, tag: &str, sql: &str, r: mysql::Result<T>) -> Step {
    let what = sql.split_whitespace().next().unwrap_or("");
    match r {
        Ok(_) => Step::Ok,
        Err(e) if route.lost(tag, &e) => Step::Lost(format!("{tag}: {what}: {e:?}")),
        Err(e) => Step::Failed(format!("{tag}: {sql}: {e:?}")),
    }
}

impl Writers {
    fn start(route: Arc<dyn Route>, table: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut progress = Vec::new();
        let mut handles = Vec::new();
        for w in 0..WRITERS {
            let acked_count = Arc::new(AtomicU64::new(0));
            progress.push(acked_count.clone());
            let (stop, route, table) = (stop.clone(), route.clone(), table.to_string());
            handles.push(thread::spawn(move || {
                writer(w, &*route, &table, &stop, &acked_count)
            }));
        }
        Writers {
            stop,
            progress,
            handles,
        }
    }

    fn acked(&self) -> Vec<u64> {
        self.progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every writer acknowledged `n` more commits (they are all
    /// alive and getting through).
    fn wait_progress(&self, n: u64, what: &str) {
        let base = self.acked();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.acked();
            if now.iter().zip(&base).all(|(a, b)| *a >= b + n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "writers stalled {what}: acknowledged commits per writer {base:?} -> {now:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(self) -> Vec<Report> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    }
}

fn writer(
    w: usize,
    route: &dyn Route,
    table: &str,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> Report {
    let mut report = Report::default();
    let mut attempt = 0;
    let mut seq: u64 = 0;
    let next_id = |seq: &mut u64| {
        *seq += 1;
        (w as u64 + 1) * 100_000_000 + *seq
    };
    'connect: while !stop.load(Ordering::Relaxed) {
        let (mut c, tag) = match route.connect(w, attempt) {
            Ok(c) => c,
            Err(e) => {
                report.errors.push(format!("writer {w}: log in: {e}"));
                return report;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            let single = seq % 4 < 2;
            if single {
                let id = next_id(&mut seq);
                let sql =
                    format!("INSERT INTO {table} (id, writer, kind) VALUES ({id}, {w}, 'single')");
                match step(route, &tag, &sql, c.query_drop(&sql)) {
                    Step::Ok => {
                        report.acked.push(id);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Step::Lost(e) => {
                        report.unknown.push(id);
                        report.lost.push(e);
                        attempt += 1;
                        continue 'connect;
                    }
                    Step::Failed(e) => {
                        report.unknown.push(id);
                        report.errors.push(e);
                        return report;
                    }
                }
            } else {
                let (a, b) = (next_id(&mut seq), next_id(&mut seq));
                let statements = [
                    "BEGIN".to_string(),
                    format!("INSERT INTO {table} (id, writer, kind) VALUES ({a}, {w}, 'txn')"),
                    format!("INSERT INTO {table} (id, writer, kind) VALUES ({b}, {w}, 'txn')"),
                    "COMMIT".to_string(),
                ];
                for (i, sql) in statements.iter().enumerate() {
                    let commit = i == statements.len() - 1;
                    match step(route, &tag, sql, c.query_drop(sql)) {
                        Step::Ok => {}
                        Step::Lost(e) => {
                            if commit {
                                report.unknown.extend([a, b]);
                            } else {
                                report.rolled_back.extend([a, b]);
                            }
                            report.lost.push(e);
                            attempt += 1;
                            continue 'connect;
                        }
                        Step::Failed(e) => {
                            report.unknown.extend([a, b]);
                            report.errors.push(e);
                            return report;
                        }
                    }
                }
                report.acked.extend([a, b]);
                count.fetch_add(2, Ordering::Relaxed);
            }
        }
    }
    report
}

/// Checks every node against the writers' reports and the error rules.
fn verify(nodes: &[SocketAddr], table: &str, reports: &[Report]) {
    let errors: Vec<&String> = reports.iter().flat_map(|r| &r.errors).collect();
    assert!(errors.is_empty(), "writers saw errors: {errors:#?}");
    let acked: BTreeSet<u64> = reports
        .iter()
        .flat_map(|r| r.acked.iter().copied())
        .collect();
    let unknown: BTreeSet<u64> = reports
        .iter()
        .flat_map(|r| r.unknown.iter().copied())
        .collect();
    let rolled_back: BTreeSet<u64> = reports
        .iter()
        .flat_map(|r| r.rolled_back.iter().copied())
        .collect();
    assert!(acked.len() > 100, "too little was written: {}", acked.len());
    let mut first: Option<BTreeSet<u64>> = None;
    for addr in nodes {
        let mut c = direct(*addr, "root", "111").unwrap();
        // Read what the cluster committed, not what this node applied so far.
        c.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
        let present: BTreeSet<u64> = c
            .query::<u64, _>(format!("SELECT id FROM {table}"))
            .unwrap()
            .into_iter()
            .collect();
        let missing: Vec<&u64> = acked.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "node {addr}: {} acknowledged commits are missing: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        let stray: Vec<&u64> = present
            .iter()
            .filter(|id| !acked.contains(id) && !unknown.contains(id))
            .collect();
        assert!(
            stray.is_empty(),
            "node {addr}: rows nobody committed (rolled back: {}): {:?}",
            stray.iter().filter(|id| rolled_back.contains(id)).count(),
            &stray[..stray.len().min(20)]
        );
        if first.is_none() {
            eprintln!(
                "galera: of {} statements with an unknown outcome, {} committed",
                unknown.len(),
                unknown.intersection(&present).count()
            );
        }
        match &first {
            None => first = Some(present),
            Some(f) => assert_eq!(f, &present, "node {addr} differs from node {}", nodes[0]),
        }
    }
    eprintln!(
        "galera: {} acknowledged, {} unknown, {} rolled back, {} lost connections",
        acked.len(),
        unknown.len(),
        rolled_back.len(),
        reports.iter().map(|r| r.lost.len()).sum::<usize>()
    );
}

// ------------------------------------------------------------ tests

#[test]
fn galera_cluster_is_synced_and_has_the_test_users() {
    let _lock = cluster_lock();
    let nodes = galera_nodes();
    assert_synced(&nodes);
    for addr in &nodes {
        for (user, pass) in [("root", "111"), ("app", "secret"), ("sbtest", "sbtest")] {
            let mut c = direct(*addr, user, pass)
                .unwrap_or_else(|e| panic!("{user}/{pass} at Galera node {addr}: {e}"));
            assert_eq!(backend_port(&mut c), addr.port());
        }
    }
    // A write on one node is on the others.
    let table = fresh_table(&nodes);
    let mut c = direct(nodes[1], "app", "secret").unwrap();
    c.query_drop(format!("INSERT INTO {table} VALUES (1, 0, 'probe')"))
        .unwrap();
    for addr in &nodes {
        let mut c = direct(*addr, "app", "secret").unwrap();
        c.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
        let n: Option<u64> = c
            .query_first(format!("SELECT COUNT(*) FROM {table}"))
            .unwrap();
        assert_eq!(n, Some(1), "node {addr}");
    }
}

/// Writers straight to the nodes (writer w to node w mod 3); when node 3 is
/// killed its writers lose their connection and go to another node.
struct Direct {
    nodes: Vec<SocketAddr>,
    killed: Mutex<Option<SocketAddr>>,
}

impl Route for Direct {
    fn connect(&self, w: usize, attempt: usize) -> Result<(Conn, String), String> {
        let killed = *self.killed.lock().unwrap();
        let mut i = w + attempt;
        while Some(self.nodes[i % 3]) == killed {
            i += 1;
        }
        let addr = self.nodes[i % 3];
        direct(addr, "app", "secret")
            .map(|c| (c, addr.to_string()))
            .map_err(|e| format!("{addr}: {e}"))
    }

    fn lost(&self, tag: &str, _e: &DbError) -> bool {
        // Any error on a connection to the killed node: the client's view of
        // a crashed server (reset, EOF, 2013).
        self.killed
            .lock()
            .unwrap()
            .is_some_and(|k| k.to_string() == tag)
    }
}

#[test]
fn galera_writes_survive_a_node_crash_without_ferry() {
    let _lock = cluster_lock();
    let nodes = galera_nodes();
    servers::assert_galera_script_matches(&nodes);
    assert_synced(&nodes);
    let table = fresh_table(&nodes);
    let route = Arc::new(Direct {
        nodes: nodes.clone(),
        killed: Mutex::new(None),
    });
    let writers = Writers::start(route.clone(), &table);
    writers.wait_progress(10, "at the start");
    let _restart = GaleraRestartOnDrop {
        node: 3,
        addr: nodes[2],
    };
    *route.killed.lock().unwrap() = Some(nodes[2]);
    galera(&["kill", "3"]);
    writers.wait_progress(10, "after node 3 was killed");
    let started = Instant::now();
    galera(&["restart", "3"]);
    eprintln!("galera: node 3 rejoined in {:?}", started.elapsed());
    writers.wait_progress(10, "after node 3 rejoined");
    let reports = writers.finish();
    assert_synced(&nodes);
    verify(&nodes, &table, &reports);
}

/// Writers through ferry; the accepted error is ERR 2013 naming g3.
struct ThroughFerry {
    port: u16,
}

impl Route for ThroughFerry {
    fn connect(&self, _w: usize, _attempt: usize) -> Result<(Conn, String), String> {
        Conn::new(
            opts(self.port, "app", "secret")
                .read_timeout(Some(Duration::from_secs(60)))
                .write_timeout(Some(Duration::from_secs(60))),
        )
        .map(|c| (c, "ferry".to_string()))
        .map_err(|e| format!("through ferry: {e:?}"))
    }

    fn lost(&self, _tag: &str, e: &DbError) -> bool {
        matches!(e, DbError::MySqlError(e) if e.code == 2013 && e.message.contains("g3"))
    }
}

#[test]
fn galera_writes_through_ferry_survive_drain_resume_and_a_node_crash() {
    let _lock = cluster_lock();
    let nodes = galera_nodes();
    servers::assert_galera_script_matches(&nodes);
    assert_synced(&nodes);
    let table = fresh_table(&nodes);
    let mut cfg = ConfigBuilder::new()
        .backend(Backend::new("g1", nodes[0]))
        .backend(Backend::new("g2", nodes[1]))
        .backend(Backend::new("g3", nodes[2]))
        .field("health: (interval_ms: 300, timeout_ms: 300, fall: 2, rise: 2)");
    cfg.users = vec![
        r#"(user: "root", password: "111")"#.into(),
        r#"(user: "app", password: "secret")"#.into(),
    ];
    let ferry = cfg.start();
    let admin = Admin::of(&ferry);
    let writers = Writers::start(Arc::new(ThroughFerry { port: ferry.port() }), &table);
    writers.wait_progress(10, "at the start");
    assert_eq!(admin.sessions().len(), WRITERS);

    // Drain node 2: its sessions move to g1 and g3 between statements.
    admin.drain("g2");
    admin.wait_for("g2 to be drained", Duration::from_secs(30), |a| {
        let b = a.backend("g2");
        (b["state"] == "drained", b)
    });
    writers.wait_progress(10, "after g2 was drained");
    admin.resume("g2");
    writers.wait_progress(10, "after g2 was resumed");

    // Kill node 3: idle sessions fail over, in-flight statements get 2013.
    let _restart = GaleraRestartOnDrop {
        node: 3,
        addr: nodes[2],
    };
    galera(&["kill", "3"]);
    admin.wait_for("g3 to be down", Duration::from_secs(30), |a| {
        let b = a.backend("g3");
        (b["health"] == "down", b)
    });
    admin.wait_for("no session on g3", Duration::from_secs(30), |a| {
        let on_g3: Vec<_> = a
            .sessions()
            .into_iter()
            .filter(|s| s["backend"] == "g3")
            .collect();
        (on_g3.is_empty(), on_g3)
    });
    writers.wait_progress(10, "after node 3 was killed");

    // Rejoin node 3. While it receives its state transfer it answers the
    // MySQL handshake but refuses queries, so ferry must not route sessions
    // there yet: keep g3 drained until the node is Synced.
    admin.drain("g3");
    galera(&["restart", "3"]);
    admin.resume("g3");
    admin.wait_for("g3 to be up", Duration::from_secs(30), |a| {
        let b = a.backend("g3");
        (b["health"] == "up", b)
    });
    writers.wait_progress(10, "after node 3 rejoined");
    let reports = writers.finish();
    admin.wait_for(
        "the writers' sessions to end",
        Duration::from_secs(10),
        |a| {
            let s = a.sessions();
            (s.is_empty(), s)
        },
    );
    assert_synced(&nodes);
    verify(&nodes, &table, &reports);
    let lost: Vec<&String> = reports.iter().flat_map(|r| &r.lost).collect();
    eprintln!("galera through ferry: lost connections (ERR 2013 naming g3): {lost:#?}");
}
