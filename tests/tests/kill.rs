//! KILL through ferry against real MariaDB: every id a client can learn
//! (ferry's handshake id, `CONNECTION_ID()`, the `PROCESSLIST` id) reaches
//! the session it names, wherever it runs now and after it moved, and never
//! another tenant's. Every KILL hits a statement that is running.
//!
//! Needs three servers (FERRY_TEST_BACKENDS).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::{self, Conn};
use ferry_tests::*;

/// A killed statement or connection must stop about at once, not after its 30 s.
const QUICK: Duration = Duration::from_secs(10);
const MOVE_TIMEOUT: Duration = Duration::from_secs(20);

fn three() -> [SocketAddr; 3] {
    let b = backends_n(3);
    [b[0], b[1], b[2]]
}

/// Users app/secret in tenants acc1 and acc2 (the same user on the backends) and root.
fn config() -> ConfigBuilder {
    let mut cfg = ConfigBuilder::new();
    cfg.users = vec![
        r#"(user: "root", password: "111")"#.into(),
        r#"(user: "app", password: "secret")"#.into(),
        r#"(tenant: "acc1", user: "app", password: "secret")"#.into(),
        r#"(tenant: "acc2", user: "app", password: "secret")"#.into(),
    ];
    cfg
}

fn one_backend() -> Ferry {
    config().backend(Backend::new("cn1", three()[0])).start()
}

fn pool() -> Ferry {
    let b = three();
    config()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]))
        .backend(Backend::new("cn3", b[2]))
        .start()
}

fn login(ferry: &Ferry, user: &str) -> Conn {
    ferry
        .connect(user, "secret")
        .unwrap_or_else(|e| panic!("log in as {user}: {e}"))
}

fn thread_id(c: &mut Conn) -> u32 {
    c.query_first("SELECT CONNECTION_ID()").unwrap().unwrap()
}

fn server_of(c: &mut Conn) -> SocketAddr {
    let port = backend_port(c);
    *three()
        .iter()
        .find(|a| a.port() == port)
        .expect("one of ours")
}

/// A unique statement, so that PROCESSLIST shows which one is ours.
fn sleep_sql() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("SELECT SLEEP(30) AS kill_test_{}_{n}", std::process::id())
}

/// A victim running `SELECT SLEEP(30)` in a thread of its own.
struct Sleeping {
    sql: String,
    server: SocketAddr,
    started: Instant,
    join: JoinHandle<(Conn, mysql::Result<Option<i64>>)>,
}

/// Starts the sleep and waits until the server shows it executing.
fn sleep_on(mut victim: Conn) -> Sleeping {
    let server = server_of(&mut victim);
    let sql = sleep_sql();
    let run = sql.clone();
    let join = thread::spawn(move || {
        let r = victim.query_first::<i64, _>(&run);
        (victim, r)
    });
    let started = Instant::now();
    wait_running(server, &sql);
    Sleeping {
        sql,
        server,
        started,
        join,
    }
}

/// The backend thread running `sql`, once it runs.
fn wait_running(server: SocketAddr, sql: &str) -> u32 {
    let mut direct = connect_backend(server);
    let deadline = Instant::now() + QUICK;
    loop {
        let id: Option<u32> = direct
            .exec_first(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = ? AND COMMAND = 'Query'",
                (sql,),
            )
            .unwrap();
        if let Some(id) = id {
            return id;
        }
        assert!(Instant::now() < deadline, "`{sql}` never ran on {server}");
        thread::sleep(Duration::from_millis(20));
    }
}

impl Sleeping {
    /// The statement ended with 1317 quickly; the session lives on.
    fn interrupted(self, how: &str) -> Conn {
        let (mut conn, r) = self.join.join().unwrap();
        let took = self.started.elapsed();
        assert!(took < QUICK, "{how}: the sleep went on for {took:?}");
        match r {
            Err(_) => assert_eq!(server_error(r).code, 1317, "{how}"),
            // MariaDB may end an interrupted SLEEP with 1.
            Ok(v) => assert_eq!(v, Some(1), "{how}: SLEEP was not interrupted"),
        }
        let one: Option<u32> = conn.query_first("SELECT 1").unwrap();
        assert_eq!(
            one,
            Some(1),
            "{how}: the session is usable after KILL QUERY"
        );
        conn
    }

    /// The connection dropped quickly, as with MariaDB (2013).
    fn dropped(self, how: &str) {
        let (mut conn, r) = self.join.join().unwrap();
        let took = self.started.elapsed();
        assert!(took < QUICK, "{how}: the sleep went on for {took:?}");
        match r {
            Err(mysql::Error::MySqlError(e)) => assert_eq!(e.code, 2013, "{how}: {e:?}"),
            Err(mysql::Error::IoError(_)) | Err(mysql::Error::DriverError(_)) => {}
            other => panic!("{how}: the killed connection answered {other:?}"),
        }
        assert!(conn.query_drop("SELECT 1").is_err(), "{how}: still alive");
    }

    /// Still running after a refused KILL.
    fn still_running(&self, how: &str) {
        let mut direct = connect_backend(self.server);
        let n: Option<u32> = direct
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = ?",
                (&self.sql,),
            )
            .unwrap();
        assert_eq!(n, Some(1), "{how}: the victim's statement was stopped");
    }
}

/// The `Id` the killer's own `SHOW PROCESSLIST` gives the statement `sql`.
fn processlist_id(killer: &mut Conn, sql: &str) -> u32 {
    let rows: Vec<mysql::Row> = killer.query("SHOW FULL PROCESSLIST").unwrap();
    rows.iter()
        .find(|r| r.get::<Option<String>, _>("Info").flatten().as_deref() == Some(sql))
        .and_then(|r| r.get::<u32, _>("Id"))
        .expect("the victim in SHOW PROCESSLIST")
}

fn kill(killer: &mut Conn, sql: &str) {
    killer
        .query_drop(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Moves session `id` to `to` and waits for it.
fn move_to(admin: &Admin, id: u32, to: &str, count: u64) {
    admin.request_migration(u64::from(id), Some(to));
    admin.wait_migrated(u64::from(id), count, MOVE_TIMEOUT);
}

#[test]
fn kill_query_by_every_id_a_client_learns_on_one_backend() {
    let ferry = one_backend();
    let mut victim = login(&ferry, "app");
    let mut killer = login(&ferry, "app");
    let handshake = victim.connection_id();
    let thread = thread_id(&mut victim);
    assert_ne!(handshake, thread, "ids differ, or this proves nothing");
    for how in [
        "handshake id",
        "CONNECTION_ID()",
        "SHOW PROCESSLIST Id",
        "HARD QUERY",
    ] {
        let s = sleep_on(victim);
        let sql = match how {
            "handshake id" => format!("KILL QUERY {handshake}"),
            "CONNECTION_ID()" => format!("kill query {thread};"),
            "SHOW PROCESSLIST Id" => {
                format!("KILL QUERY {}", processlist_id(&mut killer, &s.sql))
            }
            _ => format!("/* why */ KILL HARD QUERY {handshake}"),
        };
        kill(&mut killer, &sql);
        victim = s.interrupted(how);
    }
}

#[test]
fn kill_connection_by_every_id_drops_only_the_victim() {
    let ferry = one_backend();
    let admin = Admin::of(&ferry);
    let mut killer = login(&ferry, "app");
    for how in ["handshake id", "CONNECTION_ID()", "SHOW PROCESSLIST Id"] {
        let mut victim = login(&ferry, "app");
        let handshake = victim.connection_id();
        let thread = thread_id(&mut victim);
        let s = sleep_on(victim);
        let sql = match how {
            "handshake id" => format!("KILL {handshake}"),
            "CONNECTION_ID()" => format!("KILL CONNECTION {thread}"),
            _ => format!("KILL {}", processlist_id(&mut killer, &s.sql)),
        };
        kill(&mut killer, &sql);
        s.dropped(how);
        admin.wait_for("the killed session to leave", QUICK, |a| {
            let gone = a.try_session(u64::from(handshake)).is_none();
            (gone, handshake)
        });
        let one: Option<u32> = killer.query_first("SELECT 1").unwrap();
        assert_eq!(one, Some(1), "{how}: the killer's session is untouched");
    }
}

#[test]
fn a_session_can_kill_itself_by_either_id() {
    let ferry = one_backend();
    for own in ["handshake", "CONNECTION_ID()"] {
        let mut c = login(&ferry, "app");
        let sql = match own {
            "handshake" => format!("KILL {}", c.connection_id()),
            _ => "KILL CONNECTION_ID()".to_string(),
        };
        let e = server_error(c.query_drop(&sql));
        assert_eq!(e.code, 1927, "{own}: {e:?}");
        assert!(c.query_drop("SELECT 1").is_err(), "{own}: still alive");
    }
}

#[test]
fn kill_finds_the_victim_on_another_backend_before_and_after_two_moves() {
    let ferry = pool();
    let admin = Admin::of(&ferry);
    let ids = ["cn1", "cn2", "cn3"];
    let mut killer = login(&ferry, "app");
    let killer_backend = admin.backend_id_of_port(backend_port(&mut killer));
    let killer_thread = thread_id(&mut killer);
    let mut victim = login(&ferry, "app");
    let handshake = victim.connection_id();
    // The victim starts elsewhere than the killer.
    let mut at = admin.backend_id_of_port(backend_port(&mut victim));
    let mut moves = 0;
    if at == killer_backend {
        at = ids
            .iter()
            .find(|b| **b != killer_backend)
            .unwrap()
            .to_string();
        moves += 1;
        move_to(&admin, handshake, &at, moves);
    }
    let third = ids
        .iter()
        .find(|b| **b != killer_backend && **b != at)
        .unwrap()
        .to_string();
    let mut known = vec![("handshake id", handshake)];
    // Elsewhere, then on the killer's backend, then on the third one.
    for (step, next) in [
        ("on another backend", killer_backend.clone()),
        ("after a move onto the killer's backend", third),
        ("after two moves", String::new()),
    ] {
        known.push(("CONNECTION_ID()", thread_id(&mut victim)));
        for (how, id) in known.clone() {
            if id == killer_thread {
                // Thread ids are unique per backend only: this one names the
                // killer itself first, as documented.
                eprintln!("skipped: {how} {id} is also the killer's own thread");
                continue;
            }
            let s = sleep_on(victim);
            kill(&mut killer, &format!("KILL QUERY {id}"));
            victim = s.interrupted(&format!("{step}, by {how} {id}"));
        }
        if !next.is_empty() {
            moves += 1;
            move_to(&admin, handshake, &next, moves);
        }
    }
    // The first CONNECTION_ID(), read two moves ago, ends the connection.
    let first = known[1..]
        .iter()
        .map(|(_, id)| *id)
        .find(|id| *id != killer_thread)
        .expect("an id that is not the killer's own thread");
    let s = sleep_on(victim);
    kill(&mut killer, &format!("KILL {first}"));
    s.dropped("KILL of the id read before two moves");
}

#[test]
fn com_process_kill_through_pymysql() {
    let ferry = one_backend();
    let out = pymysql(
        ferry.port(),
        "app",
        "secret",
        "",
        r#"
import threading, time
victim = pymysql.connect(host="127.0.0.1", port=int(os.environ["FERRY_PORT"]),
                         user="app", password="secret", read_timeout=30)
vid = victim.thread_id()
sql = "SELECT SLEEP(30) AS pymysql_kill_%d" % vid
result = {}
def sleep():
    t = time.time()
    try:
        victim.cursor().execute(sql)
        result["r"] = "finished"
    except pymysql.err.MySQLError as e:
        result["r"] = "error %s" % e.args[0]
    result["t"] = time.time() - t
th = threading.Thread(target=sleep)
th.start()
deadline = time.time() + 10
while not q("SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO = %s", (sql,)):
    assert time.time() < deadline, "never ran"
    time.sleep(0.02)
conn.kill(vid)  # COM_PROCESS_KILL with ferry's handshake id
th.join()
print("victim", result["r"], "%.1f" % result["t"])
print("killer", q("SELECT 1")[0][0])
"#,
    );
    assert!(out.success(), "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("victim"))
        .unwrap_or("");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words.get(..3),
        Some(&["victim", "error", "2013"][..]),
        "{out:?}"
    );
    let took: f64 = words[3].parse().unwrap();
    assert!(took < QUICK.as_secs_f64(), "{out:?}");
    assert!(out.stdout.contains("killer 1"), "{out:?}");
}

#[test]
fn the_mariadb_cli_ctrl_c_kills_its_running_query() {
    let ferry = pool();
    let (bin, no_tls) = mysql_cli();
    let sql = sleep_sql();
    let child = Command::new(bin)
        .args(["--no-defaults", "-h127.0.0.1"])
        .arg(format!("-P{}", ferry.port()))
        .args(["-uapp", "-psecret", no_tls.as_str(), "-e", &sql])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the mariadb CLI");
    let started = Instant::now();
    let deadline = started + QUICK;
    'found: loop {
        for server in three() {
            let mut direct = connect_backend(server);
            let n: Option<u32> = direct
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = ?",
                    (&sql,),
                )
                .unwrap();
            if n == Some(1) {
                break 'found;
            }
        }
        assert!(Instant::now() < deadline, "the CLI's query never ran");
        thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("the CLI ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        started.elapsed() < QUICK,
        "Ctrl-C did not stop the query: {stderr}"
    );
    assert!(
        stderr.contains("1317") || stderr.contains("interrupted"),
        "the CLI's KILL QUERY through a new connection did not reach the query: {stderr}"
    );
}

#[test]
fn another_tenants_session_is_never_killed() {
    // One backend, both tenants logged in to it as the same user `app`:
    // the backend itself would let either kill the other.
    let ferry = one_backend();
    let mut victim = login(&ferry, "acc2:app");
    let mut killer = login(&ferry, "acc1:app");
    let handshake = victim.connection_id();
    let thread = thread_id(&mut victim);
    let s = sleep_on(victim);
    let listed = processlist_id(&mut killer, &s.sql);
    for id in [handshake, thread, listed] {
        for sql in [format!("KILL {id}"), format!("KILL QUERY {id}")] {
            let e = server_error(killer.query_drop(&sql));
            assert_eq!(e.code, 1095, "{sql}: {e:?}");
            assert_eq!(e.message, format!("You are not owner of thread {id}"));
        }
    }
    // Forms ferry does not translate would reach the backend as written.
    for sql in [
        "KILL USER app".to_string(),
        format!("SELECT 1; KILL QUERY {thread}"),
        format!("/*!KILL QUERY {thread}*/"),
    ] {
        let e = server_error(killer.query_drop(&sql));
        assert_eq!(e.code, 1235, "{sql}: {e:?}");
    }
    s.still_running("after the other tenant's KILLs");
    // COM_PROCESS_KILL is refused the same way.
    let out = pymysql(
        ferry.port(),
        "acc1:app",
        "secret",
        "",
        &format!(
            "try:\n    conn.kill({handshake})\n    print('killed')\nexcept pymysql.err.MySQLError as e:\n    print('ERR', e.args[0])"
        ),
    );
    assert!(out.stdout.contains("ERR 1095"), "{out:?}");
    s.still_running("after the other tenant's COM_PROCESS_KILL");
    // Its own tenant may.
    let mut own = login(&ferry, "acc2:app");
    kill(&mut own, &format!("KILL QUERY {handshake}"));
    s.interrupted("by its own tenant");
}

#[test]
fn forms_ferry_does_not_translate_reach_an_unshared_backend_as_written() {
    let ferry = one_backend();
    let mut victim = login(&ferry, "acc1:app");
    let mut killer = login(&ferry, "acc1:app");
    let thread = thread_id(&mut victim);
    let s = sleep_on(victim);
    // No other tenant on the backend: the backend runs it.
    killer
        .query_drop(format!("/*!KILL QUERY {thread}*/"))
        .expect("an executable comment on an unshared backend");
    s.interrupted("KILL in an executable comment");
}

#[test]
fn a_kill_pipelined_behind_a_query_never_reaches_the_backend_as_written() {
    // Two tenants on one backend as the same user: a KILL of the other
    // tenant's thread, written right behind a query (one write), would kill
    // it if it reached the backend untranslated.
    let ferry = one_backend();
    let mut victim = login(&ferry, "acc2:app");
    let thread = thread_id(&mut victim);
    let s = sleep_on(victim);
    let out = pymysql(
        ferry.port(),
        "acc1:app",
        "secret",
        "",
        &format!(
            r#"
import struct
def packet(sql):
    payload = b"\x03" + sql.encode()
    return struct.pack("<I", len(payload))[:3] + b"\x00" + payload
# Both commands in one write, the KILL cut from the query at no packet boundary ferry reads apart.
conn._write_bytes(packet("SELECT SLEEP(0.2)") + packet("KILL {thread}"))
conn._next_seq_id = 1
conn._read_query_result()
print("first", conn._result.rows[0][0])
try:
    conn._next_seq_id = 1
    conn._read_query_result()
    print("second ok")
except pymysql.err.MySQLError as e:
    print("second ERR", e.args[0])
print("then", q("SELECT 1")[0][0])
"#
        ),
    );
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("first 0"), "{out:?}");
    assert!(out.stdout.contains("second ERR 1095"), "{out:?}");
    assert!(out.stdout.contains("then 1"), "{out:?}");
    s.still_running("after a pipelined KILL from another tenant");
    let mut own = login(&ferry, "acc2:app");
    kill(&mut own, &format!("KILL QUERY {thread}"));
    s.interrupted("by its own tenant");
}
