//! What the session tests share: a [`Harness`] that drives one [`Session`]
//! in memory with a fake clock and logs everything that crosses it as
//! readable lines, and the packets a client and a backend send at login.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_core::auth::{scramble_native, StoredCredential, StoredHash};
use ferry_core::cluster::{BackendId, LabelGroup, Route};
pub use ferry_core::login::client::{Greeting, TlsOffer};
use ferry_core::packets::codec::{put_lenenc_bytes, put_lenenc_int, Reader};
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::command::*;
use ferry_core::packets::flags::status::*;
use ferry_core::packets::{AuthSwitchRequest, ErrPacket, Handshake, HandshakeResponse, OkPacket};
use ferry_core::session::{BackendHandle, CloseReason, Input, Output, Session, SessionConfig};
use ferry_core::users::UserDirectory;
use ferry_core::wire::{write_packet, PacketDecoder};
use ferry_core::Timestamp;

/// The first backend connection of a session.
pub const B0: BackendHandle = BackendHandle(0);

pub const FERRY_SALT: [u8; 20] = *b"ferry-salt-012345678";
pub const BACKEND_SALT: &[u8; 20] = b"backend-salt-9876543";

/// The capabilities the test backends offer (MariaDB 10.11's, less SSL).
pub const BACKEND_CAPS: u32 = 0xF7FE | (0x81FF << 16);

pub fn users() -> Arc<UserDirectory> {
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

pub fn frame(seq: u8, f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut payload = BytesMut::new();
    f(&mut payload);
    let mut out = BytesMut::new();
    write_packet(&mut out, seq, &payload);
    out.freeze()
}

/// How the trace names backend traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceStyle {
    /// One backend: "backend -> ferry", packets described as a login sees them.
    Login,
    /// Several backend connections: each line names its handle, and
    /// command-phase packets (prepares, executes, result sets) are spelled out.
    Handles,
}

/// The limits [`Harness::new`] runs a session under.
pub fn test_config() -> SessionConfig {
    SessionConfig {
        login_timeout: Duration::from_secs(10),
        backend_timeout: Duration::from_secs(5),
        max_packet_size: 1 << 20,
        ..SessionConfig::default()
    }
}

/// A session plus a readable log of everything that crossed it.
pub struct Harness {
    pub session: Session,
    pub now: Timestamp,
    pub trace: String,
    pub to_client: Vec<Bytes>,
    pub to_backend: Vec<Bytes>,
    /// Every output, in order, as the session emitted it.
    pub outputs: Vec<Output>,
    pub closed: Option<CloseReason>,
    pub style: TraceStyle,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(test_config(), TraceStyle::Login)
    }

    pub fn with(config: SessionConfig, style: TraceStyle) -> Self {
        Self::with_mariadb(config, style, 0)
    }

    /// Like [`Harness::with`], with the backends' MariaDB extended capabilities known.
    pub fn with_mariadb(config: SessionConfig, style: TraceStyle, mariadb: u32) -> Self {
        Self::with_greeting(config, style, mariadb, TlsOffer::Off)
    }

    /// A harness whose greeting offers (or requires) TLS as `tls` says.
    pub fn with_tls(config: SessionConfig, style: TraceStyle, tls: TlsOffer) -> Self {
        Self::with_greeting(config, style, 0, tls)
    }

    fn with_greeting(
        config: SessionConfig,
        style: TraceStyle,
        mariadb: u32,
        tls: TlsOffer,
    ) -> Self {
        let greeting = Greeting {
            server_version: "5.5.5-10.11.6-MariaDB".into(),
            connection_id: 7,
            salt: FERRY_SALT,
            collation: 45,
            // A MariaDB greeting (the only kind with extended capabilities) clears CLIENT_MYSQL.
            capabilities: if mariadb == 0 {
                FERRY_SUPPORTED
            } else {
                FERRY_SUPPORTED & !CLIENT_MYSQL
            },
            mariadb_capabilities: mariadb,
            tls,
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
            outputs: Vec::new(),
            closed: None,
            style,
        };
        h.drain();
        h
    }

    pub fn feed(&mut self, input: Input) {
        let line = match (&input, self.style) {
            (Input::ClientData(b), TraceStyle::Login) => {
                format!("client -> ferry  {}", describe(b, Side::FromClient))
            }
            (Input::BackendData(_, b), TraceStyle::Login) => {
                format!("backend -> ferry {}", describe(b, Side::FromBackend))
            }
            (Input::ClientData(b), TraceStyle::Handles) => {
                format!("client -> ferry  {}", describe_session(b, Side::FromClient))
            }
            (Input::BackendData(h, b), TraceStyle::Handles) => {
                format!(
                    "{:<17}{}",
                    format!("{h} -> ferry"),
                    describe_session(b, Side::FromBackend)
                )
            }
            (other, _) => format!("input            {other:?}"),
        };
        writeln!(self.trace, "{line}").unwrap();
        self.session.handle(self.now, input);
        self.drain();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        writeln!(self.trace, "time             +{d:?}").unwrap();
        self.feed(Input::Timeout);
    }

    pub fn drain(&mut self) {
        while let Some(out) = self.session.poll_output() {
            let handles = self.style == TraceStyle::Handles;
            let line = match &out {
                Output::ToClient(b) if handles => {
                    self.to_client.push(b.clone());
                    format!("ferry -> client  {}", describe_session(b, Side::ToClient))
                }
                Output::ToClient(b) => {
                    self.to_client.push(b.clone());
                    format!("ferry -> client  {}", describe(b, Side::ToClient))
                }
                Output::ToBackend(h, b) if handles => {
                    self.to_backend.push(b.clone());
                    format!(
                        "{:<17}{}",
                        format!("ferry -> {h}"),
                        describe_session(b, Side::ToBackend)
                    )
                }
                Output::ToBackend(_, b) => {
                    self.to_backend.push(b.clone());
                    format!("ferry -> backend {}", describe(b, Side::ToBackend))
                }
                Output::Route(r) => {
                    format!("route            tenant={:?} labels={}", r.tenant, r.labels)
                }
                Output::Connect(h, r) if handles => {
                    format!("connect          {h} {} {}", r.backend, r.addr)
                }
                Output::Connect(_, r) => format!("connect          {} {}", r.backend, r.addr),
                Output::Locate => "locate           the live sessions".to_string(),
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
                Output::StartTls(early) => format!("start tls        {} early bytes", early.len()),
                Output::BackendTls(h) => format!("backend tls      {h}"),
                Output::CloseSession { id, why } => format!("close session    {id}: {why}"),
                Output::ReadUsers(r) => format!("read users       for '{}': {}", r.user, r.cause),
            };
            writeln!(self.trace, "{line}").unwrap();
            self.outputs.push(out);
        }
    }

    /// The client answers ferry's handshake as `user` with `password` (mysql_native_password).
    pub fn client_logs_in(&mut self, user: &str, password: &str) {
        let salt = self.client_salt();
        let response = client_response(user, password, &salt, "mysql_native_password");
        self.feed(Input::ClientData(response));
    }

    /// The cluster routes to `id`, ferry connects, and the backend greets it.
    pub fn backend_greets(&mut self, id: &str) {
        route_to(self, id);
        self.feed(Input::BackendData(B0, backend_handshake()));
    }

    /// The backend accepts the login and ferry's tracker set-up.
    pub fn backend_accepts(&mut self, ok_seq: u8) {
        self.feed(Input::BackendData(B0, backend_ok(ok_seq)));
        self.feed(Input::BackendData(B0, backend_tracker_setup()));
    }

    /// The salt in ferry's handshake to the client.
    pub fn client_salt(&self) -> Vec<u8> {
        let mut d = PacketDecoder::new(1 << 20);
        d.extend(&self.to_client[0]);
        Handshake::parse(&d.decode().unwrap().unwrap().payload)
            .unwrap()
            .auth_data
    }
}

#[derive(Clone, Copy)]
pub enum Side {
    FromClient,
    ToClient,
    FromBackend,
    ToBackend,
}

/// One line per packet, naming what it is (as a login sees them).
pub fn describe(bytes: &[u8], side: Side) -> String {
    let mut d = PacketDecoder::new(1 << 24);
    d.extend(bytes);
    let mut parts = Vec::new();
    while let Ok(Some(p)) = d.decode() {
        let body = &p.payload[..];
        let text = match (side, body.first()) {
            (Side::ToClient | Side::FromBackend, Some(0x0a)) if p.seq == 0 => {
                describe_handshake(body)
            }
            (Side::FromClient | Side::ToBackend, _) if p.seq == 1 && body.len() > 32 => {
                describe_response(body)
            }
            (Side::ToClient | Side::FromBackend, Some(0x00)) => {
                let ok = OkPacket::parse(body, CLIENT_PROTOCOL_41).unwrap();
                format!("OK status={:#06x}", ok.status)
            }
            (_, Some(0xFF)) => describe_err(body),
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

fn describe_handshake(body: &[u8]) -> String {
    let h = Handshake::parse(body).unwrap();
    format!(
        "Handshake version={:?} id={} salt={:?} plugin={:?}",
        h.server_version,
        h.connection_id,
        String::from_utf8_lossy(&h.auth_data),
        h.auth_plugin.unwrap_or_default()
    )
}

fn describe_response(body: &[u8]) -> String {
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

fn describe_err(body: &[u8]) -> String {
    let e = ErrPacket::parse(body).unwrap();
    format!("ERR {} ({}) {}", e.code, e.sql_state_str(), e.message)
}

fn u32_at(body: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]])
}

/// One line per packet, naming what it is, for sessions past their login:
/// commands with their statement ids, prepare replies, result sets cell by cell.
pub fn describe_session(bytes: &[u8], side: Side) -> String {
    let mut d = PacketDecoder::new(1 << 24);
    d.extend(bytes);
    let mut parts = Vec::new();
    while let Ok(Some(p)) = d.decode() {
        let body = &p.payload[..];
        let from_server = matches!(side, Side::ToClient | Side::FromBackend);
        let text = match (from_server, body.first().copied()) {
            (true, Some(0x0a)) if p.seq == 0 && body.len() > 40 => describe_handshake(body),
            (false, _) if p.seq == 1 && body.len() > 32 => describe_response(body),
            (false, Some(c)) if p.seq == 0 => describe_command(c, body),
            (true, Some(0x00)) if body.len() == 12 && body[9] == 0 => format!(
                "PREPARE_OK id={} columns={} params={}",
                u32_at(body, 1),
                u16::from_le_bytes([body[5], body[6]]),
                u16::from_le_bytes([body[7], body[8]])
            ),
            (true, Some(0x00)) => describe_ok(body),
            (_, Some(0xFF)) => describe_err(body),
            (true, Some(0xFE)) if body.len() < 0xFF_FFFF => {
                let ok = OkPacket::parse(body, CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK);
                match ok {
                    Ok(ok) => format!("END status={:#06x}", ok.status),
                    Err(_) => "EOF".into(),
                }
            }
            (true, Some(_)) if body.len() > 4 && &body[..4] == b"\x03def" => {
                let mut r = Reader::new(body, "column");
                let mut name = String::new();
                for _ in 0..5 {
                    name = String::from_utf8_lossy(r.lenenc_bytes().unwrap_or_default()).into();
                }
                format!("column {name}")
            }
            (true, Some(n)) if body.len() == 1 && n < 0xFB => format!("columns={n}"),
            (true, Some(_)) => describe_row(body),
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

fn describe_command(code: u8, body: &[u8]) -> String {
    let text = || String::from_utf8_lossy(&body[1..]).into_owned();
    match code {
        COM_QUERY => format!("COM_QUERY {:?}", text()),
        COM_INIT_DB => format!("COM_INIT_DB {:?}", text()),
        COM_STMT_PREPARE => format!("COM_STMT_PREPARE {:?}", text()),
        COM_STMT_EXECUTE if body.len() >= 10 => format!(
            "COM_STMT_EXECUTE id={} params={:02x?}",
            u32_at(body, 1),
            &body[10..]
        ),
        COM_STMT_CLOSE if body.len() >= 5 => format!("COM_STMT_CLOSE id={}", u32_at(body, 1)),
        COM_STMT_RESET if body.len() >= 5 => format!("COM_STMT_RESET id={}", u32_at(body, 1)),
        COM_QUIT => "COM_QUIT".into(),
        COM_PING => "COM_PING".into(),
        _ => format!("{} bytes", body.len()),
    }
}

fn describe_ok(body: &[u8]) -> String {
    let Ok(ok) = OkPacket::parse(body, CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK) else {
        return format!("{} bytes", body.len());
    };
    let mut s = format!("OK status={:#06x}", ok.status);
    if ok.affected_rows != 0 {
        let _ = write!(s, " affected={}", ok.affected_rows);
    }
    if ok.last_insert_id != 0 {
        let _ = write!(s, " insert_id={}", ok.last_insert_id);
    }
    if ok.warnings != 0 {
        let _ = write!(s, " warnings={}", ok.warnings);
    }
    if !ok.info.is_empty() {
        let _ = write!(s, " info={:?}", String::from_utf8_lossy(&ok.info));
    }
    if let Some(block) = &ok.session_state {
        match ferry_core::packets::session_state::parse(block) {
            Ok(items) => {
                let _ = write!(s, " state={items:?}");
            }
            Err(_) => s.push_str(" state=?"),
        }
    }
    s
}

fn describe_row(body: &[u8]) -> String {
    let mut r = Reader::new(body, "row");
    let mut cells = Vec::new();
    while !r.is_empty() {
        if r.peek() == Some(0xFB) {
            let _ = r.u8();
            cells.push("NULL".to_string());
        } else {
            match r.lenenc_bytes() {
                Ok(b) => cells.push(format!("{:?}", String::from_utf8_lossy(b))),
                Err(_) => return format!("{} bytes", body.len()),
            }
        }
    }
    format!("row [{}]", cells.join(", "))
}

pub fn client_response(user: &str, password: &str, salt: &[u8], plugin: &str) -> Bytes {
    client_response_mariadb(user, password, salt, plugin, 0)
}

/// A handshake response asking for MariaDB extended capabilities `mariadb`.
pub fn client_response_mariadb(
    user: &str,
    password: &str,
    salt: &[u8],
    plugin: &str,
    mariadb: u32,
) -> Bytes {
    let r = HandshakeResponse {
        capabilities: FERRY_SUPPORTED,
        mariadb_capabilities: mariadb,
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

/// A backend's greeting with thread id `connection_id`.
pub fn backend_handshake_with_id(connection_id: u32) -> Bytes {
    backend_handshake_mariadb(connection_id, 0x1d)
}

/// A backend's greeting offering MariaDB extended capabilities `mariadb`.
pub fn backend_handshake_mariadb(connection_id: u32, mariadb: u32) -> Bytes {
    let h = Handshake {
        server_version: "5.5.5-10.11.6-MariaDB".into(),
        connection_id,
        auth_data: BACKEND_SALT.to_vec(),
        capabilities: BACKEND_CAPS,
        mariadb_capabilities: mariadb,
        collation: 45,
        status: SERVER_STATUS_AUTOCOMMIT,
        auth_plugin: Some("mysql_native_password".into()),
    };
    frame(0, |b| h.write(b))
}

pub fn backend_handshake() -> Bytes {
    backend_handshake_with_id(501)
}

pub fn backend_ok(seq: u8) -> Bytes {
    frame(seq, |b| {
        OkPacket {
            status: SERVER_STATUS_AUTOCOMMIT,
            ..OkPacket::default()
        }
        .write(b, CLIENT_PROTOCOL_41)
    })
}

/// The backend's answers to ferry's tracker set-up: the settings row, then the SET's OK.
pub fn backend_tracker_setup() -> Bytes {
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

/// A route to backend `id`.
pub fn route(id: &str) -> Route {
    Route {
        backend: BackendId(id.into()),
        addr: "127.0.0.1:3308".parse().unwrap(),
        group: LabelGroup::default(),
        tls: false,
    }
}

pub fn route_to(h: &mut Harness, id: &str) {
    h.feed(Input::Routed(route(id)));
    h.feed(Input::BackendConnected(B0));
}
