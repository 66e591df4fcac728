//! The login exchange, both ends driven in memory with a fake clock: given
//! these packets, the session emits these. Traces are insta snapshots.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_core::auth::{scramble_native, StoredCredential, StoredHash};
use ferry_core::cluster::{BackendId, LabelGroup, NoBackend, Route};
use ferry_core::labels::Labels;
use ferry_core::login::client::Greeting;
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::status::*;
use ferry_core::packets::{AuthSwitchRequest, ErrPacket, Handshake, HandshakeResponse, OkPacket};
use ferry_core::session::{BackendHandle, CloseReason, Input, Output, Session, SessionConfig};

/// The first backend connection of a session.
const B0: BackendHandle = BackendHandle(0);
use ferry_core::users::UserDirectory;
use ferry_core::wire::{write_packet, PacketDecoder};
use ferry_core::Timestamp;

const FERRY_SALT: [u8; 20] = *b"ferry-salt-012345678";
const BACKEND_SALT: &[u8; 20] = b"backend-salt-9876543";

fn users() -> Arc<UserDirectory> {
    let mut d = UserDirectory::default();
    d.insert(None, "root".into(), StoredCredential::from_password("111"));
    d.insert(
        Some("acc1".into()),
        "app".into(),
        StoredCredential::Native(
            StoredHash::parse("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7").unwrap(),
        ),
    );
    Arc::new(d)
}

fn frame(seq: u8, f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut payload = BytesMut::new();
    f(&mut payload);
    let mut out = BytesMut::new();
    write_packet(&mut out, seq, &payload);
    out.freeze()
}

/// A session plus a readable log of everything that crossed it.
struct Harness {
    session: Session,
    now: Timestamp,
    trace: String,
    to_client: Vec<Bytes>,
    to_backend: Vec<Bytes>,
    closed: Option<CloseReason>,
}

impl Harness {
    fn new() -> Self {
        let greeting = Greeting {
            server_version: "5.5.5-10.11.6-MariaDB".into(),
            connection_id: 7,
            salt: FERRY_SALT,
            collation: 45,
            capabilities: FERRY_SUPPORTED,
        };
        let config = SessionConfig {
            login_timeout: Duration::from_secs(10),
            backend_timeout: Duration::from_secs(5),
            max_packet_size: 1 << 20,
            ..SessionConfig::default()
        };
        let session = Session::new(
            Timestamp::ZERO,
            config,
            greeting,
            users(),
            "127.0.0.1".into(),
        );
        let mut h = Harness {
            session,
            now: Timestamp::ZERO,
            trace: String::new(),
            to_client: Vec::new(),
            to_backend: Vec::new(),
            closed: None,
        };
        h.drain();
        h
    }

    fn feed(&mut self, input: Input) {
        let line = match &input {
            Input::ClientData(b) => format!("client -> ferry  {}", describe(b, Side::FromClient)),
            Input::BackendData(_, b) => {
                format!("backend -> ferry {}", describe(b, Side::FromBackend))
            }
            other => format!("input            {other:?}"),
        };
        writeln!(self.trace, "{line}").unwrap();
        self.session.handle(self.now, input);
        self.drain();
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        writeln!(self.trace, "time             +{d:?}").unwrap();
        self.feed(Input::Timeout);
    }

    fn drain(&mut self) {
        while let Some(out) = self.session.poll_output() {
            let line = match &out {
                Output::ToClient(b) => {
                    self.to_client.push(b.clone());
                    format!("ferry -> client  {}", describe(b, Side::ToClient))
                }
                Output::ToBackend(_, b) => {
                    self.to_backend.push(b.clone());
                    format!("ferry -> backend {}", describe(b, Side::ToBackend))
                }
                Output::Route(r) => {
                    format!("route            tenant={:?} labels={}", r.tenant, r.labels)
                }
                Output::Connect(_, r) => format!("connect          {} {}", r.backend, r.addr),
                Output::Locate(id) => format!("locate           session {id}"),
                Output::RunElsewhere(r) => format!("run elsewhere    {} {:?}", r.backend, r.sql),
                Output::Close(reason) => {
                    self.closed = Some(reason.clone());
                    format!("close            {reason:?}")
                }
                Output::Event(e) => format!("event            {e:?}"),
                Output::Transfer(t) => {
                    format!("transfer         from {} to {:?}", t.from.backend, t.to)
                }
                Output::TransferBack { moved, original } => {
                    format!("transfer back    {} -> {}", moved.backend, original.backend)
                }
                Output::CloseBackend(h) => format!("close backend    {h}"),
                Output::CloseSession { id, why } => format!("close session    {id}: {why}"),
            };
            writeln!(self.trace, "{line}").unwrap();
        }
    }

    /// The client answers ferry's handshake as `user` with `password` (mysql_native_password).
    fn client_logs_in(&mut self, user: &str, password: &str) {
        let salt = self.client_salt();
        let response = client_response(user, password, &salt, "mysql_native_password");
        self.feed(Input::ClientData(response));
    }

    /// The cluster routes to `id`, ferry connects, and the backend greets it.
    fn backend_greets(&mut self, id: &str) {
        route_to(self, id);
        self.feed(Input::BackendData(B0, backend_handshake()));
    }

    /// The backend accepts the login and ferry's tracker set-up.
    fn backend_accepts(&mut self, ok_seq: u8) {
        self.feed(Input::BackendData(B0, backend_ok(ok_seq)));
        self.feed(Input::BackendData(B0, backend_tracker_setup()));
    }

    /// The salt in ferry's handshake to the client.
    fn client_salt(&self) -> Vec<u8> {
        let mut d = PacketDecoder::new(1 << 20);
        d.extend(&self.to_client[0]);
        Handshake::parse(&d.decode().unwrap().unwrap().payload)
            .unwrap()
            .auth_data
    }
}

#[derive(Clone, Copy)]
enum Side {
    FromClient,
    ToClient,
    FromBackend,
    ToBackend,
}

/// One line per packet, naming what it is.
fn describe(bytes: &[u8], side: Side) -> String {
    let mut d = PacketDecoder::new(1 << 24);
    d.extend(bytes);
    let mut parts = Vec::new();
    while let Ok(Some(p)) = d.decode() {
        let body = &p.payload[..];
        let text = match (side, body.first()) {
            (Side::ToClient | Side::FromBackend, Some(0x0a)) if p.seq == 0 => {
                let h = Handshake::parse(body).unwrap();
                format!(
                    "Handshake version={:?} id={} salt={:?} plugin={:?}",
                    h.server_version,
                    h.connection_id,
                    String::from_utf8_lossy(&h.auth_data),
                    h.auth_plugin.unwrap_or_default()
                )
            }
            (Side::FromClient | Side::ToBackend, _) if p.seq == 1 && body.len() > 32 => {
                match HandshakeResponse::parse(body) {
                    Ok(r) => format!(
                        "HandshakeResponse user={:?} db={:?} plugin={:?} auth={} bytes attrs={:?}",
                        r.user,
                        r.database,
                        r.auth_plugin.unwrap_or_default(),
                        r.auth_response.len(),
                        r.attributes
                    ),
                    Err(e) => format!("unparsable response: {e}"),
                }
            }
            (Side::ToClient | Side::FromBackend, Some(0x00)) => {
                let ok = OkPacket::parse(body, CLIENT_PROTOCOL_41).unwrap();
                format!("OK status={:#06x}", ok.status)
            }
            (_, Some(0xFF)) => {
                let e = ErrPacket::parse(body).unwrap();
                format!("ERR {} ({}) {}", e.code, e.sql_state_str(), e.message)
            }
            (Side::FromBackend, Some(0xFE)) if p.seq > 4 => "OK (end of result set)".to_string(),
            (Side::ToClient | Side::FromBackend, Some(0xFE)) => {
                let s = AuthSwitchRequest::parse(body).unwrap();
                format!(
                    "AuthSwitch plugin={} salt={:?}",
                    s.plugin,
                    String::from_utf8_lossy(&s.data)
                )
            }
            (Side::FromClient | Side::ToBackend, Some(0x03)) => {
                format!("COM_QUERY {:?}", String::from_utf8_lossy(&body[1..]))
            }

            _ => format!("{} bytes", body.len()),
        };
        parts.push(format!("#{} {text}", p.seq));
    }
    if parts.is_empty() {
        format!("{} raw bytes", bytes.len())
    } else {
        parts.join(" | ")
    }
}

fn client_response(user: &str, password: &str, salt: &[u8], plugin: &str) -> Bytes {
    let r = HandshakeResponse {
        capabilities: FERRY_SUPPORTED,
        mariadb_capabilities: 0,
        max_packet_size: 1 << 24,
        collation: 45,
        user: user.into(),
        auth_response: scramble_native(salt, password.as_bytes()),
        database: Some("test".into()),
        auth_plugin: Some(plugin.into()),
        attributes: vec![
            ("_client_name".into(), "libmariadb".into()),
            ("zone".into(), "a".into()),
        ],
    };
    frame(1, |b| r.write(b))
}

fn backend_handshake() -> Bytes {
    let h = Handshake {
        server_version: "5.5.5-10.11.6-MariaDB".into(),
        connection_id: 501,
        auth_data: BACKEND_SALT.to_vec(),
        capabilities: 0xF7FE | (0x81FF << 16),
        mariadb_capabilities: 0x1d,
        collation: 45,
        status: SERVER_STATUS_AUTOCOMMIT,
        auth_plugin: Some("mysql_native_password".into()),
    };
    frame(0, |b| h.write(b))
}

fn backend_ok(seq: u8) -> Bytes {
    frame(seq, |b| {
        OkPacket {
            status: SERVER_STATUS_AUTOCOMMIT,
            ..OkPacket::default()
        }
        .write(b, CLIENT_PROTOCOL_41)
    })
}

/// The backend's answers to ferry's tracker set-up: the settings row, then the SET's OK.
fn backend_tracker_setup() -> Bytes {
    use ferry_core::packets::codec::{put_lenenc_bytes, put_lenenc_int};
    let mut out = BytesMut::new();
    let mut payload = BytesMut::new();
    put_lenenc_int(&mut payload, 4);
    write_packet(&mut out, 1, &payload);
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let mut col = BytesMut::new();
        for s in ["def", "", "", "", name, ""] {
            put_lenenc_bytes(&mut col, s.as_bytes());
        }
        col.extend_from_slice(&[0x0c, 33, 0, 0, 0, 0, 0, 253, 0, 0, 0, 0, 0]);
        write_packet(&mut out, 2 + i as u8, &col);
    }
    let mut row = BytesMut::new();
    for v in ["autocommit,time_zone", "1", "0", "OFF"] {
        put_lenenc_bytes(&mut row, v.as_bytes());
    }
    write_packet(&mut out, 6, &row);
    let end = OkPacket {
        header: 0xFE,
        status: SERVER_STATUS_AUTOCOMMIT,
        ..OkPacket::default()
    };
    let mut p = BytesMut::new();
    end.write(&mut p, CLIENT_PROTOCOL_41);
    write_packet(&mut out, 7, &p);
    let mut p = BytesMut::new();
    OkPacket {
        status: SERVER_STATUS_AUTOCOMMIT,
        ..OkPacket::default()
    }
    .write(&mut p, CLIENT_PROTOCOL_41);
    write_packet(&mut out, 1, &p);
    out.freeze()
}

fn route_to(h: &mut Harness, id: &str) {
    h.feed(Input::Routed(Route {
        backend: BackendId(id.into()),
        addr: "127.0.0.1:3308".parse().unwrap(),
        group: LabelGroup::default(),
    }));
    h.feed(Input::BackendConnected(B0));
}

#[test]
fn a_tenant_user_logs_in_and_the_backend_sees_the_bare_user() {
    let mut h = Harness::new();
    h.client_logs_in("acc1:app?region=eu", "secret");
    h.backend_greets("cn2");
    h.backend_accepts(2);

    // The backend got a valid scramble of the same password for its own salt.
    let mut d = PacketDecoder::new(1 << 20);
    d.extend(&h.to_backend[0]);
    let sent = HandshakeResponse::parse(&d.decode().unwrap().unwrap().payload).unwrap();
    assert_eq!(sent.user, "app");
    assert_eq!(sent.auth_response, scramble_native(BACKEND_SALT, b"secret"));
    assert_eq!(sent.database.as_deref(), Some("test"));
    assert!(h.session.is_forwarding());

    // After login, bytes pass through untouched and uncopied.
    let query = frame(0, |b| b.extend_from_slice(b"\x03SELECT 1"));
    h.feed(Input::ClientData(query.clone()));
    assert_eq!(
        h.to_backend.last().unwrap().as_ptr(),
        query.as_ptr(),
        "same buffer, no copy"
    );
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_wrong_password_is_refused_by_ferry_with_mysqls_wording() {
    let mut h = Harness::new();
    h.client_logs_in("root", "nope");
    assert!(matches!(h.closed, Some(CloseReason::LoginRefused(_))));
    insta::assert_snapshot!(h.trace);
}

#[test]
fn an_unknown_user_gets_the_same_1045() {
    let mut h = Harness::new();
    h.client_logs_in("nobody", "111");
    assert!(h.trace.contains(
        "ERR 1045 (28000) Access denied for user 'nobody'@'127.0.0.1' (using password: YES)"
    ));
}

#[test]
fn a_client_asking_for_another_plugin_is_switched_to_native_password() {
    let mut h = Harness::new();
    let salt = h.client_salt();
    let mut first =
        BytesMut::from(&client_response("root", "111", &salt, "caching_sha2_password")[..]);
    // Whatever the client put in auth data for its plugin is ignored.
    first[4 + 40] ^= 0xFF;
    h.feed(Input::ClientData(first.freeze()));
    let reply = frame(3, |b| b.extend_from_slice(&scramble_native(&salt, b"111")));
    h.feed(Input::ClientData(reply));
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_backend_auth_switch_is_answered_with_the_recovered_secret() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    let new_salt = b"another-salt-0123456";
    let switch = frame(2, |b| {
        AuthSwitchRequest {
            plugin: "mysql_native_password".into(),
            data: new_salt.to_vec(),
        }
        .write(b)
    });
    h.feed(Input::BackendData(B0, switch));
    assert_eq!(
        &h.to_backend.last().unwrap()[4..],
        &scramble_native(new_salt, b"111")[..]
    );
    h.backend_accepts(4);
    assert!(h.session.is_forwarding());
    insta::assert_snapshot!(h.trace);
}

#[test]
fn the_backends_err_reaches_the_client_unchanged_with_the_clients_sequence() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    let err = ErrPacket::new(
        1044,
        "42000",
        "Access denied for user 'root'@'%' to database 'test'",
    );
    h.feed(Input::BackendData(B0, frame(2, |b| err.write(b))));
    let last = h.to_client.last().unwrap();
    assert_eq!(last[3], 2, "sequence id continues the client's exchange");
    assert_eq!(ErrPacket::parse(&last[4..]).unwrap(), err);
    insta::assert_snapshot!(h.trace);
}

#[test]
fn no_matching_backend_is_a_clear_error_naming_tenant_and_labels() {
    let mut h = Harness::new();
    h.client_logs_in("acc9:root?region=us", "111");
    let mut labels = Labels::new();
    labels.insert("region", "us");
    h.feed(Input::RouteFailed(NoBackend {
        tenant: Some("acc9".into()),
        labels,
    }));
    insta::assert_snapshot!(h.trace);
}

#[test]
fn tls_requests_are_refused_until_tls_is_supported() {
    let mut h = Harness::new();
    let mut ssl = BytesMut::new();
    ssl.extend_from_slice(&(CLIENT_PROTOCOL_41 | CLIENT_SSL).to_le_bytes());
    ssl.extend_from_slice(&[0; 28]);
    h.feed(Input::ClientData(frame(1, |b| b.extend_from_slice(&ssl))));
    assert!(h.trace.contains("ERR 1235 (42000)"));
    assert!(h.closed.is_some());
}

#[test]
fn a_client_that_never_answers_is_closed_at_the_login_timeout() {
    let mut h = Harness::new();
    assert_eq!(
        h.session.poll_timeout(),
        Some(Timestamp::ZERO + Duration::from_secs(10))
    );
    h.advance(Duration::from_secs(9));
    assert_eq!(h.closed, None);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.closed, Some(CloseReason::LoginTimeout));
}

#[test]
fn a_silent_backend_fails_the_login_at_the_backend_timeout() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    route_to(&mut h, "cn1");
    h.advance(Duration::from_secs(5));
    // ferry tries another backend first; with none left the client hears about the first.
    assert!(h.closed.is_none(), "{}", h.trace);
    h.feed(Input::Transferred(Err("no other backend".into())));
    assert!(h.closed.is_some(), "{}", h.trace);
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_refused_backend_connect_is_retried_on_another_backend() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    route_to(&mut h, "cn1");
    h.feed(Input::BackendConnectFailed(B0, "connection refused".into()));
    h.feed(Input::Transferred(Ok(Route {
        backend: BackendId("cn2".into()),
        addr: "127.0.0.1:3308".parse().unwrap(),
        group: LabelGroup::default(),
    })));
    let b1 = BackendHandle(1);
    h.feed(Input::BackendConnected(b1));
    h.feed(Input::BackendData(b1, backend_handshake()));
    h.feed(Input::BackendData(b1, backend_ok(2)));
    h.feed(Input::BackendData(b1, backend_tracker_setup()));
    assert!(h.session.is_forwarding(), "{}", h.trace);
    assert_eq!(h.session.backend(), Some(b1));
    insta::assert_snapshot!(h.trace);
}

#[test]
fn garbage_instead_of_a_login_gets_an_error_and_a_close() {
    let mut h = Harness::new();
    h.feed(Input::ClientData(Bytes::from_static(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )));
    assert!(h.closed.is_some(), "closed: {}", h.trace);
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_login_split_into_single_bytes_still_works() {
    let mut h = Harness::new();
    let salt = h.client_salt();
    let response = client_response("root", "111", &salt, "mysql_native_password");
    for i in 0..response.len() {
        h.session
            .handle(h.now, Input::ClientData(response.slice(i..i + 1)));
        h.drain();
    }
    assert!(
        h.trace
            .contains("route            tenant=None labels={zone=a}"),
        "{}",
        h.trace
    );
}

#[test]
fn a_backend_that_refuses_session_tracking_still_serves_but_its_sessions_cannot_move() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    h.feed(Input::BackendData(B0, backend_ok(2)));
    let err = ErrPacket::new(
        1193,
        "HY000",
        "Unknown system variable 'session_track_system_variables'",
    );
    // Neither the settings query nor the set-up is known to this server.
    let mut payload = BytesMut::new();
    err.write(&mut payload);
    let mut both = BytesMut::new();
    write_packet(&mut both, 1, &payload);
    write_packet(&mut both, 1, &payload);
    h.feed(Input::BackendData(B0, both.freeze()));
    assert!(h.session.is_forwarding(), "{}", h.trace);
    let status = h.session.status().unwrap();
    assert!(!status.safe);
    assert!(
        status.blocked_by[0].contains("refused session tracking"),
        "{status:?}"
    );
}
