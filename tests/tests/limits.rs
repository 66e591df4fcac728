//! Limits end to end: connection and tenant limits (1040), failed logins per
//! address (1129), the idle timeout (4031), the write timeout, and the admin
//! API's bearer token, body limit and header timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::mysql::Conn;
use ferry_tests::*;

/// The first packet ferry sends on a fresh connection, and its payload.
fn first_packet(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut header = [0u8; 4];
    s.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload)?;
    Ok(payload)
}

/// The code of an ERR payload, if it is one.
fn err_code(payload: &[u8]) -> Option<u16> {
    (payload.first() == Some(&0xff)).then(|| u16::from_le_bytes([payload[1], payload[2]]))
}

fn wait_until(what: &str, within: Duration, ferry: &Ferry, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            ferry.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One backend; `extra` is a top-level field (`limits: (...)`) or empty.
fn one_backend(extra: &str) -> Ferry {
    let mut cfg = ConfigBuilder::new().backend(Backend::new("cn1", backends()[0]));
    if !extra.is_empty() {
        cfg = cfg.field(extra);
    }
    cfg.start()
}

fn select_one(c: &mut Conn) -> Option<u32> {
    c.query_first("SELECT 1").unwrap()
}

#[test]
fn max_connections_refuses_with_1040_before_the_handshake_and_recovers() {
    let ferry = one_backend("limits: (max_connections: 3)");
    let admin = Admin::of(&ferry);
    let mut admitted: Vec<Conn> = (0..3)
        .map(|_| ferry.connect("root", "111").unwrap())
        .collect();

    let e = server_error(ferry.connect("root", "111"));
    assert_eq!(e.code, 1040, "{e:?}");
    assert!(e.message.starts_with("Too many connections"), "{e:?}");

    // A flood of connections: each is refused at once and cleanly, the
    // admitted sessions keep answering, and the listener keeps up.
    let started = Instant::now();
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let addr = ferry.addr;
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| first_packet(addr).ok().and_then(|p| err_code(&p)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for c in admitted.iter_mut() {
        assert_eq!(select_one(c), Some(1));
    }
    let codes: Vec<Option<u16>> = flood.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        codes.iter().all(|c| *c == Some(1040)),
        "every flooding connection gets 1040: {codes:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "400 refusals took {:?}",
        started.elapsed()
    );
    for c in admitted.iter_mut() {
        assert_eq!(select_one(c), Some(1));
    }
    let refused = admin.metric("ferry_connections_refused_total{reason=\"connections\"}");
    assert_eq!(refused, Some(401.0));
    assert_eq!(admin.metric("ferry_client_connections"), Some(3.0));

    // One leaves: a new one gets in.
    admitted.pop();
    admin.wait_for(
        "the closed session to be released",
        Duration::from_secs(10),
        |a| {
            let n = a.metric("ferry_client_connections");
            (n == Some(2.0), n)
        },
    );
    let mut again = ferry.connect("root", "111").expect("room again");
    assert_eq!(select_one(&mut again), Some(1));
}

#[test]
fn max_connections_per_tenant_refuses_with_1040_after_login() {
    let b = backends_n(2);
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", b[0]))
        .backend(Backend::new("cn2", b[1]).label("account", "acc1"))
        .field("limits: (max_connections_per_tenant: 2)")
        .start();
    let admin = Admin::of(&ferry);
    let mut tenant: Vec<Conn> = (0..2)
        .map(|_| ferry.connect("acc1:app", "secret").unwrap())
        .collect();
    let e = server_error(ferry.connect("acc1:app", "secret"));
    assert_eq!(e.code, 1040, "{e:?}");
    assert!(e.message.contains("tenant 'acc1'"), "{e:?}");
    // Other tenants (here: no tenant) are not limited by acc1's count.
    let mut plain: Vec<Conn> = (0..3)
        .map(|_| ferry.connect("root", "111").unwrap())
        .collect();
    for c in tenant.iter_mut().chain(plain.iter_mut()) {
        assert_eq!(select_one(c), Some(1));
    }
    assert_eq!(
        admin.metric("ferry_connections_refused_total{reason=\"tenant\"}"),
        Some(1.0)
    );
    // A refusal by a limit is no failed login: it does not count towards a block.
    assert_eq!(admin.metric("ferry_failed_login_hosts"), Some(0.0));
    tenant.pop();
    admin.wait_for(
        "the tenant's session to be released",
        Duration::from_secs(10),
        |a| {
            let n = a.metric("ferry_sessions");
            (n == Some(4.0), n)
        },
    );
    let mut again = ferry
        .connect("acc1:app", "secret")
        .expect("room in acc1 again");
    assert_eq!(select_one(&mut again), Some(1));
}

#[test]
fn failed_logins_block_the_address_with_1129_and_log_it_once() {
    let ferry = one_backend("limits: (max_failed_logins: 3, failed_login_block_ms: 600000)");
    let admin = Admin::of(&ferry);
    let mut admitted = ferry.connect("root", "111").unwrap();
    for _ in 0..3 {
        let e = server_error(ferry.connect("root", "wrong"));
        assert_eq!(e.code, 1045, "{e:?}");
    }
    // Blocked now: the right password does not help, nor a raw connection.
    for _ in 0..3 {
        let e = server_error(ferry.connect("root", "111"));
        assert_eq!(e.code, 1129, "{e:?}");
        assert!(
            e.message
                .starts_with("Host '127.0.0.1' is blocked because of many connection errors"),
            "{e:?}"
        );
    }
    assert_eq!(err_code(&first_packet(ferry.addr).unwrap()), Some(1129));
    // A session admitted before the block keeps working.
    assert_eq!(select_one(&mut admitted), Some(1));
    let log = ferry.log();
    assert_eq!(
        log.matches("too many failed logins: address blocked")
            .count(),
        1,
        "logged once per block:\n{log}"
    );
    let line = log.lines().find(|l| l.contains("address blocked")).unwrap();
    assert!(line.contains("127.0.0.1"), "{line}");
    assert_eq!(admin.metric("ferry_hosts_blocked_total"), Some(1.0));
    assert_eq!(
        admin.metric("ferry_connections_refused_total{reason=\"host_blocked\"}"),
        Some(4.0)
    );
}

#[test]
fn an_idle_session_is_closed_with_4031_but_a_long_statement_is_not() {
    let ferry = one_backend("limits: (idle_timeout_ms: 700)");
    let admin = Admin::of(&ferry);
    let mut busy = ferry.connect("root", "111").unwrap();
    let mut idle = ferry.connect("root", "111").unwrap();
    assert_eq!(select_one(&mut idle), Some(1));
    // A statement running longer than the timeout is not idle time.
    let slept: Option<u32> = busy.query_first("SELECT SLEEP(1.5)").unwrap();
    assert_eq!(slept, Some(0));
    assert_eq!(select_one(&mut busy), Some(1));
    // `idle` said nothing meanwhile: closed, with MariaDB's 4031.
    admin.wait_for(
        "the idle session to be closed",
        Duration::from_secs(10),
        |a| {
            let n = a.metric("ferry_sessions_closed_total{reason=\"idle\"}");
            (n >= Some(1.0), n)
        },
    );
    match idle.query_drop("SELECT 1") {
        Err(mysql::Error::MySqlError(e)) => {
            assert_eq!(e.code, 4031, "{e:?}");
            assert!(e.message.contains("inactivity"), "{e:?}");
        }
        other => panic!("the idle session answered after the idle timeout: {other:?}"),
    }
    assert!(
        ferry.log().contains("idle longer than idle_timeout_ms"),
        "{}",
        ferry.log()
    );
}

#[test]
fn a_client_that_stops_reading_is_closed_and_its_backend_thread_ends() {
    let ferry = one_backend("limits: (write_timeout_ms: 1000)");
    let admin = Admin::of(&ferry);
    let mut reader = ferry.connect("root", "111").unwrap();
    let thread: u64 = reader
        .query_first("SELECT CONNECTION_ID()")
        .unwrap()
        .unwrap();
    let mut direct = connect_backend(backends()[0]);
    let running = |direct: &mut Conn| -> bool {
        let n: Option<u64> = direct
            .query_first(format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {thread}"
            ))
            .unwrap();
        n == Some(1)
    };
    assert!(running(&mut direct));
    // About 1 GB of rows that the client never reads: the socket buffers fill
    // and ferry's write to the client stalls.
    let result = reader
        .query_iter("SELECT REPEAT('x', 65536) FROM test.seq_1_to_16384")
        .unwrap();
    admin.wait_for("the write timeout", Duration::from_secs(20), |a| {
        let n = a.metric("ferry_sessions_closed_total{reason=\"write_timeout\"}");
        (n == Some(1.0), n)
    });
    assert!(
        ferry.log().contains("client stopped reading; closed"),
        "{}",
        ferry.log()
    );
    admin.wait_for("the session to be gone", Duration::from_secs(10), |a| {
        let n = a.sessions().len();
        (n == 0, n)
    });
    wait_until(
        "the backend thread to leave PROCESSLIST",
        Duration::from_secs(20),
        &ferry,
        || !running(&mut direct),
    );
    drop(result);
    // ferry itself is fine.
    let mut c = ferry.connect("root", "111").unwrap();
    assert_eq!(select_one(&mut c), Some(1));
}

/// One HTTP/1.1 request with extra header lines; the status and the whole answer.
fn http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let request = format!(
        "{head}\r\nHost: ferry\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[test]
fn the_admin_token_is_required_and_a_big_body_is_413() {
    let token = "t0ken-for-the-admin-api";
    let ferry = one_backend(&format!("admin_token: \"{token}\""));
    let admin = Admin::of(&ferry).addr;
    let bearer = format!("Authorization: Bearer {token}");
    for head in [
        "GET /api/backends HTTP/1.1".to_string(),
        "GET /metrics HTTP/1.1".to_string(),
        "GET /api/backends HTTP/1.1\r\nAuthorization: Bearer wrong".to_string(),
        format!("GET /api/backends HTTP/1.1\r\nAuthorization: Basic {token}"),
        format!("GET /api/backends HTTP/1.1\r\nAuthorization: Bearer {token}x"),
    ] {
        let (status, answer) = http(admin, &head, b"");
        assert_eq!(status, 401, "{head}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{answer}"
        );
    }
    let (status, answer) = http(
        admin,
        &format!("GET /api/backends HTTP/1.1\r\n{bearer}"),
        b"",
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"cn1\""), "{answer}");
    let (status, _) = http(admin, &format!("GET /metrics HTTP/1.1\r\n{bearer}"), b"");
    assert_eq!(status, 200);
    let big = vec![b'x'; 65 * 1024];
    let (status, answer) = http(
        admin,
        &format!("PUT /api/backends/cn9 HTTP/1.1\r\n{bearer}"),
        &big,
    );
    assert_eq!(status, 413, "{answer}");
    assert!(
        !ferry.log().contains(token),
        "the token reached the log:\n{}",
        ferry.log()
    );
}

#[test]
fn the_token_file_is_read_again_on_sighup() {
    let dir = scratch_dir("admin-token");
    let path = dir.join("token");
    std::fs::write(&path, "first-token\n").unwrap();
    let ferry = one_backend(&format!("admin_token_file: \"{}\"", path.display()));
    let admin = Admin::of(&ferry).addr;
    let get = |token: &str| {
        http(
            admin,
            &format!("GET /health HTTP/1.1\r\nAuthorization: Bearer {token}"),
            b"",
        )
        .0
    };
    assert_eq!(get("first-token"), 200);
    assert_eq!(get("second-token"), 401);
    std::fs::write(&path, "second-token\nignored\n").unwrap();
    ferry.signal("HUP");
    wait_until("the reload", Duration::from_secs(10), &ferry, || {
        ferry.log().contains("config reloaded")
    });
    assert_eq!(get("second-token"), 200);
    assert_eq!(get("first-token"), 401);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slow_admin_client_is_cut_after_the_header_timeout() {
    let ferry = one_backend("");
    let admin = Admin::of(&ferry).addr;
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: fer").unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "closed after {waited:?}: {}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn a_non_loopback_admin_listen_without_a_token_is_refused() {
    let config = ConfigBuilder::new()
        .backend(Backend::new("cn1", backends()[0]))
        .to_ron()
        .replacen("admin_listen: \"127.0.0.1:", "admin_listen: \"0.0.0.0:", 1);
    let (_, out) = ferry_rejects(&config);
    assert!(!out.success());
    assert!(out.stderr.contains("admin_token"), "{}", out.stderr);
    assert!(out.stderr.contains("loopback"), "{}", out.stderr);
}
