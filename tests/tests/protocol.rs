//! Byte for byte: every command shape gets the same response through ferry
//! as directly from MariaDB, with and without the client negotiating
//! `CLIENT_DEPRECATE_EOF` and `CLIENT_SESSION_TRACK`.
//!
//! A raw protocol client (built on ferry-core's packets, but reading the
//! response bytes without interpreting them) runs one script directly and
//! once through ferry, in a freshly recreated database each time, and the
//! two byte streams are compared as they are (the script prints no
//! connection ids or timings).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_core::auth::scramble_native;
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::command::*;
use ferry_core::packets::{Handshake, HandshakeResponse};
use ferry_core::wire::{write_packet, PacketDecoder};
use ferry_tests::{backends, Backend, ConfigBuilder};

/// A client that sends packets and collects raw response bytes.
struct RawConn {
    stream: TcpStream,
}

impl RawConn {
    /// Logs in as `user` with `caps` (cut to the server's), into `db` if given.
    fn connect(addr: &str, user: &str, password: &str, db: Option<&str>, caps: u32) -> RawConn {
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        let mut decoder = PacketDecoder::new(1 << 20);
        let hs = loop {
            if let Some(p) = decoder.decode().unwrap() {
                break Handshake::parse(&p.payload).unwrap();
            }
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed before handshake");
            decoder.extend(&buf[..n]);
        };
        let response = HandshakeResponse {
            capabilities: caps & hs.capabilities | CLIENT_PROTOCOL_41,
            mariadb_capabilities: 0,
            max_packet_size: 1 << 24,
            collation: 45,
            user: user.into(),
            auth_response: scramble_native(&hs.auth_data, password.as_bytes()),
            database: db.map(str::to_string),
            auth_plugin: Some("mysql_native_password".into()),
            attributes: Vec::new(),
        };
        let mut payload = BytesMut::new();
        response.write(&mut payload);
        let mut out = BytesMut::new();
        write_packet(&mut out, 1, &payload);
        stream.write_all(&out).unwrap();
        let mut conn = RawConn { stream };
        let reply = conn.read_quiet(Duration::from_millis(300));
        assert_eq!(reply.get(4), Some(&0x00), "login failed: {reply:?}");
        conn
    }

    fn send(&mut self, seq: u8, payload: &[u8]) {
        let mut out = BytesMut::new();
        write_packet(&mut out, seq, payload);
        self.stream.write_all(&out).unwrap();
    }

    /// Reads until nothing arrives for `quiet`.
    fn read_quiet(&mut self, quiet: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        self.stream.set_read_timeout(Some(quiet)).unwrap();
        let mut buf = [0u8; 65536];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        got
    }

    /// Reads exactly `n` bytes (or what arrives within a deadline), then checks nothing more follows.
    fn read_exact_then_quiet(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        self.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 65536];
        while got.len() < n && Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(_) => {}
            }
        }
        got.extend(self.read_quiet(Duration::from_millis(40)));
        got
    }
}

/// One step of a script: a command (payload, sequence id) and what to send after its first reply.
struct Step {
    name: &'static str,
    packets: Vec<(u8, Vec<u8>)>,
}

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![COM_QUERY];
    p.extend_from_slice(sql.as_bytes());
    p
}

fn q(name: &'static str, sql: &str) -> Step {
    Step {
        name,
        packets: vec![(0, query(sql))],
    }
}

fn cmd(name: &'static str, payload: Vec<u8>) -> Step {
    Step {
        name,
        packets: vec![(0, payload)],
    }
}

fn stmt_execute(id: u32, cursor: u8, params: &[(u8, &[u8])]) -> Vec<u8> {
    let mut p = vec![COM_STMT_EXECUTE];
    p.extend_from_slice(&id.to_le_bytes());
    p.push(cursor);
    p.extend_from_slice(&1u32.to_le_bytes());
    if !params.is_empty() {
        p.extend(std::iter::repeat_n(0u8, params.len().div_ceil(8)));
        p.push(1); // new params bound
        for (ty, _) in params {
            p.extend_from_slice(&[*ty, 0]);
        }
        for (_, v) in params {
            p.extend_from_slice(v);
        }
    }
    p
}

/// The script; statement ids in it are slots (1 = first prepared), replaced by the real ids.
fn script(db: &str) -> Vec<Step> {
    let mut long_data = vec![COM_STMT_SEND_LONG_DATA];
    long_data.extend_from_slice(&3u32.to_le_bytes());
    long_data.extend_from_slice(&0u16.to_le_bytes());
    long_data.extend_from_slice(b"long value");
    let mut fetch = vec![COM_STMT_FETCH];
    fetch.extend_from_slice(&2u32.to_le_bytes());
    fetch.extend_from_slice(&2u32.to_le_bytes());
    let mut close = vec![COM_STMT_CLOSE];
    close.extend_from_slice(&1u32.to_le_bytes());
    let mut reset = vec![COM_STMT_RESET];
    reset.extend_from_slice(&2u32.to_le_bytes());
    let mut infile_query = q(
        "local infile",
        "LOAD DATA LOCAL INFILE 'rows.txt' INTO TABLE t (v)",
    );
    infile_query.packets.push((2, b"x\ny\nz\n".to_vec()));
    infile_query.packets.push((3, Vec::new()));
    vec![
        q("select literal", "SELECT 1, 'two', NULL, 3.5"),
        q(
            "create table",
            "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100))",
        ),
        q("insert", "INSERT INTO t (v) VALUES ('a'), ('b'), ('c')"),
        q("select rows", "SELECT * FROM t ORDER BY id"),
        q("error", "SELECT * FROM no_such_table"),
        q(
            "multi statement",
            "SELECT 1; SELECT 2, 3; UPDATE t SET v = 'x' WHERE id = 1",
        ),
        q(
            "multi statement with error",
            "SELECT 1; SELECT * FROM nope; SELECT 3",
        ),
        q(
            "create procedure",
            "CREATE PROCEDURE two() BEGIN SELECT 1 AS a; SELECT 'b' AS b, 2 AS c; END",
        ),
        q("procedure with two result sets", "CALL two()"),
        q("begin", "BEGIN"),
        q("insert in txn", "INSERT INTO t (v) VALUES ('in txn')"),
        q("commit", "COMMIT"),
        q(
            "set variable",
            "SET @x = 42, SESSION sql_mode = 'ANSI_QUOTES'",
        ),
        q("use", &format!("USE {db}")),
        q("set names", "SET NAMES utf8mb4"),
        q("warnings", "SELECT CAST('abc' AS SIGNED)"),
        q("show warnings", "SHOW WARNINGS"),
        q(
            "long result wraps sequence ids",
            "SELECT seq, REPEAT('r', 10) FROM seq_1_to_600",
        ),
        q("big row", "SELECT REPEAT('z', 100000)"),
        cmd("ping", vec![COM_PING]),
        cmd("init db", [&[COM_INIT_DB][..], db.as_bytes()].concat()),
        cmd("field list", [&[COM_FIELD_LIST][..], b"t\0"].concat()),
        cmd(
            "prepare",
            [&[COM_STMT_PREPARE][..], b"SELECT v FROM t WHERE id > ?"].concat(),
        ),
        cmd("execute", stmt_execute(1, 0, &[(8, &1i64.to_le_bytes())])),
        cmd(
            "prepare for cursor",
            [&[COM_STMT_PREPARE][..], b"SELECT id, v FROM t ORDER BY id"].concat(),
        ),
        cmd("execute with cursor", stmt_execute(2, 1, &[])),
        cmd("fetch", fetch.clone()),
        cmd("fetch to the end", fetch),
        cmd("stmt reset", reset),
        cmd(
            "prepare insert",
            [&[COM_STMT_PREPARE][..], b"INSERT INTO t (v) VALUES (?)"].concat(),
        ),
        Step {
            name: "long data then execute",
            packets: vec![(0, long_data)],
        },
        cmd(
            "execute after long data",
            stmt_execute(3, 0, &[(0xfc, b"")]),
        ),
        cmd("stmt close", close),
        infile_query,
        q("select after infile", "SELECT COUNT(*) FROM t"),
        cmd(
            "set option multi statements off",
            vec![COM_SET_OPTION, 1, 0],
        ),
        cmd("set option multi statements on", vec![COM_SET_OPTION, 0, 0]),
        cmd("reset connection", vec![COM_RESET_CONNECTION]),
        q("after reset", "SELECT @x"),
    ]
}

fn reset_database(backend: &str, db: &str) {
    // No default database: it may not exist yet.
    let mut c = RawConn::connect(
        backend,
        "root",
        "111",
        None,
        CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH,
    );
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        c.send(0, &query(&sql));
        let r = c.read_quiet(Duration::from_millis(200));
        assert_eq!(r.get(4), Some(&0x00), "{sql}: {r:?}");
    }
}

/// Runs the script and returns, per step, the response bytes. `expected` gives
/// the byte counts to wait for (from the direct run), so the ferry run does not
/// have to wait for silence on every step.
fn run_script(conn: &mut RawConn, db: &str, expected: Option<&[Vec<u8>]>) -> Vec<Vec<u8>> {
    let mut responses = Vec::new();
    let mut ids: Vec<u32> = Vec::new();
    for (i, step) in script(db).iter().enumerate() {
        let mut got = Vec::new();
        for (seq, payload) in &step.packets {
            let mut payload = payload.clone();
            let refers_to_statement = matches!(
                payload.first(),
                Some(
                    &(COM_STMT_EXECUTE
                        | COM_STMT_SEND_LONG_DATA
                        | COM_STMT_CLOSE
                        | COM_STMT_RESET
                        | COM_STMT_FETCH)
                )
            );
            if refers_to_statement {
                let slot = u32::from_le_bytes(payload[1..5].try_into().unwrap()) as usize;
                payload[1..5].copy_from_slice(&ids[slot - 1].to_le_bytes());
            }
            let payload = &payload;
            conn.send(*seq, payload);
            let first = payload.first().copied();
            if matches!(first, Some(COM_STMT_CLOSE) | Some(COM_STMT_SEND_LONG_DATA)) {
                continue;
            }
            // LOCAL INFILE: the server asks for the file before the data goes.
            if step.name == "local infile" && *seq != 0 && !payload.is_empty() {
                continue;
            }
            got.extend(match expected {
                Some(e) if step.name != "local infile" => conn.read_exact_then_quiet(e[i].len()),
                _ => conn.read_quiet(Duration::from_millis(120)),
            });
        }
        if step.packets[0].1.first() == Some(&COM_STMT_PREPARE) && got.get(4) == Some(&0) {
            // Statement ids differ between connections: learn it, and mask it as its slot.
            ids.push(u32::from_le_bytes(got[5..9].try_into().unwrap()));
            got[5..9].copy_from_slice(&(ids.len() as u32).to_le_bytes());
        }
        responses.push(got);
    }
    responses
}

fn compare(caps: u32) {
    // Each variant has its own database (its name shows in column definitions).
    let db = format!("ferry_proto_{caps:x}");
    let backend_addr = backends()[0];
    let backend = backend_addr.to_string();
    let backend = backend.as_str();
    let ferry = ConfigBuilder::new()
        .backend(Backend::new("cn1", backend_addr))
        .start();

    reset_database(backend, &db);
    let mut direct = RawConn::connect(backend, "root", "111", Some(&db), caps);
    let want = run_script(&mut direct, &db, None);

    reset_database(backend, &db);
    let mut proxied = RawConn::connect(&ferry.addr.to_string(), "root", "111", Some(&db), caps);
    let got = run_script(&mut proxied, &db, Some(&want));

    for ((step, w), g) in script(&db).iter().zip(&want).zip(&got) {
        let silent = matches!(
            step.packets[0].1.first(),
            Some(&(COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA))
        );
        assert_eq!(w.is_empty(), silent, "{}: direct response {w:?}", step.name);
        assert_eq!(
            normalized(g, caps),
            normalized(w, caps),
            "step '{}' differs through ferry (caps {caps:#x})",
            step.name
        );
    }
}

/// The response with the entries of every session-state block sorted.
///
/// With `session_track_system_variables='*'` (which ferry needs) MariaDB lists
/// the same changed variables in another order than with the client's own
/// list; the entries are the same, and their order carries no meaning.
fn normalized(response: &[u8], caps: u32) -> Vec<u8> {
    use ferry_core::packets::session_state::{parse, write_all};
    use ferry_core::packets::OkPacket;
    if caps & CLIENT_SESSION_TRACK == 0 {
        return response.to_vec();
    }
    let mut decoder = PacketDecoder::new(1 << 30);
    decoder.extend(response);
    let mut out = BytesMut::new();
    while let Ok(Some(p)) = decoder.decode() {
        let mut payload = p.payload.to_vec();
        if matches!(payload.first(), Some(0x00 | 0xFE)) {
            if let Ok(mut ok) = OkPacket::parse(&payload, caps) {
                if let Some(items) = ok.session_state.as_deref().and_then(|b| parse(b).ok()) {
                    let mut items = items;
                    items.sort_by_key(|i| format!("{i:?}"));
                    let mut block = BytesMut::new();
                    write_all(&items, &mut block);
                    ok.session_state = Some(block.to_vec());
                    let mut p2 = BytesMut::new();
                    ok.write(&mut p2, caps);
                    payload = p2.to_vec();
                }
            }
        }
        write_packet(&mut out, p.seq, &payload);
    }
    out.to_vec()
}

const BASE: u32 = CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_TRANSACTIONS
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_LOCAL_FILES
    | CLIENT_LONG_FLAG;

#[test]
fn responses_match_direct_with_classic_eof() {
    compare(BASE);
}

#[test]
fn responses_match_direct_with_deprecate_eof() {
    compare(BASE | CLIENT_DEPRECATE_EOF);
}

#[test]
fn responses_match_direct_with_session_track() {
    compare(BASE | CLIENT_SESSION_TRACK);
}

#[test]
fn responses_match_direct_with_deprecate_eof_and_session_track() {
    compare(BASE | CLIENT_DEPRECATE_EOF | CLIENT_SESSION_TRACK);
}
