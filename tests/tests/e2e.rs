//! End-to-end tests: real clients → ferry → real MariaDB servers.
//!
//! Every test starts its own ferry on free loopback ports, so they run in
//! parallel. `SELECT @@port` tells which backend a session landed on.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::{params, Conn};
use ferry_tests::*;

/// cn1 unlabeled, cn2 `account=acc1`, cn3 `account=acc1, region=eu-*`.
fn tenant_config() -> (ConfigBuilder, [SocketAddr; 3]) {
    let b = backends_n(3);
    let cfg = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]).label("account", "acc1"))
        .backend(
            Backend::new("cn3", b[2])
                .label("account", "acc1")
                .label("region", "eu-*"),
        );
    (cfg, [b[0], b[1], b[2]])
}

fn one_backend() -> Ferry {
    ConfigBuilder::new()
        .backend(Backend::new("cn1", backends()[0]))
        .start()
}

fn login(ferry: &Ferry, user: &str, pass: &str) -> Conn {
    ferry
        .connect(user, pass)
        .unwrap_or_else(|e| panic!("log in as {user:?} through ferry: {e}"))
}

/// Open `n` sessions as `user` (kept open, so the balancer sees them) and
/// return the backend port of each.
fn ports_of_sessions(ferry: &Ferry, user: &str, pass: &str, n: usize) -> (Vec<Conn>, Vec<u16>) {
    let mut conns = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n {
        let mut c = login(ferry, user, pass);
        ports.push(backend_port(&mut c));
        conns.push(c);
    }
    (conns, ports)
}

// (a) ------------------------------------------------------------------------

#[test]
fn mysql_crate_queries_tables_and_prepared_statements() {
    let ferry = one_backend();
    let mut conn = login(&ferry, "root", "111");

    let two: Option<i64> = conn.query_first("SELECT 1+1").unwrap();
    assert_eq!(two, Some(2));
    assert_eq!(backend_port(&mut conn), backends()[0].port());

    let table = format!("test.e2e_roundtrip_{}", ferry.port());
    conn.query_drop(format!("DROP TABLE IF EXISTS {table}"))
        .unwrap();
    conn.query_drop(format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(64), score DOUBLE)"
    ))
    .unwrap();
    conn.query_drop(format!(
        "INSERT INTO {table} VALUES (1, 'one', 1.5), (2, 'two', 2.5)"
    ))
    .unwrap();
    assert_eq!(conn.affected_rows(), 2);

    // Prepared statements with parameters, both directions.
    let insert = conn
        .prep(format!(
            "INSERT INTO {table} (id, name, score) VALUES (:id, :name, :score)"
        ))
        .unwrap();
    for (id, name) in [(3, "three"), (4, "four")] {
        conn.exec_drop(
            &insert,
            params! { "id" => id, "name" => name, "score" => id as f64 },
        )
        .unwrap();
    }
    let rows: Vec<(i32, String, f64)> = conn
        .exec(
            format!("SELECT id, name, score FROM {table} WHERE id >= ? ORDER BY id"),
            (2,),
        )
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (2, "two".to_string(), 2.5),
            (3, "three".to_string(), 3.0),
            (4, "four".to_string(), 4.0)
        ]
    );
    let sum: Option<(i64, String)> = conn
        .exec_first("SELECT ? + ?, CONCAT(?, '!')", (20, 22, "hi"))
        .unwrap();
    assert_eq!(sum, Some((42, "hi!".to_string())));

    // Plain text protocol sees what the binary protocol wrote.
    let names: Vec<String> = conn
        .query(format!("SELECT name FROM {table} ORDER BY id"))
        .unwrap();
    assert_eq!(names, ["one", "two", "three", "four"]);
    conn.query_drop(format!("DROP TABLE {table}")).unwrap();

    // A session opened with a default database.
    let mut conn = Conn::new(ferry.opts("root", "111").db_name(Some("test"))).unwrap();
    let db: Option<String> = conn.query_first("SELECT DATABASE()").unwrap();
    assert_eq!(db.as_deref(), Some("test"));
}

// (b) ------------------------------------------------------------------------

/// Opens `n` sessions as `user` and checks each landed on one of `ports`; keeps them open.
fn sessions_within(ferry: &Ferry, user: &str, pw: &str, n: usize, ports: &[u16]) -> Vec<Conn> {
    let (conns, landed) = ports_of_sessions(ferry, user, pw, n);
    assert!(
        landed.iter().all(|p| ports.contains(p)),
        "{user} on {landed:?}"
    );
    conns
}

#[test]
fn tenant_sessions_land_on_their_backends() {
    let (cfg, [b1, b2, b3]) = tenant_config();
    let ferry = cfg.start();
    let acc1 = [b2.port(), b3.port()];

    let _c1 = sessions_within(&ferry, "acc1:app", "secret", 4, &acc1);
    let _c2 = sessions_within(&ferry, "acc1#app", "secret", 4, &acc1);
    // A tenant-less user configured `any_tenant: true` may log in under any tenant.
    let _c3 = sessions_within(&ferry, "acc1:root", "111", 2, &acc1);
    // No tenant: only the backend without an `account` label.
    let (_c4, ports) = ports_of_sessions(&ferry, "root", "111", 3);
    assert_eq!(ports, vec![b1.port(); 3], "root on {ports:?}");

    // The backend login used the bare user name.
    let mut c = login(&ferry, "acc1:app", "secret");
    let user: Option<String> = c.query_first("SELECT CURRENT_USER()").unwrap();
    assert_eq!(user.as_deref(), Some("app@127.0.0.1"));
}

#[test]
fn labels_in_the_user_name_select_a_glob_labelled_backend() {
    let (cfg, [_, _, b3]) = tenant_config();
    let ferry = cfg.start();
    let (_c, ports) = ports_of_sessions(&ferry, "acc1:app?region=eu-west", "secret", 4);
    assert_eq!(ports, vec![b3.port(); 4]);
    let (_c, ports) = ports_of_sessions(&ferry, "acc1#app?region=eu-central", "secret", 2);
    assert_eq!(ports, vec![b3.port(); 2]);
}

#[test]
fn draining_backend_takes_no_new_sessions() {
    let b = backends_n(2);
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]).label("account", "acc1"))
        .backend(
            Backend::new("cn2", b[1])
                .label("account", "acc1")
                .draining(),
        )
        .start();
    let (_c, ports) = ports_of_sessions(&ferry, "acc1:app", "secret", 6);
    assert_eq!(ports, vec![b[0].port(); 6]);
}

// (c) ------------------------------------------------------------------------

#[test]
fn no_matching_backend_is_err_1105_naming_tenant_and_labels() {
    let b = backends_n(2);
    // Only labelled backends: no shared pool to fall back to.
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]).label("account", "acc1"))
        .backend(
            Backend::new("cn2", b[1])
                .label("account", "acc1")
                .label("region", "eu-*"),
        )
        .start();

    let e = server_error(ferry.connect("acc9:root", "111"));
    assert_eq!((e.code, e.state.as_str()), (1105, "HY000"), "{e:?}");
    assert!(
        e.message.contains("acc9"),
        "message should name the tenant: {e:?}"
    );

    let e = server_error(ferry.connect("root?region=us", "111"));
    assert_eq!((e.code, e.state.as_str()), (1105, "HY000"), "{e:?}");
    assert!(
        e.message.contains("region") && e.message.contains("us"),
        "message should name the labels: {e:?}"
    );

    // The proxy is still fine for sessions that do match.
    let mut c = login(&ferry, "acc1:app?region=eu-west", "secret");
    assert_eq!(backend_port(&mut c), b[1].port());
}

// (d) ------------------------------------------------------------------------

#[test]
fn wrong_password_is_1045_28000_in_mysql_wording() {
    let (cfg, _) = tenant_config();
    let ferry = cfg.start();

    let e = server_error(ferry.connect("root", "wrong"));
    assert_eq!(
        e,
        ServerError {
            code: 1045,
            state: "28000".into(),
            message: "Access denied for user 'root'@'127.0.0.1' (using password: YES)".into(),
        }
    );
    // The user name as the client sent it.
    let e = server_error(ferry.connect("acc1:app", "wrong"));
    assert_eq!((e.code, e.state.as_str()), (1045, "28000"));
    assert_eq!(
        e.message,
        "Access denied for user 'acc1:app'@'127.0.0.1' (using password: YES)"
    );
    // Unknown user, and a known user under a tenant it is not configured for.
    for user in ["nobody", "acc2:app"] {
        let e = server_error(ferry.connect(user, "secret"));
        assert_eq!((e.code, e.state.as_str()), (1045, "28000"), "{user}: {e:?}");
    }
    // The right password still works afterwards.
    login(&ferry, "root", "111");
}

#[test]
fn tls_request_is_refused_with_1235() {
    let ferry = one_backend();
    let mut s = raw_connect(ferry.addr);
    let (_, greeting) = read_packet(&mut s).expect("server greeting");
    assert_eq!(greeting[0], 10, "protocol version 10 greeting");
    // SSLRequest: capabilities with CLIENT_SSL (0x800), PROTOCOL_41 (0x200),
    // SECURE_CONNECTION (0x8000), PLUGIN_AUTH (0x80000); max packet; charset; 23 zeros.
    let caps: u32 = 0x0000_0800 | 0x0000_0200 | 0x0000_8000 | 0x0008_0000 | 0x0000_0001;
    let mut payload = Vec::new();
    payload.extend_from_slice(&caps.to_le_bytes());
    payload.extend_from_slice(&(16u32 << 20).to_le_bytes());
    payload.push(45);
    payload.extend_from_slice(&[0; 23]);
    write_packet(&mut s, 1, &payload);
    let (_, reply) = read_packet(&mut s).expect("an ERR packet in reply to SSLRequest");
    let e = parse_err(&reply).unwrap_or_else(|| panic!("not an ERR packet: {reply:?}"));
    assert_eq!((e.code, e.state.as_str()), (1235, "42000"), "{e:?}");
    assert!(e.message.contains("TLS"), "{e:?}");
}

// (e) ------------------------------------------------------------------------

#[test]
fn mariadb_cli_through_ferry() {
    let (cfg, [b1, _, b3]) = tenant_config();
    let ferry = cfg.start();

    let out = cli(
        ferry.port(),
        "root",
        "111",
        "SELECT 1+1 AS two; SELECT @@port",
        &[],
    );
    out.assert_success("mariadb CLI as root");
    assert_eq!(out.stdout, format!("two\n2\n@@port\n{}\n", b1.port()));

    let table = format!("test.e2e_cli_{}", ferry.port());
    let out = cli(
        ferry.port(),
        "acc1:app?region=eu-west",
        "secret",
        &format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, v TEXT); \
             INSERT INTO {table} VALUES (1, 'a'), (2, 'b'); \
             SELECT GROUP_CONCAT(v ORDER BY id) FROM {table}; \
             DROP TABLE {table}; SELECT @@port"
        ),
        &["--skip-column-names"],
    );
    out.assert_success("mariadb CLI as acc1:app");
    assert_eq!(out.stdout, format!("a,b\n{}\n", b3.port()));

    let out = cli(ferry.port(), "root", "wrong", "SELECT 1", &[]);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("ERROR 1045 (28000)")
            && out
                .stderr
                .contains("Access denied for user 'root'@'127.0.0.1'"),
        "stderr: {}",
        out.stderr
    );
}

// (f) ------------------------------------------------------------------------

#[test]
fn pymysql_through_ferry() {
    let (cfg, [_, b2, b3]) = tenant_config();
    let ferry = cfg.start();

    // Tenant and labels in the user name; program_name is not a label.
    let out = pymysql(
        ferry.port(),
        "acc1:app?region=eu-west",
        "secret",
        r#", program_name="ferry-e2e", database="test""#,
        r#"
print(q("SELECT 6*7")[0][0])
print(q("SELECT %s + %s", (1, 2))[0][0])
print(q("SELECT DATABASE()")[0][0])
print(q("SELECT @@port")[0][0])
"#,
    );
    out.assert_success("PyMySQL");
    assert_eq!(out.stdout, format!("42\n3\ntest\n{}\n", b3.port()));

    // A non-standard connection attribute is a label: region=eu-west via
    // attributes instead of the user name.
    let code = format!(
        r#"
import pymysql
conn = pymysql.connect(host="127.0.0.1", port={port}, user="acc1:app", password="secret",
                       connect_timeout=10, read_timeout=30, defer_connect=True,
                       program_name="ferry-e2e")
conn._connect_attrs["region"] = "eu-west"
conn.connect()
cur = conn.cursor()
cur.execute("SELECT @@port")
print(cur.fetchone()[0])
"#,
        port = ferry.port()
    );
    let out = python(&code, &[]);
    out.assert_success("PyMySQL with connection attributes");
    assert_eq!(out.stdout.trim(), b3.port().to_string());

    // Without labels the tenant's sessions spread over its two backends.
    let out = pymysql(
        ferry.port(),
        "acc1:app",
        "secret",
        "",
        r#"print(q("SELECT @@port")[0][0])"#,
    );
    out.assert_success("PyMySQL acc1:app");
    let port: u16 = out.stdout.trim().parse().unwrap();
    assert!([b2.port(), b3.port()].contains(&port), "{port}");

    let out = pymysql(ferry.port(), "acc1:app", "wrong", "", "print('logged in')");
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stdout.starts_with("ERR 1045 "), "{out:?}");
}

// (g) ------------------------------------------------------------------------

fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to ferry");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload)?;
    Ok((header[3], payload))
}

fn write_packet(s: &mut TcpStream, seq: u8, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut buf = len.to_le_bytes()[..3].to_vec();
    buf.push(seq);
    buf.extend_from_slice(payload);
    s.write_all(&buf).expect("write packet");
}

fn parse_err(payload: &[u8]) -> Option<ServerError> {
    if payload.len() < 9 || payload[0] != 0xff {
        return None;
    }
    let code = u16::from_le_bytes([payload[1], payload[2]]);
    let (state, msg) = if payload[3] == b'#' {
        (
            String::from_utf8_lossy(&payload[4..9]).into_owned(),
            &payload[9..],
        )
    } else {
        (String::new(), &payload[3..])
    };
    Some(ServerError {
        code,
        state,
        message: String::from_utf8_lossy(msg).into_owned(),
    })
}

/// Read until the server closes the connection. Returns the time it took and
/// any ERR packet seen on the way; panics if the socket stays open longer
/// than `limit`.
fn expect_closed(s: &mut TcpStream, limit: Duration) -> (Duration, Option<ServerError>) {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("ferry kept the connection open for more than {limit:?}")
            }
            Err(e) => panic!("read: {e}"),
        }
        assert!(
            start.elapsed() < limit,
            "ferry kept the connection open for more than {limit:?}"
        );
    }
    let err = (seen.len() > 4).then(|| parse_err(&seen[4..])).flatten();
    (start.elapsed(), err)
}

#[test]
fn garbage_after_greeting_is_closed_without_disturbing_others() {
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", backends()[0]))
        .field("login_timeout_ms: 2000")
        .start();
    let mut healthy = login(&ferry, "root", "111");
    healthy.query_drop("SET @marker = 'still here'").unwrap();

    let garbage: Vec<_> = (0..8u64)
        .map(|seed| {
            let addr = ferry.addr;
            std::thread::spawn(move || {
                let mut s = raw_connect(addr);
                read_packet(&mut s).expect("server greeting");
                let bytes = pseudo_random_bytes(seed * 7919 + 1, 64 + 97 * seed as usize);
                // The server may close while we are still writing; that is fine.
                let _ = s.write_all(&bytes);
                expect_closed(&mut s, Duration::from_secs(8))
            })
        })
        .collect();
    // A few well-formed headers with nonsense inside, too.
    let mut framed = raw_connect(ferry.addr);
    read_packet(&mut framed).expect("greeting");
    write_packet(&mut framed, 1, &[0xff; 40]);
    let (_, err) = expect_closed(&mut framed, Duration::from_secs(8));
    if let Some(e) = err {
        assert!(e.code > 0, "{e:?}");
    }

    for (seed, g) in garbage.into_iter().enumerate() {
        let (_, err) = g
            .join()
            .unwrap_or_else(|_| panic!("garbage client {seed} was not closed"));
        if let Some(e) = err {
            assert!(e.code > 0, "{e:?}");
        }
    }

    // The session that was there all along still works, and new ones too.
    let marker: Option<String> = healthy.query_first("SELECT @marker").unwrap();
    assert_eq!(marker.as_deref(), Some("still here"));
    let mut fresh = login(&ferry, "root", "111");
    let one: Option<i32> = fresh.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1));
    assert!(ferry.log().len() < 50 << 20, "log exploded");
}

#[test]
fn silent_and_stalled_clients_are_closed_after_login_timeout() {
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", backends()[0]))
        .field("login_timeout_ms: 1000")
        .start();

    // Connects and sends nothing.
    let mut silent = raw_connect(ferry.addr);
    read_packet(&mut silent).expect("server greeting");
    // Sends half a handshake response: header says 100 bytes, 10 follow.
    let mut stalled = raw_connect(ferry.addr);
    read_packet(&mut stalled).expect("server greeting");
    stalled.write_all(&[100, 0, 0, 1]).unwrap();
    stalled
        .write_all(&[0x8d, 0xa6, 0x0f, 0, 0, 0, 0, 1, 45, 0])
        .unwrap();

    let healthy = std::thread::spawn({
        let port = ferry.port();
        move || {
            let mut c = connect(port, "root", "111").expect("login during the stall");
            let v: Option<i32> = c.query_first("SELECT 7").unwrap();
            v
        }
    });

    for (name, s) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        let (took, _) = expect_closed(s, Duration::from_secs(6));
        // Measured from after the greeting; allow scheduling slack.
        assert!(
            took < Duration::from_secs(5),
            "{name} client closed only after {took:?}"
        );
    }
    assert_eq!(healthy.join().unwrap(), Some(7));
}

#[test]
fn silent_client_is_not_closed_before_login_timeout() {
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", backends()[0]))
        .field("login_timeout_ms: 1000")
        .start();
    let start = Instant::now();
    let mut silent = raw_connect(ferry.addr);
    read_packet(&mut silent).expect("server greeting");
    expect_closed(&mut silent, Duration::from_secs(6));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the 1000 ms login timeout"
    );
}

// (h) ------------------------------------------------------------------------

#[test]
fn unknown_config_field_is_rejected_with_file_and_line() {
    let mut cfg = ConfigBuilder::new().backend(Backend::new("cn1", backends()[0]));
    cfg.extra.push("frobnicate_level: 3".into());
    let ron = cfg.to_ron();
    let line = ron
        .lines()
        .position(|l| l.contains("frobnicate_level"))
        .unwrap()
        + 1;
    let (path, out) = ferry_rejects(&ron);
    assert!(!out.success(), "ferry accepted an unknown field: {out:?}");
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        out.stderr.contains(&file),
        "stderr should name the file {file}: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("line {line}")) || out.stderr.contains(&format!(":{line}:")),
        "stderr should name line {line}: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("frobnicate_level"),
        "stderr should name the field: {}",
        out.stderr
    );

    // The same file without the bad field starts.
    cfg.extra.clear();
    let ferry = cfg.start();
    login(&ferry, "root", "111");
}

// (i) ------------------------------------------------------------------------

#[test]
fn thirty_sessions_spread_ten_ten_ten() {
    let b = backends_n(3);
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]))
        .backend(Backend::new("cn3", b[2]))
        .start();
    let (_conns, ports) = ports_of_sessions(&ferry, "root", "111", 30);
    let mut count = BTreeMap::new();
    for p in ports {
        *count.entry(p).or_insert(0) += 1;
    }
    let expected: BTreeMap<u16, i32> = b.iter().map(|a| (a.port(), 10)).collect();
    assert_eq!(count, expected);
}

/// COM_CHANGE_USER: the client scrambles with ferry's salt; ferry verifies it
/// and logs the backend connection in as the new user.
#[test]
fn change_user_switches_the_backend_user_and_refuses_a_wrong_password() {
    let b = backends();
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .start();
    let mut conn = ferry.connect("root", "111").expect("login as root");
    let who: Option<String> = conn.query_first("SELECT USER()").unwrap();
    assert!(who.unwrap().starts_with("root@"));
    conn.change_user(
        ferry_tests::mysql::ChangeUserOpts::default()
            .with_user(Some("sbtest".into()))
            .with_pass(Some("sbtest".into())),
    )
    .expect("change user to sbtest");
    let who: Option<String> = conn.query_first("SELECT USER()").unwrap();
    assert!(who.unwrap().starts_with("sbtest@"));
    let err = conn
        .change_user(
            ferry_tests::mysql::ChangeUserOpts::default()
                .with_user(Some("root".into()))
                .with_pass(Some("wrong".into())),
        )
        .unwrap_err();
    assert!(err.to_string().contains("1045"), "{err}");
}

/// Clients know ferry's connection ids; `KILL` must reach the right backend
/// thread, never whatever thread happens to have that number on the backend.
#[test]
fn kill_translates_ferry_connection_ids_to_backend_threads() {
    let b = backends();
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .start();
    let mut victim = ferry.connect("root", "111").expect("victim");
    let mut killer = ferry.connect("root", "111").expect("killer");
    // The id the client library learned from ferry's handshake.
    let victim_id = victim.connection_id();
    let backend_thread: Option<u64> = victim.query_first("SELECT CONNECTION_ID()").unwrap();
    assert_ne!(
        Some(u64::from(victim_id)),
        backend_thread,
        "ids differ, or this proves nothing"
    );

    // KILL QUERY leaves the connection usable.
    killer
        .query_drop(format!("KILL QUERY {victim_id}"))
        .expect("kill query");
    let one: Option<u32> = victim.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1));

    // An id ferry never handed out is unknown, whatever threads the backend has.
    let err = killer.query_drop("KILL 4000000").unwrap_err();
    assert!(err.to_string().contains("1094"), "{err}");

    killer
        .query_drop(format!("KILL {victim_id}"))
        .expect("kill connection");
    assert!(victim.query_drop("SELECT 1").is_err(), "victim still alive");
    let one: Option<u32> = killer.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1), "the killer's own session is untouched");
}

/// sysbench's read/write mix (transactions, prepared statements, range
/// queries) runs through ferry without ferry losing track of the protocol,
/// and the tracker sees every transaction end.
#[test]
fn sysbench_read_write_runs_through_the_tracker() {
    use std::process::Command;
    let b = backends();
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .start();
    let db = "ferry_sysbench";
    let mut admin = connect_backend(b[0]);
    admin
        .query_drop(format!("DROP DATABASE IF EXISTS {db}"))
        .unwrap();
    admin.query_drop(format!("CREATE DATABASE {db}")).unwrap();
    let sysbench = |port: u16, action: &str, extra: &[&str]| {
        let mut cmd = Command::new("sysbench");
        cmd.arg("oltp_read_write")
            .arg("--db-driver=mysql")
            .arg("--mysql-host=127.0.0.1")
            .arg(format!("--mysql-port={port}"))
            .arg("--mysql-user=sbtest")
            .arg("--mysql-password=sbtest")
            .arg(format!("--mysql-db={db}"))
            .arg("--mysql-ssl=off")
            .arg("--db-ps-mode=auto")
            .arg("--tables=1")
            .arg("--table-size=1000")
            .args(extra)
            .arg(action);
        run_command(&mut cmd, Duration::from_secs(120))
    };
    sysbench(b[0].port(), "prepare", &[]).assert_success("sysbench prepare (direct)");
    let run = sysbench(
        ferry.port(),
        "run",
        &["--threads=4", "--time=5", "--report-interval=0"],
    );
    run.assert_success("sysbench run through ferry");
    assert!(run.stdout.contains("transactions:"), "{}", run.stdout);
    let log = ferry.log();
    assert!(
        !log.contains("protocol error"),
        "ferry lost track of the protocol:\n{log}"
    );
    admin.query_drop(format!("DROP DATABASE {db}")).unwrap();
}

/// A KILL of a session on another backend runs there, logged in as the
/// client that asked (so the backend checks that client's privileges).
#[test]
fn kill_reaches_a_session_on_another_backend() {
    let b = backends_n(2);
    let ferry = ConfigBuilder::new()
        .backend(
            Backend::new("cn1", b[0])
                .label("account", "acc1")
                .label("zone", "a"),
        )
        .backend(
            Backend::new("cn2", b[1])
                .label("account", "acc1")
                .label("zone", "b"),
        )
        .start();
    let mut victim = ferry
        .connect("acc1:root?zone=b", "111")
        .expect("victim on cn2");
    let mut killer = ferry
        .connect("acc1:root?zone=a", "111")
        .expect("killer on cn1");
    assert_eq!(backend_port(&mut victim), b[1].port());
    assert_eq!(backend_port(&mut killer), b[0].port());
    let victim_id = victim.connection_id();

    killer
        .query_drop(format!("KILL QUERY {victim_id}"))
        .expect("kill query elsewhere");
    let one: Option<u32> = victim.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1), "KILL QUERY leaves the connection");

    killer
        .query_drop(format!("KILL {victim_id}"))
        .expect("kill elsewhere");
    assert!(victim.query_drop("SELECT 1").is_err(), "victim still alive");
    let one: Option<u32> = killer.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1));
}

/// Another tenant's session is out of reach: ferry refuses as MySQL does (1095).
#[test]
fn kill_never_reaches_another_tenants_session() {
    let b = backends_n(2);
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]).label("account", "acc1"))
        .backend(Backend::new("cn2", b[1]).label("account", "acc2"))
        .start();
    let mut victim = ferry.connect("acc2:root", "111").expect("victim on cn2");
    let mut killer = ferry.connect("acc1:root", "111").expect("killer on cn1");
    let victim_id = victim.connection_id();
    let victim_thread: u32 = victim
        .query_first("SELECT CONNECTION_ID()")
        .unwrap()
        .unwrap();
    let killer_thread: u32 = killer
        .query_first("SELECT CONNECTION_ID()")
        .unwrap()
        .unwrap();
    // Thread ids are unique per backend only: the killer's own comes first.
    let ids = [victim_id, victim_thread];
    for id in ids.into_iter().filter(|id| *id != killer_thread) {
        for kill in ["KILL", "KILL QUERY"] {
            match killer.query_drop(format!("{kill} {id}")) {
                Err(mysql::Error::MySqlError(e)) => assert_eq!(e.code, 1095, "{kill} {id}: {e:?}"),
                other => panic!("{kill} {id} of another tenant's session: {other:?}"),
            }
        }
    }
    let one: Option<u32> = victim.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1), "the other tenant's session is untouched");
}

#[test]
fn commands_are_counted_per_backend_in_metrics_and_the_backends_json() {
    let ferry = one_backend();
    let admin = admin::Admin::of(&ferry);
    let mut conn = login(&ferry, "root", "111");
    // Counted once the login's own set-up queries are done: only these ten from here on.
    let before = admin.backends()["cn1"]["commands_total"].as_u64().unwrap();
    for _ in 0..10 {
        let _: Option<u32> = conn.query_first("SELECT 1").unwrap();
    }
    let after = admin.backends()["cn1"]["commands_total"].as_u64().unwrap();
    assert_eq!(after - before, 10, "{}", ferry.log());
    let (status, metrics) = admin.http("GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!(
            "ferry_commands_total{{backend=\"cn1\"}} {after}\n"
        )),
        "{metrics}"
    );
}
