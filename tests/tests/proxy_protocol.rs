//! The PROXY protocol v2 at both of ferry's edges, against real MariaDB: a
//! trusted balancer's header sets the client address that ferry's logs, its
//! admin API and the backend (`information_schema.PROCESSLIST.HOST`) see; a
//! header from anyone else is refused; a backend configured with
//! `proxy_protocol: true` sees each client's own address and port.
//!
//! The backend used here gets `proxy_protocol_networks=127.0.0.0/8,localhost`
//! (a dynamic variable). MariaDB accepts connections from those networks with
//! or without a header, so the other tests using that server are unaffected.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ferry_core::proxy_header::{self, Addresses, ProxyHeader};
use ferry_core::query::{QueryClient, QueryOutput, ResultSet};
use ferry_tests::admin::Admin;
use ferry_tests::mysql::prelude::Queryable;
use ferry_tests::*;

/// The backend that reads PROXY headers (enabled once per test process).
fn proxy_backend() -> SocketAddr {
    let addr = backends_n(3)[2];
    connect_backend(addr)
        .query_drop("SET GLOBAL proxy_protocol_networks = '127.0.0.0/8,localhost'")
        .expect("enable proxy_protocol_networks");
    addr
}

fn header(source: &str) -> Vec<u8> {
    let mut out = Vec::new();
    proxy_header::write(
        &ProxyHeader::Proxy(Some(Addresses {
            source: source.parse().unwrap(),
            destination: "127.0.0.1:3306".parse().unwrap(),
        })),
        &mut out,
    );
    out
}

/// Logs in over `stream` (after writing `first`, if any) and runs `sql`:
/// its rows, or the error ferry or the server answered with.
fn query_over(
    mut stream: TcpStream,
    first: &[u8],
    user: &str,
    pass: &str,
    sql: &str,
) -> Result<ResultSet, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(first).map_err(|e| e.to_string())?;
    let mut client = QueryClient::new(user, pass);
    let mut buf = [0u8; 16 * 1024];
    loop {
        while let Some(out) = client.poll_output() {
            match out {
                QueryOutput::Send(b) => stream.write_all(&b).map_err(|e| e.to_string())?,
                QueryOutput::Ready => client.query(sql),
                QueryOutput::Answer(a) => {
                    return a.map_err(|e| format!("ERR {} {}", e.code, e.message))
                }
                QueryOutput::Failed(why) => return Err(why),
                QueryOutput::StartTls => return Err("no TLS in this test".into()),
            }
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        client.handle(&buf[..n]);
    }
}

const MY_HOST: &str = "SELECT host FROM information_schema.PROCESSLIST WHERE id = CONNECTION_ID()";

fn host_of(rows: ResultSet) -> String {
    rows.rows[0][0].clone().expect("a host")
}

/// Waits until ferry logs a line containing each of `parts`.
fn wait_log_line(ferry: &Ferry, parts: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ferry
        .log()
        .lines()
        .any(|l| parts.iter().all(|p| l.contains(p)))
    {
        assert!(
            Instant::now() < deadline,
            "ferry never logged a line with {parts:?}; log:\n{}",
            ferry.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_log(ferry: &Ferry, text: &str) {
    wait_log_line(ferry, &[text]);
}

/// The connection is closed by ferry without a greeting or after one, with no login.
fn assert_closed_without_login(mut stream: TcpStream, send: &[u8]) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(send);
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    // Nothing but ferry's greeting (a handshake starts 0x0a after the frame header) at most.
    assert!(all.is_empty() || all[4] == 0x0a, "{all:02x?}");
}

#[test]
fn a_trusted_balancers_header_is_the_client_address_everywhere() {
    let _servers = servers::shared();
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("pp", proxy_backend()).proxy_protocol())
        .field(r#"proxy_protocol: (trusted: ["127.0.0.0/8"])"#)
        .start();
    let admin = Admin::of(&ferry);

    // The backend sees the address the balancer's header carried.
    let stream = TcpStream::connect(ferry.addr).unwrap();
    let rows = query_over(stream, &header("10.1.2.3:4567"), "root", "111", MY_HOST).unwrap();
    assert_eq!(host_of(rows), "10.1.2.3:4567");

    // ... and so does the admin API, while the session lives.
    let mut stream = TcpStream::connect(ferry.addr).unwrap();
    stream.write_all(&header("10.7.7.7:1000")).unwrap();
    let mut client = QueryClient::new("root", "111");
    let mut buf = [0u8; 4096];
    while !client.is_ready() {
        while let Some(QueryOutput::Send(b)) = client.poll_output() {
            stream.write_all(&b).unwrap();
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed during login");
        client.handle(&buf[..n]);
    }
    let seen = admin.wait_for(
        "the session in the admin API",
        Duration::from_secs(10),
        |a| {
            let s = a.sessions();
            let found = s
                .iter()
                .any(|s| s["client_addr"] == "10.7.7.7:1000" && s["backend"] == "pp");
            (found, s)
        },
    );
    assert!(!seen.is_empty());
    drop(stream);

    // A refused login names the header's address, to the client and in the log.
    let stream = TcpStream::connect(ferry.addr).unwrap();
    let err = query_over(stream, &header("10.9.9.9:2000"), "root", "wrong", MY_HOST).unwrap_err();
    assert!(err.contains("'root'@'10.9.9.9'"), "{err}");
    wait_log_line(&ferry, &["login refused", "10.9.9.9:2000"]);

    // The balancer's own connection (LOCAL) is its own address: the backend
    // sees the balancer's address and port, as ferry got them.
    let stream = TcpStream::connect(ferry.addr).unwrap();
    let own = stream.local_addr().unwrap();
    let mut local = Vec::new();
    proxy_header::write(&ProxyHeader::Local, &mut local);
    let rows = query_over(stream, &local, "root", "111", MY_HOST).unwrap();
    assert_eq!(host_of(rows), own.to_string());

    // The backend stayed healthy: its checks send a LOCAL header it accepts.
    assert_eq!(admin.backend("pp")["health"], "up");
}

#[test]
fn a_backend_with_proxy_protocol_sees_each_clients_own_address() {
    let _servers = servers::shared();
    let backend = proxy_backend();
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("pp", backend).proxy_protocol())
        .start();
    let stream = TcpStream::connect(ferry.addr).unwrap();
    let own = stream.local_addr().unwrap();
    let rows = query_over(stream, &[], "root", "111", MY_HOST).unwrap();
    // Without the header the backend would see ferry's own outgoing port.
    assert_eq!(host_of(rows), own.to_string());

    // Without `proxy_protocol` on the backend it sees ferry, not the client.
    let plain = ConfigBuilder::new()
        .backend(Backend::new("plain", backend))
        .start();
    let stream = TcpStream::connect(plain.addr).unwrap();
    let own = stream.local_addr().unwrap();
    let rows = query_over(stream, &[], "root", "111", MY_HOST).unwrap();
    assert_ne!(host_of(rows), own.to_string());
}

#[test]
fn a_header_from_an_untrusted_address_is_refused() {
    let _servers = servers::shared();
    for trusted in [Some(r#"proxy_protocol: (trusted: ["10.0.0.0/8"])"#), None] {
        let mut config = ConfigBuilder::new().backend(Backend::new("cn1", backends()[0]));
        if let Some(field) = trusted {
            config = config.field(field);
        }
        let ferry = config.start();
        let stream = TcpStream::connect(ferry.addr).unwrap();
        assert_closed_without_login(stream, &header("10.1.2.3:4567"));
        wait_log(
            &ferry,
            "PROXY header from an address not in proxy_protocol.trusted",
        );
        // The text form too.
        let stream = TcpStream::connect(ferry.addr).unwrap();
        assert_closed_without_login(stream, b"PROXY TCP4 10.1.2.3 127.0.0.1 4567 6009\r\n");
        // A client without a header is served as always.
        let mut conn = ferry.connect("root", "111").unwrap();
        assert_eq!(conn.query_first::<u32, _>("SELECT 1").unwrap(), Some(1));
    }
}

#[test]
fn a_trusted_peer_must_send_a_good_header() {
    let _servers = servers::shared();
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", backends()[0]))
        .field(r#"proxy_protocol: (trusted: ["127.0.0.0/8"])"#)
        .field("login_timeout_ms: 1000")
        .start();
    // No header at all: closed at the login timeout (a MySQL client waits for the greeting).
    let started = Instant::now();
    let stream = TcpStream::connect(ferry.addr).unwrap();
    assert_closed_without_login(stream, &[]);
    assert!(started.elapsed() >= Duration::from_millis(900));
    wait_log(
        &ferry,
        "trusted peer sent no PROXY header before the login timeout",
    );
    // A v1 header, a bad version, garbage: closed at once with the reason.
    for (bad, why) in [
        (
            b"PROXY TCP4 10.1.2.3 127.0.0.1 4567 6009\r\n".to_vec(),
            "only v2 is accepted",
        ),
        (
            [&proxy_header::SIGNATURE[..], &[0x11, 0x11, 0, 0]].concat(),
            "version 1, expected 2",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "no PROXY protocol v2 header",
        ),
    ] {
        let started = Instant::now();
        let stream = TcpStream::connect(ferry.addr).unwrap();
        assert_closed_without_login(stream, &bad);
        assert!(started.elapsed() < Duration::from_millis(900), "{why}");
        wait_log(&ferry, why);
    }
    assert!(ferry.log().contains("bad PROXY header from a trusted peer"));
}

#[test]
fn connections_waiting_for_their_header_count_towards_max_connections() {
    let _servers = servers::shared();
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", backends()[0]))
        .field(r#"proxy_protocol: (trusted: ["127.0.0.0/8"])"#)
        .field("limits: (max_connections: 2)")
        .field("login_timeout_ms: 20000")
        .start();
    // Two trusted peers that never send their header hold both slots.
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(ferry.addr).unwrap())
        .collect();
    let admin = Admin::of(&ferry);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin
        .http("GET", "/metrics", None)
        .1
        .contains("\nferry_client_connections 2\n")
    {
        assert!(Instant::now() < deadline, "two connections counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A third is refused with 1040 before it sends anything.
    let mut third = TcpStream::connect(ferry.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = third.read_to_end(&mut reply);
    assert!(
        reply.len() > 6 && reply[4] == 0xff && u16::from_le_bytes([reply[5], reply[6]]) == 1040,
        "{reply:?}"
    );
    // Closing them frees the slots.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin
        .http("GET", "/metrics", None)
        .1
        .contains("\nferry_client_connections 0\n")
    {
        assert!(Instant::now() < deadline, "the slots freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}
