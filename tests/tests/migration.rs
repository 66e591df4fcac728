//! Session migration end to end: real clients → ferry → three real MariaDB
//! servers (`FERRY_TEST_BACKENDS`, the same schema on each).
//!
//! A session is moved by the admin API, by draining its backend, by the
//! rebalancer and by its backend dying, and afterwards must see exactly the
//! state it had: system variables, character sets, current database, user
//! variables with their types and character sets, text `PREPARE`s and binary
//! prepared statements. Clients: the `mysql` crate, PyMySQL,
//! mysql-connector-python (`prepared=True`) and MariaDB Connector/J
//! (`useServerPrepStmts=true`).
//!
//! Tests wait for what the admin API reports, with a deadline that fails
//! the test; none sleeps a fixed time to let something happen. The test that
//! kills a backend holds [`servers::exclusive`], the others [`servers::shared`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::Conn;
use ferry_tests::servers;
use ferry_tests::state::{
    assert_full_state, assert_same_state, full_state, handshake_id, java_client, location,
    prepare_schema, python_client, state_diff, Line, RustClient, StateClient, DB,
};
use ferry_tests::*;
use serde_json::Value;

/// How long a requested move may take to complete.
const MOVE_TIMEOUT: Duration = Duration::from_secs(20);

fn three() -> [SocketAddr; 3] {
    let b = backends_n(3);
    [b[0], b[1], b[2]]
}

/// Users root/111 and app/secret, neither bound to a tenant (app may log in
/// under any tenant).
fn config() -> ConfigBuilder {
    let mut cfg = ConfigBuilder::new();
    cfg.users = vec![
        r#"(user: "root", password: "111")"#.into(),
        r#"(user: "app", password: "secret", any_tenant: true)"#.into(),
    ];
    cfg
}

/// cn1, cn2, cn3 on the three servers, no labels.
fn pool_config() -> ConfigBuilder {
    let b = three();
    config()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]))
        .backend(Backend::new("cn3", b[2]))
}

fn login(ferry: &Ferry, user: &str, pass: &str) -> Conn {
    ferry
        .connect(user, pass)
        .unwrap_or_else(|e| panic!("log in as {user} through ferry: {e}"))
}

fn port_of(c: &mut Conn) -> u16 {
    backend_port(c)
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The session's backend id.
fn backend_of(s: &Value) -> String {
    str_of(&s["backend"]).to_string()
}

/// Checks `last_migration` against the contract.
fn assert_last_migration(s: &Value, trigger: &str, from: &str, to: Option<&str>) {
    let m = &s["last_migration"];
    assert_eq!(m["trigger"], trigger, "last_migration: {s:#}");
    assert_eq!(m["from"], from, "last_migration: {s:#}");
    if let Some(to) = to {
        assert_eq!(m["to"], to, "last_migration: {s:#}");
    }
    assert_eq!(m["outcome"], "ok", "last_migration: {s:#}");
    assert!(
        m["reason"].is_null() || m["reason"].is_string(),
        "last_migration: {s:#}"
    );
    assert!(m["duration_ms"].is_number(), "last_migration: {s:#}");
}

// ------------------------------------------------------- state across moves

#[derive(Clone, Copy, Debug)]
enum Client {
    MysqlCrate,
    PyMysql,
    ConnectorPython,
    ConnectorJ,
}

/// Start `kind` against 127.0.0.1:`port` with the full state set up.
fn start_client(kind: Client, port: u16, user: &str, pass: &str) -> Box<dyn StateClient> {
    let tag = format!("{kind:?}-{port}");
    match kind {
        Client::MysqlCrate => {
            let spec = full_state(&["SET NAMES latin1 COLLATE latin1_german2_ci"], true, &tag);
            Box::new(RustClient::start(opts(port, user, pass), spec))
        }
        Client::PyMysql => {
            let spec = full_state(
                &[
                    "SET NAMES utf8mb3 COLLATE utf8mb3_unicode_ci",
                    "SET character_set_client = latin1",
                ],
                false,
                &tag,
            );
            Box::new(python_client("pymysql", &spec.write(), port, user, pass))
        }
        Client::ConnectorPython => {
            let spec = full_state(
                &["SET NAMES utf8mb4 COLLATE utf8mb4_unicode_520_ci"],
                true,
                &tag,
            );
            Box::new(python_client("connector", &spec.write(), port, user, pass))
        }
        Client::ConnectorJ => {
            let spec = full_state(
                &[
                    "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
                    "SET character_set_results = latin1",
                ],
                true,
                &tag,
            );
            Box::new(java_client(&spec.write(), port, user, pass))
        }
    }
}

/// The client programs and the state snapshot, directly against MariaDB (no
/// ferry): the snapshot shows the state that was set, and two snapshots in a
/// row agree. This is the reference the migration tests compare against.
#[test]
fn state_clients_work_directly_against_mariadb() {
    let _servers = servers::shared();
    let b = three();
    prepare_schema(&b);
    for kind in [
        Client::MysqlCrate,
        Client::PyMysql,
        Client::ConnectorPython,
        Client::ConnectorJ,
    ] {
        let mut c = start_client(kind, b[0].port(), "app", "secret");
        let first = c.snapshot();
        assert_full_state(&first);
        assert_eq!(location(&first).0, b[0].port(), "{kind:?}");
        assert!(handshake_id(&first) > 0, "{kind:?}: {first}");
        let second = c.snapshot();
        assert_same_state(&first, &second, &format!("{kind:?} twice on one server"));
        assert_eq!(location(&first), location(&second));
        if matches!(
            kind,
            Client::MysqlCrate | Client::ConnectorPython | Client::ConnectorJ
        ) {
            assert!(
                first["results"]["bin_types"].is_array(),
                "{kind:?} ran the binary prepared statements: {first}"
            );
        }
    }
}

/// The same, through ferry without moving: what every move test starts from.
#[test]
fn state_clients_work_through_ferry_without_a_move() {
    let _servers = servers::shared();
    let b = three();
    prepare_schema(&b);
    let ferry = pool_config().start();
    let admin = Admin::of(&ferry);
    let mut failures = Vec::new();
    for kind in [
        Client::MysqlCrate,
        Client::PyMysql,
        Client::ConnectorPython,
        Client::ConnectorJ,
    ] {
        let result = std::panic::catch_unwind(|| {
            let mut c = start_client(kind, ferry.port(), "app", "secret");
            let first = c.snapshot();
            assert_full_state(&first);
            let s = admin.session(handshake_id(&first));
            assert_eq!(admin.backend_id_of_port(location(&first).0), backend_of(&s));
            let second = c.snapshot();
            assert_same_state(&first, &second, &format!("{kind:?} twice through ferry"));
            assert_eq!(location(&first), location(&second));
        });
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{kind:?}: {msg}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The snapshot is sensitive: the same client on another, fresh connection
/// with one setting left out disagrees with it.
#[test]
fn state_snapshot_notices_a_missing_setting() {
    let _servers = servers::shared();
    let b = three();
    prepare_schema(&b);
    let full = full_state(&["SET NAMES latin1"], true, "sensitivity");
    let mut a = RustClient::start(opts(b[0].port(), "app", "secret"), full.clone());
    let mut lacking = full.clone();
    lacking
        .lines
        .retain(|l| !matches!(l, Line::Sql(s) if s.starts_with("SET time_zone")));
    assert_eq!(lacking.lines.len() + 1, full.lines.len());
    let mut c = RustClient::start(opts(b[1].port(), "app", "secret"), lacking);
    let (x, y) = (a.snapshot(), c.snapshot());
    let diff = state_diff(&x, &y).join("\n");
    for name in ["vars", "effects", "txt_calc", "bin_row"] {
        assert!(
            diff.contains(&format!("  {name}:")),
            "{name} must differ:\n{diff}"
        );
    }
    assert_eq!(state_diff(&x, &x), Vec::<String>::new());
}

/// Move one client's session with the admin API (to a named backend, then
/// to any), then by draining its backend; compare the state each time.
fn state_survives_moves(kind: Client) {
    let _servers = servers::shared();
    let b = three();
    prepare_schema(&b);
    let ferry = pool_config().start();
    let admin = Admin::of(&ferry);
    let mut client = start_client(kind, ferry.port(), "app", "secret");
    let name = client.name();
    let before = client.snapshot();
    assert_full_state(&before);
    let id = handshake_id(&before);
    let (port0, conn0) = location(&before);
    let s = admin.session(id);
    let from = backend_of(&s);
    assert_eq!(admin.backend_id_of_port(port0), from, "{s:#}");
    assert_eq!(
        s["backend_connection_id"].as_u64(),
        Some(conn0),
        "backend_connection_id is CONNECTION_ID(): {s:#}"
    );
    assert_eq!(s["migrations"].as_u64(), Some(0), "{s:#}");
    assert!(s["pending_migration"].is_null(), "{s:#}");
    assert!(s["last_migration"].is_null(), "{s:#}");

    // 1. The admin API, to a named backend.
    let to = ["cn1", "cn2", "cn3"]
        .into_iter()
        .find(|c| *c != from)
        .unwrap()
        .to_string();
    admin.request_migration(id, Some(&to));
    let s = admin.wait_migrated(id, 1, MOVE_TIMEOUT);
    assert_eq!(backend_of(&s), to, "{s:#}");
    assert_last_migration(&s, "admin", &from, Some(&to));
    let after = client.snapshot();
    let (port1, conn1) = location(&after);
    assert_eq!(
        admin.backend_id_of_port(port1),
        to,
        "{name}: @@port after the move"
    );
    assert_ne!(port1, port0, "{name}: @@port did not change");
    assert_eq!(
        admin.session(id)["backend_connection_id"].as_u64(),
        Some(conn1),
        "{name}"
    );
    assert_same_state(&before, &after, &format!("{name}, moved by the admin API"));

    // 2. Draining its backend moves it again.
    admin.drain(&to);
    let s = admin.wait_migrated(id, 2, MOVE_TIMEOUT);
    assert_ne!(backend_of(&s), to, "{s:#}");
    assert_last_migration(&s, "drain", &to, None);
    let after = client.snapshot();
    let (port2, _) = location(&after);
    assert_ne!(port2, port1, "{name}: @@port did not change on drain");
    assert_same_state(&before, &after, &format!("{name}, moved by draining {to}"));
    admin.wait_for(&format!("{to} to be drained"), MOVE_TIMEOUT, |a| {
        let b = a.backend(&to);
        (b["state"] == "drained", b)
    });

    // 3. The admin API without a target: ferry picks one (not the drained one).
    let here = backend_of(&s);
    admin.request_migration(id, None);
    let s = admin.wait_migrated(id, 3, MOVE_TIMEOUT);
    assert_ne!(backend_of(&s), here, "{s:#}");
    assert_ne!(backend_of(&s), to, "moved to a drained backend: {s:#}");
    let after = client.snapshot();
    assert_same_state(
        &before,
        &after,
        &format!("{name}, moved by the admin API (no target)"),
    );
}

#[test]
fn mysql_crate_session_state_survives_moves() {
    state_survives_moves(Client::MysqlCrate);
}

#[test]
fn pymysql_session_state_survives_moves() {
    state_survives_moves(Client::PyMysql);
}

#[test]
fn connector_python_prepared_session_state_survives_moves() {
    state_survives_moves(Client::ConnectorPython);
}

#[test]
fn connector_j_server_prepared_session_state_survives_moves() {
    state_survives_moves(Client::ConnectorJ);
}

// ------------------------------------------------------------- the API

#[test]
fn migrate_api_validates_and_counts_by_the_contract() {
    let _servers = servers::shared();
    let b = three();
    // cn1: the shared pool; cn2 and cn3: tenant acc1's.
    let ferry = config()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]).label("account", "acc1"))
        .backend(Backend::new("cn3", b[2]).label("account", "acc1"))
        .start();
    let admin = Admin::of(&ferry);
    let mut plain = login(&ferry, "root", "111");
    let mut tenant = login(&ferry, "acc1:app", "secret");
    let plain_id = u64::from(plain.connection_id());
    let tenant_id = u64::from(tenant.connection_id());
    assert_eq!(port_of(&mut plain), b[0].port());
    let tenant_from = admin.backend_id_of_port(port_of(&mut tenant));
    let tenant_to = if tenant_from == "cn2" { "cn3" } else { "cn2" };

    let (status, body) = admin.migrate(999_999, None);
    assert_eq!(status, 404, "unknown session: {body}");
    let (status, body) = admin.migrate(plain_id, Some("nope"));
    assert_eq!(status, 404, "unknown backend: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("nope")),
        "{body}"
    );
    let (status, body) = admin.migrate(plain_id, Some("cn1"));
    assert_eq!(status, 409, "already there: {body}");
    // A session is never moved to another tenant's backend.
    let (status, body) = admin.migrate(plain_id, Some("cn2"));
    assert_eq!(status, 409, "tenant-less session to acc1's backend: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "409 with a reason: {body}"
    );
    assert_eq!(port_of(&mut plain), b[0].port());

    let started = admin.metric_sum("ferry_migrations_started_total", &["trigger=\"admin\""]);
    admin.request_migration(tenant_id, Some(tenant_to));
    let s = admin.wait_migrated(tenant_id, 1, MOVE_TIMEOUT);
    assert_last_migration(&s, "admin", &tenant_from, Some(tenant_to));
    assert_eq!(
        admin.backend_id_of_port(port_of(&mut tenant)),
        tenant_to,
        "@@port after the move"
    );
    admin.wait_for("the migration metrics", Duration::from_secs(5), |a| {
        let text = a.metrics();
        let ok = ferry_tests::admin::metric_sum_in(
            &text,
            "ferry_migrations_started_total",
            &["trigger=\"admin\""],
        ) == started + 1.0
            && ferry_tests::admin::metric_sum_in(
                &text,
                "ferry_migrations_succeeded_total",
                &["trigger=\"admin\""],
            ) >= 1.0;
        (ok, text)
    });
    assert_eq!(
        admin.metric_sum("ferry_migrations_failed_total", &["trigger=\"admin\""]),
        0.0
    );
    // Backends report their drain.
    let backends = admin.backends();
    for (id, b) in &backends {
        assert!(
            b.get("drain").is_some_and(Value::is_null),
            "{id}: a working backend has \"drain\": null: {b}"
        );
    }
    admin.drain("cn1");
    admin.wait_for("cn1 to report its drain", Duration::from_secs(5), |a| {
        let cn1 = a.backend("cn1");
        (cn1["drain"]["since_ms"].is_number(), cn1)
    });
}

// ------------------------------------------------------- transactions

#[test]
fn a_session_in_a_transaction_moves_only_after_commit() {
    let _servers = servers::shared();
    let b = three();
    prepare_schema(&b);
    let ferry = pool_config().start();
    let admin = Admin::of(&ferry);
    let mut c = login(&ferry, "app", "secret");
    let id = u64::from(c.connection_id());
    c.query_drop("SET @keep = 'kept'").unwrap();
    let port0 = port_of(&mut c);
    let cid0: u64 = c.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();
    let from = admin.backend_id_of_port(port0);
    let tag = format!("txn-{}-{}", ferry.port(), id);
    c.query_drop("BEGIN").unwrap();
    c.query_drop(format!("INSERT INTO {DB}.log (client) VALUES ('{tag}')"))
        .unwrap();
    admin.request_migration(id, None);
    let s = admin.session(id);
    assert_eq!(s["in_txn"], Value::Bool(true), "{s:#}");
    assert_eq!(s["pending_migration"], "admin", "{s:#}");
    // Inside the transaction the session stays where it is, however often it
    // reaches the end of a statement.
    for i in 0..30 {
        let (port, cid): (u16, u64) = c
            .query_first("SELECT @@port, CONNECTION_ID()")
            .unwrap()
            .unwrap();
        assert_eq!(
            (port, cid),
            (port0, cid0),
            "statement {i} inside the transaction ran elsewhere"
        );
        c.query_drop(format!(
            "SELECT COUNT(*) FROM {DB}.log WHERE client = '{tag}'"
        ))
        .unwrap();
    }
    let s = admin.session(id);
    assert_eq!(s["migrations"].as_u64(), Some(0), "{s:#}");
    assert_eq!(s["pending_migration"], "admin", "{s:#}");
    c.query_drop("COMMIT").unwrap();
    let s = admin.wait_migrated(id, 1, MOVE_TIMEOUT);
    assert_last_migration(&s, "admin", &from, None);
    let port1 = port_of(&mut c);
    assert_ne!(port1, port0);
    let kept: Option<String> = c.query_first("SELECT @keep").unwrap();
    assert_eq!(kept.as_deref(), Some("kept"));
    // The transaction committed where it ran.
    let mut direct = connect_backend(b.into_iter().find(|a| a.port() == port0).unwrap());
    let n: Option<u64> = direct
        .query_first(format!(
            "SELECT COUNT(*) FROM {DB}.log WHERE client = '{tag}'"
        ))
        .unwrap();
    assert_eq!(n, Some(1));
}

#[test]
fn a_temporary_table_blocks_the_move_and_the_api_says_why() {
    let _servers = servers::shared();
    let b = three();
    prepare_schema(&b);
    let ferry = pool_config().start();
    let admin = Admin::of(&ferry);
    // Two sessions on one backend: open sessions until two share one.
    let mut by_port: BTreeMap<u16, Vec<Conn>> = BTreeMap::new();
    let (port, mut pair) = loop {
        let mut c = login(&ferry, "app", "secret");
        let p = port_of(&mut c);
        let list = by_port.entry(p).or_default();
        list.push(c);
        if list.len() == 2 {
            break (p, by_port.remove(&p).unwrap());
        }
        assert!(by_port.values().map(Vec::len).sum::<usize>() < 10);
    };
    let backend = admin.backend_id_of_port(port);
    let mut free = pair.pop().unwrap();
    let mut blocked = pair.pop().unwrap();
    let free_id = u64::from(free.connection_id());
    let blocked_id = u64::from(blocked.connection_id());
    blocked
        .query_drop(format!("CREATE TEMPORARY TABLE {DB}.tmp_block (a INT)"))
        .unwrap();
    blocked
        .query_drop(format!("INSERT INTO {DB}.tmp_block VALUES (7)"))
        .unwrap();
    let s = admin.session(blocked_id);
    assert_eq!(s["safe"], Value::Bool(false), "{s:#}");
    let reasons = s["blocked_by"].to_string();
    assert!(
        reasons.contains("temporary table") && reasons.contains("tmp_block"),
        "blocked_by says why: {s:#}"
    );

    // Asking for a move is accepted or refused, but never moves it.
    let (status, body) = admin.migrate(blocked_id, None);
    assert!(
        status == 202 || status == 409,
        "migrate a blocked session: 202 (pending) or 409, got {status} {body}"
    );

    // Draining moves the free session and leaves the blocked one.
    admin.drain(&backend);
    let s = admin.wait_migrated(free_id, 1, MOVE_TIMEOUT);
    assert_last_migration(&s, "drain", &backend, None);
    assert_ne!(port_of(&mut free), port);
    let s = admin.session(blocked_id);
    assert_eq!(backend_of(&s), backend, "{s:#}");
    assert_eq!(s["migrations"].as_u64(), Some(0), "{s:#}");
    assert!(s["blocked_by"].to_string().contains("tmp_block"), "{s:#}");
    assert_eq!(port_of(&mut blocked), port);
    let seven: Option<i32> = blocked
        .query_first(format!("SELECT a FROM {DB}.tmp_block"))
        .unwrap();
    assert_eq!(seven, Some(7), "the temporary table is still there");
    let b_state = admin.backend(&backend);
    assert_eq!(b_state["state"], "draining", "{b_state}");
    assert!(b_state["drain"]["since_ms"].is_number(), "{b_state}");
    if let Some(stuck) = b_state["drain"]["stuck"].as_str() {
        assert!(!stuck.is_empty(), "{b_state}");
    }

    // Without the temporary table it moves, and the backend is drained.
    blocked
        .query_drop(format!("DROP TEMPORARY TABLE {DB}.tmp_block"))
        .unwrap();
    let s = admin.wait_migrated(blocked_id, 1, MOVE_TIMEOUT);
    assert_eq!(s["blocked_by"], Value::Array(vec![]), "{s:#}");
    assert_ne!(port_of(&mut blocked), port);
    admin.wait_for(&format!("{backend} to be drained"), MOVE_TIMEOUT, |a| {
        let b = a.backend(&backend);
        (b["state"] == "drained", b)
    });
}

/// `PREPARE s FROM @var`: the text is the variable's value at PREPARE time,
/// which may have changed since. Either the statement moves with the text it
/// was prepared from, or the session says why it cannot move (and moves once
/// the statement is gone). It is never moved with the wrong text or lost.
#[test]
fn a_statement_prepared_from_a_variable_moves_intact_or_blocks_with_a_reason() {
    let _servers = servers::shared();
    let ferry = pool_config().start();
    let admin = Admin::of(&ferry);
    let mut c = login(&ferry, "app", "secret");
    let id = u64::from(c.connection_id());
    c.query_drop("SET @q = 'SELECT 42'").unwrap();
    c.query_drop("PREPARE from_var FROM @q").unwrap();
    c.query_drop("SET @q = 'SELECT 43'").unwrap();
    let port0 = port_of(&mut c);
    admin.request_migration(id, None);
    let s = admin.wait_for(
        "the session to move or to say why it cannot",
        MOVE_TIMEOUT,
        |a| {
            let s = a.session(id);
            let moved = s["migrations"].as_u64() == Some(1);
            let blocked = s["blocked_by"].to_string().contains("from_var");
            (moved || blocked, s)
        },
    );
    if s["migrations"].as_u64() == Some(1) {
        assert_ne!(port_of(&mut c), port0);
        let v: Option<i64> = c.query_first("EXECUTE from_var").unwrap();
        assert_eq!(
            v,
            Some(42),
            "the statement moved with the text it was prepared from"
        );
    } else {
        assert_eq!(port_of(&mut c), port0, "blocked, yet moved: {s:#}");
        let v: Option<i64> = c.query_first("EXECUTE from_var").unwrap();
        assert_eq!(v, Some(42));
        c.query_drop("DEALLOCATE PREPARE from_var").unwrap();
        let s = admin.wait_migrated(id, 1, MOVE_TIMEOUT);
        assert_last_migration(&s, "admin", &admin.backend_id_of_port(port0), None);
        assert_ne!(port_of(&mut c), port0);
    }
    let q: Option<String> = c.query_first("SELECT @q").unwrap();
    assert_eq!(q.as_deref(), Some("SELECT 43"));
}

// ------------------------------------------------------------- KILL

/// Waits until `cid` runs a statement starting with `prefix` on `server`.
fn wait_running(server: SocketAddr, cid: u64, prefix: &str) {
    let mut direct = connect_backend(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: Option<Option<String>> = direct
            .exec_first(
                "SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = ?",
                (cid,),
            )
            .unwrap();
        if info.flatten().is_some_and(|i| i.starts_with(prefix)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "thread {cid} on {server} never started `{prefix}`"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_query_stops_a_sleep_on_a_session_that_has_moved() {
    let _servers = servers::shared();
    let b = three();
    let ferry = pool_config().start();
    let admin = Admin::of(&ferry);
    let mut victim = login(&ferry, "app", "secret");
    let id = u64::from(victim.connection_id());
    let port0 = port_of(&mut victim);
    admin.request_migration(id, None);
    admin.wait_migrated(id, 1, MOVE_TIMEOUT);
    let port1 = port_of(&mut victim);
    assert_ne!(port1, port0);
    let server = *b.iter().find(|a| a.port() == port1).unwrap();
    let mut killer = login(&ferry, "app", "secret");

    // By CONNECTION_ID() as the moved session sees it, then by ferry's id.
    for how in ["CONNECTION_ID()", "handshake id"] {
        let cid: u64 = victim
            .query_first("SELECT CONNECTION_ID()")
            .unwrap()
            .unwrap();
        let target = if how == "handshake id" { id } else { cid };
        let sleeper = thread::spawn(move || {
            let started = Instant::now();
            let r = victim.query_first::<i64, _>("SELECT SLEEP(30)");
            (victim, r, started.elapsed())
        });
        wait_running(server, cid, "SELECT SLEEP(30)");
        killer
            .query_drop(format!("KILL QUERY {target}"))
            .unwrap_or_else(|e| panic!("KILL QUERY {target} ({how}): {e}"));
        let (v, r, took) = sleeper.join().unwrap();
        victim = v;
        assert!(
            took < Duration::from_secs(15),
            "KILL QUERY ({how}) took {took:?}"
        );
        match r {
            Err(_) => {
                let e = server_error(r);
                assert_eq!(e.code, 1317, "KILL QUERY ({how}): {e:?}");
            }
            // MariaDB may also end an interrupted SLEEP with 1.
            Ok(v) => assert_eq!(v, Some(1), "SLEEP ({how}) was not interrupted"),
        }
        // The session itself lives on, still on its new backend.
        assert_eq!(port_of(&mut victim), port1, "after KILL QUERY ({how})");
    }
}

// ------------------------------------------------------------- rebalance

#[test]
fn thirty_sessions_on_one_backend_spread_ten_ten_ten_by_rebalancing() {
    let _servers = servers::shared();
    let b = three();
    let interval = Duration::from_millis(1000);
    let ferry = config()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]).draining())
        .backend(Backend::new("cn3", b[2]).draining())
        .field(&format!(
            "rebalance: (interval_ms: {}, tolerance: 0.0, moves_per_second: 50, cooldown_ms: 30000)",
            interval.as_millis()
        ))
        .start();
    let admin = Admin::of(&ferry);
    let conns: Vec<Conn> = (0..30).map(|_| login(&ferry, "app", "secret")).collect();
    assert_eq!(
        admin.connections(),
        BTreeMap::from([("cn1".into(), 30), ("cn2".into(), 0), ("cn3".into(), 0)])
    );
    // Every client keeps working while sessions move under it.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let rounds: Vec<Arc<AtomicU64>> = (0..30).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let stop = stop.clone();
            let errors = errors.clone();
            let round = rounds[i].clone();
            thread::spawn(move || {
                c.query_drop(format!("SET @me = {i}")).unwrap();
                let mut port = 0;
                while !stop.load(Ordering::Relaxed) {
                    match c.query_first::<(u16, i64), _>("SELECT @@port, @me") {
                        Ok(Some((p, me))) if me == i as i64 => port = p,
                        other => errors
                            .lock()
                            .unwrap()
                            .push(format!("client {i}: {other:?}")),
                    }
                    round.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(25));
                }
                port
            })
        })
        .collect();
    admin.resume("cn2");
    admin.resume("cn3");
    let resumed = Instant::now();
    let want = BTreeMap::from([("cn1".into(), 10), ("cn2".into(), 10), ("cn3".into(), 10)]);
    // Completed moves: every session's backend, none pending.
    admin.wait_for("10/10/10", Duration::from_secs(20), |a| {
        let sessions = a.sessions();
        let mut on: BTreeMap<String, u64> = BTreeMap::new();
        for s in &sessions {
            *on.entry(backend_of(s)).or_default() += 1;
        }
        let settled = sessions.iter().all(|s| s["pending_migration"].is_null());
        (settled && on == want, (on, a.connections()))
    });
    let took = resumed.elapsed();
    assert_eq!(admin.connections(), want, "the balancer's counts");
    let sessions = admin.sessions();
    // One more query from every client, then stop.
    let seen: Vec<u64> = rounds.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rounds
        .iter()
        .zip(&seen)
        .any(|(r, s)| r.load(Ordering::Relaxed) <= *s)
    {
        assert!(Instant::now() < deadline, "some client stopped answering");
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let ports: Vec<u16> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "client errors while rebalancing: {errors:#?}"
    );
    let mut spread: BTreeMap<u16, usize> = BTreeMap::new();
    for p in ports {
        *spread.entry(p).or_default() += 1;
    }
    assert_eq!(
        spread,
        b.iter().map(|a| (a.port(), 10)).collect::<BTreeMap<_, _>>(),
        "where the clients' last SELECT @@port ran"
    );
    // Two intervals, plus a second for polling and this 2-core machine.
    assert!(
        took <= 2 * interval + Duration::from_secs(1),
        "10/10/10 took {took:?}, more than two rebalance intervals"
    );
    let moved: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["migrations"].as_u64() > Some(0))
        .collect();
    assert_eq!(moved.len(), 20, "exactly the excess moved: {sessions:#?}");
    for s in moved {
        assert_last_migration(s, "rebalance", "cn1", None);
    }
    assert_eq!(
        admin.metric("ferry_migrations_succeeded_total{trigger=\"rebalance\"}"),
        Some(20.0)
    );
}

// ------------------------------------------------------------- failover

#[test]
fn a_killed_backend_moves_idle_sessions_and_fails_in_flight_ones_with_2013() {
    let _servers = servers::exclusive();
    let b = three();
    prepare_schema(&b);
    let ferry = pool_config()
        .field("health: (interval_ms: 300, timeout_ms: 300, fall: 2, rise: 1)")
        .start();
    let admin = Admin::of(&ferry);
    // 15 sessions: five on each backend.
    let mut on: BTreeMap<u16, Vec<Conn>> = BTreeMap::new();
    for _ in 0..15 {
        let mut c = login(&ferry, "app", "secret");
        on.entry(port_of(&mut c)).or_default().push(c);
    }
    assert!(on.values().all(|v| v.len() == 5), "5/5/5: {:?}", on.keys());
    let victim = b[0];
    let mut doomed = on.remove(&victim.port()).unwrap();
    let busy: Vec<Conn> = doomed.drain(..2).collect();
    let mut with_var = doomed.pop().unwrap();
    let mut idle = doomed;
    // Idle sessions with state ferry follows as it changes (session
    // trackers): it survives the server.
    let mut idle_ids = Vec::new();
    for c in idle.iter_mut() {
        c.query_drop("SET time_zone = '+01:00', sql_mode = 'ANSI_QUOTES'")
            .unwrap();
        c.query_drop("SET NAMES latin1").unwrap();
        c.query_drop(format!("USE {DB}")).unwrap();
        idle_ids.push(u64::from(c.connection_id()));
    }
    // A user variable has to be read from the server before a move, and
    // that server is gone: the session moves with it intact, or it is
    // closed with 2013 at its next statement; it never loses it silently.
    with_var.query_drop("SET @v = 'keep'").unwrap();
    let with_var_id = u64::from(with_var.connection_id());
    let sleepers: Vec<_> = busy
        .into_iter()
        .map(|mut c| {
            let cid: u64 = c.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();
            let h = thread::spawn(move || {
                let r = c.query_first::<i64, _>("SELECT SLEEP(20)");
                let next = c.query_drop("SELECT 1");
                (r, next)
            });
            (cid, h)
        })
        .collect();
    for (cid, _) in &sleepers {
        wait_running(victim, *cid, "SELECT SLEEP(20)");
    }

    let _restart = servers::RestartOnDrop(victim);
    servers::kill_mariadb(victim);

    // In flight: the lost-connection error naming the backend, then closed.
    for (cid, h) in sleepers {
        let (r, next) = h.join().unwrap();
        let e = match r {
            Err(ferry_tests::mysql::Error::MySqlError(e)) => e,
            other => panic!(
                "thread {cid}: a statement in flight on a killed backend must get ERR 2013 from ferry, got {other:?}"
            ),
        };
        assert_eq!(e.code, 2013, "{e:?}");
        assert!(
            e.message.contains("cn1"),
            "the error names the backend: {e:?}"
        );
        assert!(next.is_err(), "the connection closes after ERR 2013");
    }
    // Idle: moved, with their state, without an error.
    for (c, id) in idle.iter_mut().zip(&idle_ids) {
        let s = admin.wait_for(
            &format!("idle session {id} to leave the dead cn1"),
            MOVE_TIMEOUT,
            |a| {
                let s = a.session(*id);
                (
                    s["backend"] != "cn1" && s["migrations"].as_u64() == Some(1),
                    s,
                )
            },
        );
        assert_last_migration(&s, "failover", "cn1", None);
        let (port, tz, mode, db, cs): (u16, String, String, String, String) = c
            .query_first(
                "SELECT @@port, @@time_zone, @@sql_mode, DATABASE(), @@character_set_client",
            )
            .unwrap_or_else(|e| panic!("idle session {id} after its backend died: {e}"))
            .unwrap();
        assert_ne!(port, victim.port());
        assert_eq!(
            (tz.as_str(), mode.as_str(), db.as_str(), cs.as_str()),
            ("+01:00", "ANSI_QUOTES", DB, "latin1")
        );
    }
    // ferry knows by now that cn1 is gone (the others moved): ask.
    let s = admin.try_session(with_var_id);
    match with_var.query_first::<(u16, Option<String>), _>("SELECT @@port, @v") {
        Ok(Some((port, v))) => {
            assert_ne!(port, victim.port(), "session {with_var_id}: {s:?}");
            assert_eq!(
                v.as_deref(),
                Some("keep"),
                "moved without its user variable"
            );
        }
        Err(ferry_tests::mysql::Error::MySqlError(e)) => {
            assert_eq!(e.code, 2013, "{e:?}");
            assert!(e.message.contains("cn1"), "{e:?}");
            eprintln!("the session with a user variable was closed: {e:?}");
        }
        other => panic!("session with a user variable after its backend died: {other:?}"),
    }
    // Sessions on the other backends never noticed.
    for (port, conns) in on.iter_mut() {
        for c in conns {
            assert_eq!(port_of(c), *port);
        }
    }
    assert!(
        admin.metric_sum(
            "ferry_migrations_succeeded_total",
            &["trigger=\"failover\""]
        ) >= 2.0
    );
    drop(_restart);
    admin.wait_for("cn1 to be up again", Duration::from_secs(30), |a| {
        let b = a.backend("cn1");
        (b["health"] == "up", b)
    });
}
