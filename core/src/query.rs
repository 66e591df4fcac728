//! A tiny sans-IO text-protocol client: log in to a backend, run queries,
//! read their result sets. ferry uses it to read `mysql.user` for user sync.
//!
//! Feed what the backend sends with [`QueryClient::handle`]; drain
//! [`QueryClient::poll_output`] after every call: bytes to send, and events.
//! Only small, text result sets are expected; rows are kept in memory.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::auth::Secret;
use crate::login::backend::{BackendLogin, BackendStep};
use crate::login::frame;
use crate::packets::codec::Reader;
use crate::packets::flags::caps::*;
use crate::packets::{EofPacket, ErrPacket, HandshakeResponse};
use crate::wire::{Packet, PacketDecoder};

/// Largest packet the client accepts.
const MAX_PACKET: usize = 16 << 20;
/// utf8mb4_general_ci.
const COLLATION: u8 = 45;
const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;

/// A text result set: column names and rows of optional (NULL) strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL. Bytes that are not UTF-8 are replaced.
    pub rows: Vec<Vec<Option<String>>>,
}

/// What the query client wants done, or has learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryOutput {
    /// Send these bytes to the backend.
    Send(Bytes),
    /// Upgrade the connection to TLS now (the SSLRequest was the last `Send`);
    /// the next `Send` goes over TLS.
    StartTls,
    /// Logged in; [`QueryClient::query`] may be called.
    Ready,
    /// The answer to the last query: rows (empty for a statement without a result set) or the server's error.
    Answer(Result<ResultSet, ErrPacket>),
    /// The login was refused or the backend broke the protocol; the client is finished.
    Failed(String),
}

#[derive(Debug)]
enum State {
    Login(Box<BackendLogin>),
    Idle,
    ColumnCount,
    Columns { left: u64, rs: ResultSet },
    ColumnsEof(ResultSet),
    Rows(ResultSet),
    Done,
}

/// One connection's worth of the text protocol.
#[derive(Debug)]
pub struct QueryClient {
    state: State,
    decoder: PacketDecoder,
    outputs: VecDeque<QueryOutput>,
}

impl QueryClient {
    /// A client that will log in as `user` with `password` once the backend's handshake arrives.
    pub fn new(user: &str, password: &str) -> Self {
        Self::with_secret(user, Secret::from_password(password))
    }

    /// A client that logs in with a secret recovered from a client's login.
    pub fn with_secret(user: &str, secret: Secret) -> Self {
        let caps = CLIENT_LONG_PASSWORD
            | CLIENT_LONG_FLAG
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH;
        let template = HandshakeResponse {
            capabilities: caps,
            mariadb_capabilities: 0,
            max_packet_size: MAX_PACKET as u32,
            collation: COLLATION,
            user: user.to_string(),
            auth_response: Vec::new(),
            database: None,
            auth_plugin: None,
            attributes: Vec::new(),
        };
        let login = BackendLogin::new(template, secret, caps, false);
        QueryClient {
            state: State::Login(Box::new(login)),
            decoder: PacketDecoder::new(MAX_PACKET),
            outputs: VecDeque::new(),
        }
    }

    /// The same client, logging in over TLS when `tls` (the backend's `tls` setting is on).
    pub fn with_tls(mut self, tls: bool) -> Self {
        if let State::Login(login) = self.state {
            self.state = State::Login(Box::new(login.with_tls(tls)));
        }
        self
    }

    /// True when logged in and no query is running.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// True once the client failed or quit.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Sends `sql` (only when [`QueryClient::is_ready`]; otherwise fails the client).
    pub fn query(&mut self, sql: &str) {
        if !self.is_ready() {
            return self.fail("query sent while the connection was not ready".into());
        }
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(COM_QUERY);
        payload.extend_from_slice(sql.as_bytes());
        self.outputs
            .push_back(QueryOutput::Send(frame(&payload, 0)));
        self.state = State::ColumnCount;
    }

    /// Says goodbye (COM_QUIT); the client is finished.
    pub fn quit(&mut self) {
        if self.is_ready() {
            self.outputs
                .push_back(QueryOutput::Send(frame(&[COM_QUIT], 0)));
        }
        self.state = State::Done;
    }

    /// Feeds bytes read from the backend.
    pub fn handle(&mut self, data: &[u8]) {
        self.decoder.extend(data);
        loop {
            if self.is_done() {
                return;
            }
            let packet = match self.decoder.decode() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => return self.fail(e.to_string()),
            };
            self.on_packet(packet);
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<QueryOutput> {
        self.outputs.pop_front()
    }

    fn on_packet(&mut self, packet: Packet) {
        let payload = packet.payload.clone();
        let first = payload.first().copied();
        match std::mem::replace(&mut self.state, State::Done) {
            State::Login(mut login) => match login.handle(packet) {
                BackendStep::Send(bytes) => {
                    self.outputs.push_back(QueryOutput::Send(bytes));
                    self.state = State::Login(login);
                }
                BackendStep::StartTls(request, response) => {
                    self.outputs.push_back(QueryOutput::Send(request));
                    self.outputs.push_back(QueryOutput::StartTls);
                    self.outputs.push_back(QueryOutput::Send(response));
                    self.state = State::Login(login);
                }
                BackendStep::Wait => self.state = State::Login(login),
                BackendStep::Done(_) => {
                    self.state = State::Idle;
                    self.outputs.push_back(QueryOutput::Ready);
                }
                BackendStep::Refused(err) => {
                    self.fail(format!("login refused: {} {}", err.code, err.message))
                }
                BackendStep::Failed(why) => self.fail(why),
                // Side connections always log in with a known secret.
                BackendStep::AskClient(_) => self.fail("login asks for a client's answer".into()),
            },
            State::Idle => self.fail("backend sent a packet while no query was running".into()),
            State::ColumnCount => match first {
                Some(0x00) => self.answer(Ok(ResultSet::default())),
                Some(0xFF) => self.err(&payload),
                Some(0xFB) => self.fail("backend asked for a LOCAL INFILE".into()),
                _ => match Reader::new(&payload, "column count").lenenc_int() {
                    Ok(n) if n > 0 => {
                        self.state = State::Columns {
                            left: n,
                            rs: ResultSet::default(),
                        }
                    }
                    _ => self.fail("bad column count".into()),
                },
            },
            State::Columns { left, mut rs } => match column_name(&payload) {
                Some(name) => {
                    rs.columns.push(name);
                    self.state = if left > 1 {
                        State::Columns { left: left - 1, rs }
                    } else {
                        State::ColumnsEof(rs)
                    };
                }
                None => self.fail("bad column definition".into()),
            },
            State::ColumnsEof(rs) => {
                if EofPacket::matches(&payload) {
                    self.state = State::Rows(rs);
                } else {
                    self.fail("expected EOF after the column definitions".into());
                }
            }
            State::Rows(mut rs) => {
                if first == Some(0xFF) {
                    self.err(&payload)
                } else if EofPacket::matches(&payload) {
                    // One statement, no CLIENT_MULTI_RESULTS: this EOF ends the answer.
                    self.answer(Ok(rs));
                } else {
                    match row(&payload, rs.columns.len()) {
                        Some(r) => {
                            rs.rows.push(r);
                            self.state = State::Rows(rs);
                        }
                        None => self.fail("bad row".into()),
                    }
                }
            }
            State::Done => {}
        }
    }

    fn answer(&mut self, answer: Result<ResultSet, ErrPacket>) {
        self.state = State::Idle;
        self.outputs.push_back(QueryOutput::Answer(answer));
    }

    fn err(&mut self, payload: &[u8]) {
        match ErrPacket::parse(payload) {
            Ok(err) => self.answer(Err(err)),
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn fail(&mut self, why: String) {
        self.state = State::Done;
        self.outputs.push_back(QueryOutput::Failed(why));
    }
}

/// The `name` of a ColumnDefinition41 (the fifth length-encoded string).
fn column_name(payload: &[u8]) -> Option<String> {
    let mut r = Reader::new(payload, "column definition");
    for _ in 0..4 {
        r.lenenc_bytes().ok()?;
    }
    Some(String::from_utf8_lossy(r.lenenc_bytes().ok()?).into_owned())
}

/// A text-protocol row of `columns` values (0xFB is NULL).
fn row(payload: &[u8], columns: usize) -> Option<Vec<Option<String>>> {
    let mut r = Reader::new(payload, "row");
    let mut out = Vec::with_capacity(columns);
    for _ in 0..columns {
        if r.peek() == Some(0xFB) {
            r.u8().ok()?;
            out.push(None);
        } else {
            out.push(Some(
                String::from_utf8_lossy(r.lenenc_bytes().ok()?).into_owned(),
            ));
        }
    }
    r.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::codec::{put_lenenc_bytes, put_lenenc_int};
    use crate::packets::Handshake;
    use crate::wire::write_packet;
    use bytes::{BufMut, BytesMut};

    fn handshake() -> Bytes {
        let hs = Handshake {
            server_version: "10.11.6-MariaDB".into(),
            connection_id: 7,
            auth_data: b"abcdefghijklmnopqrst".to_vec(),
            capabilities: FERRY_SUPPORTED | CLIENT_PLUGIN_AUTH | CLIENT_SECURE_CONNECTION,
            mariadb_capabilities: 0,
            collation: 45,
            status: 2,
            auth_plugin: Some("mysql_native_password".into()),
        };
        let mut payload = BytesMut::new();
        hs.write(&mut payload);
        let mut out = BytesMut::new();
        write_packet(&mut out, 0, &payload);
        out.freeze()
    }

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_packet(&mut out, seq, payload);
        out.to_vec()
    }

    fn column(name: &str) -> Vec<u8> {
        let mut p = BytesMut::new();
        for s in ["def", "mysql", "user", "user", name, name] {
            put_lenenc_bytes(&mut p, s.as_bytes());
        }
        p.put_u8(0x0c);
        p.put_slice(&[0; 12]);
        p.to_vec()
    }

    fn drain(c: &mut QueryClient) -> Vec<QueryOutput> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn logged_in() -> QueryClient {
        let mut c = QueryClient::new("ferry", "pw");
        c.handle(&handshake());
        let out = drain(&mut c);
        let QueryOutput::Send(login) = &out[0] else {
            panic!("{out:?}")
        };
        let response = HandshakeResponse::parse(&login[4..]).unwrap();
        assert_eq!(response.user, "ferry");
        assert_eq!(
            response.auth_response,
            crate::auth::scramble_native(b"abcdefghijklmnopqrst", b"pw")
        );
        c.handle(&packet(2, &[0, 0, 0, 2, 0, 0, 0]));
        assert_eq!(drain(&mut c), [QueryOutput::Ready]);
        c
    }

    #[test]
    fn reads_a_result_set_in_pieces() {
        let mut c = logged_in();
        c.query("SELECT User, plugin FROM mysql.user");
        let out = drain(&mut c);
        assert_eq!(
            out,
            [QueryOutput::Send(frame(
                b"\x03SELECT User, plugin FROM mysql.user",
                0
            ))]
        );
        let mut wire = Vec::new();
        wire.extend(packet(1, &[2]));
        wire.extend(packet(2, &column("User")));
        wire.extend(packet(3, &column("plugin")));
        wire.extend(packet(4, &[0xFE, 0, 0, 2, 0]));
        let mut r = BytesMut::new();
        put_lenenc_bytes(&mut r, b"app");
        put_lenenc_bytes(&mut r, b"mysql_native_password");
        wire.extend(packet(5, &r));
        let mut r = BytesMut::new();
        put_lenenc_bytes(&mut r, b"root");
        r.put_u8(0xFB);
        wire.extend(packet(6, &r));
        wire.extend(packet(7, &[0xFE, 0, 0, 2, 0]));
        // Byte by byte: framing must not care how reads are cut.
        for b in &wire {
            c.handle(std::slice::from_ref(b));
        }
        let out = drain(&mut c);
        assert_eq!(
            out,
            [QueryOutput::Answer(Ok(ResultSet {
                columns: vec!["User".into(), "plugin".into()],
                rows: vec![
                    vec![Some("app".into()), Some("mysql_native_password".into())],
                    vec![Some("root".into()), None],
                ],
            }))]
        );
        assert!(c.is_ready());
        c.quit();
        assert_eq!(drain(&mut c), [QueryOutput::Send(frame(&[COM_QUIT], 0))]);
        assert!(c.is_done());
    }

    #[test]
    fn server_errors_are_answers_and_the_client_stays_usable() {
        let mut c = logged_in();
        c.query("SELECT nope");
        drain(&mut c);
        let err = ErrPacket::new(1054, "42S22", "Unknown column 'nope'");
        let mut p = BytesMut::new();
        err.write(&mut p);
        c.handle(&packet(1, &p));
        assert_eq!(drain(&mut c), [QueryOutput::Answer(Err(err))]);
        assert!(c.is_ready());
        c.query("DO 1");
        drain(&mut c);
        c.handle(&packet(1, &[0, 0, 0, 2, 0, 0, 0]));
        assert_eq!(
            drain(&mut c),
            [QueryOutput::Answer(Ok(ResultSet::default()))]
        );
    }

    #[test]
    fn refused_login_fails() {
        let mut c = QueryClient::new("ferry", "wrong");
        c.handle(&handshake());
        drain(&mut c);
        let mut p = BytesMut::new();
        ErrPacket::new(1045, "28000", "Access denied").write(&mut p);
        c.handle(&packet(2, &p));
        let out = drain(&mut c);
        assert!(
            matches!(&out[..], [QueryOutput::Failed(why)] if why.contains("Access denied")),
            "{out:?}"
        );
        assert!(c.is_done());
    }

    #[test]
    fn garbage_fails_cleanly() {
        let mut c = logged_in();
        c.query("SELECT 1");
        drain(&mut c);
        let mut p = BytesMut::new();
        put_lenenc_int(&mut p, 1);
        c.handle(&packet(1, &p));
        c.handle(&packet(2, &[0xFC]));
        let out = drain(&mut c);
        assert!(matches!(&out[..], [QueryOutput::Failed(_)]), "{out:?}");
    }
}
