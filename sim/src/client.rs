//! Scripted clients: log in through ferry with core's packets, run a script,
//! and record every answer, error and acknowledged commit.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use ferry_core::auth::{scramble_native, NATIVE_PASSWORD};
use ferry_core::packets::codec::{put_lenenc_bytes, Reader};
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::command::*;
use ferry_core::packets::flags::status::*;
use ferry_core::packets::{
    AuthSwitchRequest, EofPacket, ErrPacket, Handshake, HandshakeResponse, OkPacket,
};
use ferry_core::wire::{write_packet, Packet, PacketDecoder};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::sql::{self, Expr, Stmt, Value};
use crate::store::Write;
use crate::trace::Trace;

/// One step of a client's script. In SQL and names, `${c}` is the client's
/// name, `${id}` its number, `${i}` the innermost loop counter (from 1),
/// `${k}` the key `id * 100000 + i`, and `${NAME}` a value published by [`Step::Publish`]
/// or saved by [`Step::Save`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub enum Step {
    /// Run a statement (COM_QUERY).
    Query(String),
    /// Run a statement and check its answer.
    Expect(String, Expected),
    /// Prepare a statement under a name (COM_STMT_PREPARE).
    Prepare(String, String),
    /// Execute a prepared statement with parameters (`"NULL"` is NULL; integers are sent as integers).
    Execute(String, Vec<String>),
    /// Execute and check the answer.
    ExpectExecute(String, Vec<String>, Expected),
    /// Close a prepared statement (COM_STMT_CLOSE).
    CloseStmt(String),
    /// Wait this many milliseconds.
    Sleep(u64),
    /// Repeat the steps this many times.
    Loop(u32, Vec<Step>),
    /// COM_PING.
    Ping,
    /// COM_INIT_DB.
    InitDb(String),
    /// Send a query, read this many packets of its answer, then vanish (drop the connection).
    Vanish(String, u32),
    /// Publish this connection's ferry id (from the handshake) under a name for other clients.
    Publish(String),
    /// Run a query and save the first value of its first row under a name.
    Save(String, String),
    /// Wait until a name is published (or saved).
    WaitFor(String),
    /// Log in again on a new connection (after the old one was lost).
    Reconnect,
    /// Check that the session's state answers as the client left it: user
    /// and system variables it set, its database, `LAST_INSERT_ID()`, and its
    /// prepared statements (COM_STMT_RESET on each).
    CheckState,
    /// Say goodbye (COM_QUIT) and end.
    Quit,
}

/// What an answer must be.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub enum Expected {
    /// An OK.
    Ok,
    /// An OK with this many affected rows.
    Affected(u64),
    /// Exactly these rows (`None` is NULL).
    Rows(Vec<Vec<Option<String>>>),
    /// One row whose first value is this.
    Value(String),
    /// One row whose first value is one of these.
    OneOf(Vec<String>),
    /// An ERR with this code.
    Err(u16),
}

/// How a client logs in and what it runs.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// Its name in the trace (`c1`).
    pub name: String,
    /// Its number (for `${id}` and `${k}`).
    pub id: u32,
    /// The login name (`acc1:app?region=eu`).
    pub user: String,
    /// The password.
    pub password: String,
    /// The initial database.
    pub database: Option<String>,
    /// Connection attributes.
    pub attributes: Vec<(String, String)>,
    /// Ask for `CLIENT_DEPRECATE_EOF`.
    pub deprecate_eof: bool,
    /// Ask for `CLIENT_SESSION_TRACK`.
    pub session_track: bool,
    /// The script.
    pub script: Vec<Step>,
    /// Leave per-command lines out of the trace.
    pub quiet: bool,
    /// How long any one command may take before the session counts as stuck.
    pub stuck_ms: u64,
    /// Run [`Step::CheckState`] after every `Sleep` (sessions move while idle).
    pub check_after_sleep: bool,
}

/// An error a client got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError {
    /// The client.
    pub client: String,
    /// MySQL error code (2013: lost connection).
    pub code: u16,
    /// The message.
    pub message: String,
    /// What it was doing.
    pub during: String,
}

/// How a transaction the client ran ended, as far as the client can know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    /// The server acknowledged the commit.
    Acked,
    /// It cannot have committed (rolled back, or lost before COMMIT was sent).
    Failed,
    /// The commit was in flight when the connection broke.
    Unknown,
}

/// A transaction the client ran, with the writes it made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    /// The client.
    pub client: String,
    /// Its writes, in order.
    pub writes: Vec<Write>,
    /// How it ended.
    pub status: TxnStatus,
}

/// What a client did.
#[derive(Clone, Debug, Default)]
pub struct ClientReport {
    /// Its name.
    pub name: String,
    /// Errors it got.
    pub errors: Vec<ClientError>,
    /// Its transactions (those with writes).
    pub txns: Vec<TxnRecord>,
    /// Broken promises: stuck commands, packets out of order, wrong answers.
    pub violations: Vec<String>,
    /// Commands answered.
    pub commands: u32,
}

/// What all clients of a run share.
#[derive(Clone, Debug, Default)]
pub struct ClientCtx {
    /// The trace.
    pub trace: Trace,
    /// Published values.
    pub board: Arc<Mutex<BTreeMap<String, String>>>,
    /// Set by the runner once the final checks ran: clients holding a connection quit.
    pub release: Arc<AtomicBool>,
    /// Clients whose script is over.
    pub done: Arc<AtomicUsize>,
    /// Reports of finished clients.
    pub reports: Arc<Mutex<Vec<ClientReport>>>,
}

/// An answer from the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// OK.
    Ok(OkPacket),
    /// A result set (rows of optional strings) and the status it ended with.
    Rows(Vec<String>, Vec<Vec<Option<String>>>, u16),
    /// ERR.
    Err(ErrPacket),
    /// A prepared statement: id, parameter count, columns.
    Prepared(u32, u16, u16),
    /// No answer expected (COM_STMT_CLOSE).
    None,
}

/// Why a command got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection closed.
    Lost,
    /// No answer in time.
    Stuck,
    /// The answer broke the protocol.
    Protocol(String),
}

/// A client connection.
pub struct Conn<S> {
    stream: S,
    decoder: PacketDecoder,
    caps: u32,
    /// ferry's connection id from the handshake.
    pub conn_id: u32,
    /// The current database, as far as the client knows.
    pub db: Option<String>,
    /// The status of the last OK/EOF.
    pub status: u16,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Logs in; `Ok(Err(..))` is the server's refusal.
    pub async fn login(
        stream: S,
        spec: &ClientSpec,
    ) -> Result<Result<Conn<S>, ErrPacket>, Failure> {
        let mut conn = Conn {
            stream,
            decoder: PacketDecoder::new(64 << 20),
            caps: 0,
            conn_id: 0,
            db: spec.database.clone(),
            status: SERVER_STATUS_AUTOCOMMIT,
        };
        let hs = conn.read().await?;
        if hs.payload.first() == Some(&0xFF) {
            return Ok(Err(parse_err(&hs.payload)?));
        }
        let handshake =
            Handshake::parse(&hs.payload).map_err(|e| Failure::Protocol(e.to_string()))?;
        conn.conn_id = handshake.connection_id;
        let mut caps = CLIENT_LONG_PASSWORD
            | CLIENT_LONG_FLAG
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_MULTI_RESULTS
            | CLIENT_PS_MULTI_RESULTS
            | CLIENT_PLUGIN_AUTH;
        if spec.deprecate_eof {
            caps |= CLIENT_DEPRECATE_EOF;
        }
        if spec.session_track {
            caps |= CLIENT_SESSION_TRACK;
        }
        if spec.database.is_some() {
            caps |= CLIENT_CONNECT_WITH_DB;
        }
        if !spec.attributes.is_empty() {
            caps |= CLIENT_CONNECT_ATTRS;
        }
        caps &= handshake.capabilities;
        conn.caps = caps;
        let response = HandshakeResponse {
            capabilities: caps,
            mariadb_capabilities: 0,
            max_packet_size: 16 << 20,
            collation: 45,
            user: spec.user.clone(),
            auth_response: scramble_native(&handshake.auth_data, spec.password.as_bytes()),
            database: spec.database.clone(),
            auth_plugin: Some(NATIVE_PASSWORD.into()),
            attributes: spec.attributes.clone(),
        };
        let mut p = BytesMut::new();
        response.write(&mut p);
        conn.send(&p, hs.next_seq).await?;
        let mut expect_seq = hs.next_seq.wrapping_add(1);
        loop {
            let reply = conn.read().await?;
            if reply.seq != expect_seq {
                return Err(Failure::Protocol(format!(
                    "login reply has sequence id {}, expected {expect_seq}",
                    reply.seq
                )));
            }
            match reply.payload.first() {
                Some(0x00) => {
                    let ok = OkPacket::parse(&reply.payload, caps)
                        .map_err(|e| Failure::Protocol(e.to_string()))?;
                    conn.status = ok.status;
                    return Ok(Ok(conn));
                }
                Some(0xFF) => return Ok(Err(parse_err(&reply.payload)?)),
                Some(0xFE) => {
                    let switch = AuthSwitchRequest::parse(&reply.payload)
                        .map_err(|e| Failure::Protocol(e.to_string()))?;
                    let scramble = scramble_native(&switch.data, spec.password.as_bytes());
                    conn.send(&scramble, reply.next_seq).await?;
                    expect_seq = reply.next_seq.wrapping_add(1);
                }
                _ => return Err(Failure::Protocol("unexpected packet during login".into())),
            }
        }
    }

    async fn read(&mut self) -> Result<Packet, Failure> {
        loop {
            match self.decoder.decode() {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(Failure::Protocol(e.to_string())),
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Err(Failure::Lost),
                Ok(n) => self.decoder.extend(&buf[..n]),
            }
        }
    }

    async fn send(&mut self, payload: &[u8], seq: u8) -> Result<(), Failure> {
        let mut out = BytesMut::new();
        write_packet(&mut out, seq, payload);
        self.stream
            .write_all(&out)
            .await
            .map_err(|_| Failure::Lost)?;
        Ok(())
    }

    /// Reads the next packet of an answer, checking its sequence id.
    async fn next(&mut self, seq: &mut u8) -> Result<Packet, Failure> {
        let p = self.read().await?;
        if p.seq != *seq {
            return Err(Failure::Protocol(format!(
                "packet out of order: sequence id {}, expected {}",
                p.seq, seq
            )));
        }
        *seq = p.next_seq;
        Ok(p)
    }

    fn deprecate_eof(&self) -> bool {
        self.caps & CLIENT_DEPRECATE_EOF != 0
    }

    /// Sends a command and reads its whole answer. `vanish_after` stops after that many packets.
    pub async fn command(
        &mut self,
        payload: &[u8],
        vanish_after: Option<u32>,
    ) -> Result<Answer, Failure> {
        self.send(payload, 0).await?;
        let command = payload[0];
        if command == COM_STMT_CLOSE {
            return Ok(Answer::None);
        }
        let mut seq = 1u8;
        let mut budget = vanish_after.unwrap_or(u32::MAX);
        let first = self.next(&mut seq).await?;
        budget = budget.saturating_sub(1);
        match first.payload.first() {
            Some(0x00) if command == COM_STMT_PREPARE => {
                let mut r = Reader::new(&first.payload[1..], "prepare OK");
                let bad = |_| Failure::Protocol("truncated prepare OK".into());
                let id = r.u32().map_err(bad)?;
                let cols = r.u16().map_err(bad)?;
                let params = r.u16().map_err(bad)?;
                for group in [params, cols] {
                    if group == 0 {
                        continue;
                    }
                    for _ in 0..group {
                        self.next(&mut seq).await?;
                    }
                    if !self.deprecate_eof() {
                        let eof = self.next(&mut seq).await?;
                        if !EofPacket::matches(&eof.payload) {
                            return Err(Failure::Protocol("expected EOF".into()));
                        }
                    }
                }
                Ok(Answer::Prepared(id, params, cols))
            }
            Some(0x00) => {
                let ok = OkPacket::parse(&first.payload, self.caps)
                    .map_err(|e| Failure::Protocol(e.to_string()))?;
                self.status = ok.status;
                Ok(Answer::Ok(ok))
            }
            Some(0xFF) => Ok(Answer::Err(parse_err(&first.payload)?)),
            Some(0xFB) => Err(Failure::Protocol("unexpected LOCAL INFILE request".into())),
            _ => {
                let binary = command == COM_STMT_EXECUTE;
                let n = Reader::new(&first.payload, "column count")
                    .lenenc_int()
                    .map_err(|e| Failure::Protocol(e.to_string()))?
                    as usize;
                let mut columns = Vec::with_capacity(n);
                for _ in 0..n {
                    let def = self.next(&mut seq).await?;
                    budget = budget.saturating_sub(1);
                    columns.push(column_name(&def.payload)?);
                }
                if !self.deprecate_eof() {
                    let eof = self.next(&mut seq).await?;
                    budget = budget.saturating_sub(1);
                    if !EofPacket::matches(&eof.payload) {
                        return Err(Failure::Protocol("expected EOF after the columns".into()));
                    }
                }
                let mut rows = Vec::new();
                loop {
                    if budget == 0 {
                        return Err(Failure::Lost);
                    }
                    let p = self.next(&mut seq).await?;
                    budget = budget.saturating_sub(1);
                    let head = p.payload.first().copied();
                    if head == Some(0xFF) {
                        return Ok(Answer::Err(parse_err(&p.payload)?));
                    }
                    let end = head == Some(0xFE)
                        && if self.deprecate_eof() {
                            p.payload.len() < 0xFF_FFFF
                        } else {
                            p.payload.len() < 9
                        };
                    if end {
                        let status = if self.deprecate_eof() {
                            OkPacket::parse(&p.payload, self.caps)
                                .map_err(|e| Failure::Protocol(e.to_string()))?
                                .status
                        } else {
                            EofPacket::parse(&p.payload)
                                .map_err(|e| Failure::Protocol(e.to_string()))?
                                .status
                        };
                        self.status = status;
                        if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                            return Err(Failure::Protocol("unexpected second result".into()));
                        }
                        return Ok(Answer::Rows(columns, rows, status));
                    }
                    rows.push(parse_row(&p.payload, n, binary)?);
                }
            }
        }
    }

    /// COM_QUIT and close.
    pub async fn quit(mut self) {
        let _ = self.send(&[COM_QUIT], 0).await;
        let _ = self.stream.shutdown().await;
    }
}

fn parse_err(payload: &[u8]) -> Result<ErrPacket, Failure> {
    ErrPacket::parse(payload).map_err(|e| Failure::Protocol(e.to_string()))
}

fn column_name(payload: &[u8]) -> Result<String, Failure> {
    let mut r = Reader::new(payload, "column definition");
    let bad = |e: ferry_core::packets::ParseError| Failure::Protocol(e.to_string());
    for _ in 0..4 {
        r.lenenc_bytes().map_err(bad)?;
    }
    Ok(String::from_utf8_lossy(r.lenenc_bytes().map_err(bad)?).into_owned())
}

fn parse_row(payload: &[u8], n: usize, binary: bool) -> Result<Vec<Option<String>>, Failure> {
    let bad = |e: ferry_core::packets::ParseError| Failure::Protocol(e.to_string());
    let mut r = Reader::new(payload, "row");
    let mut out = Vec::with_capacity(n);
    if binary {
        if r.u8().map_err(bad)? != 0 {
            return Err(Failure::Protocol("binary row without 0x00 header".into()));
        }
        let bitmap = r.bytes((n + 7 + 2) / 8).map_err(bad)?.to_vec();
        for i in 0..n {
            if bitmap[(i + 2) / 8] & (1 << ((i + 2) % 8)) != 0 {
                out.push(None);
            } else {
                out.push(Some(
                    String::from_utf8_lossy(r.lenenc_bytes().map_err(bad)?).into_owned(),
                ));
            }
        }
    } else {
        for _ in 0..n {
            if r.peek() == Some(0xFB) {
                r.u8().map_err(bad)?;
                out.push(None);
            } else {
                out.push(Some(
                    String::from_utf8_lossy(r.lenenc_bytes().map_err(bad)?).into_owned(),
                ));
            }
        }
    }
    if !r.is_empty() {
        return Err(Failure::Protocol("row longer than its columns".into()));
    }
    Ok(out)
}

/// A short description of an answer for the trace.
pub fn describe(answer: &Answer) -> String {
    match answer {
        Answer::Ok(ok) => {
            let mut s = "OK".to_string();
            if ok.affected_rows > 0 {
                s.push_str(&format!(" affected={}", ok.affected_rows));
            }
            if ok.last_insert_id > 0 {
                s.push_str(&format!(" insert_id={}", ok.last_insert_id));
            }
            if ok.status & SERVER_STATUS_IN_TRANS != 0 {
                s.push_str(" in_trans");
            }
            s
        }
        Answer::Rows(_, rows, _) => {
            let shown: Vec<String> = rows
                .iter()
                .take(3)
                .map(|r| {
                    let cells: Vec<String> = r
                        .iter()
                        .map(|c| c.clone().unwrap_or_else(|| "NULL".into()))
                        .collect();
                    format!("[{}]", cells.join(", "))
                })
                .collect();
            let more = if rows.len() > 3 { " …" } else { "" };
            let n = rows.len();
            let word = if n == 1 { "row" } else { "rows" };
            format!("{n} {word} {}{more}", shown.join(" "))
        }
        Answer::Err(e) => format!("ERR {} {}", e.code, e.message),
        Answer::Prepared(id, params, cols) => {
            format!("prepared id={id} params={params} columns={cols}")
        }
        Answer::None => "(no answer)".into(),
    }
}

/// The client's view of its open transaction.
#[derive(Default)]
struct TxnTracker {
    pending: Vec<Write>,
    records: Vec<TxnRecord>,
    /// A write whose value the client cannot know: its transaction is not checked.
    opaque: bool,
}

impl TxnTracker {
    fn end(&mut self, client: &str, status: TxnStatus) {
        let writes = std::mem::take(&mut self.pending);
        if !writes.is_empty() && !self.opaque {
            self.records.push(TxnRecord {
                client: client.to_string(),
                writes,
                status,
            });
        }
        self.opaque = false;
    }
}

/// Runs one client's script; `connect` opens a stream to ferry.
pub async fn run<S, F, Fut>(spec: ClientSpec, ctx: ClientCtx, connect: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let mut runner = Runner {
        report: ClientReport {
            name: spec.name.clone(),
            ..ClientReport::default()
        },
        spec,
        ctx,
        conn: None,
        stmts: BTreeMap::new(),
        txn: TxnTracker::default(),
        saved: BTreeMap::new(),
        model: Model::default(),
    };
    runner.connect(&connect).await;
    let script = runner.spec.script.clone();
    let finished = runner.steps(&script, &[], &connect).await;
    runner.ctx.done.fetch_add(1, Ordering::SeqCst);
    if finished {
        // Keep the connection open until the runner has compared counts.
        while !runner.ctx.release.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if let Some(conn) = runner.conn.take() {
        if runner.txn.pending.is_empty() {
            conn.quit().await;
        } else {
            // Quitting rolls the open transaction back.
            conn.quit().await;
            let name = runner.spec.name.clone();
            runner.txn.end(&name, TxnStatus::Failed);
        }
    }
    let mut report = runner.report;
    report.txns = runner.txn.records;
    runner
        .ctx
        .reports
        .lock()
        .expect("reports lock")
        .push(report);
}

struct Runner<S> {
    spec: ClientSpec,
    ctx: ClientCtx,
    report: ClientReport,
    conn: Option<Conn<S>>,
    stmts: BTreeMap<String, (u32, String)>,
    txn: TxnTracker,
    saved: BTreeMap<String, String>,
    model: Model,
}

/// What the client knows its session's state to be, from its own successful statements.
#[derive(Clone, Debug, Default)]
struct Model {
    user_vars: BTreeMap<String, Option<String>>,
    sys_vars: BTreeMap<String, String>,
    last_insert_id: u64,
}

impl Model {
    fn follow(&mut self, stmt: &Stmt, params: &[Value], ok: &OkPacket) {
        let lit = |e: &Expr| -> Option<Value> {
            match e {
                Expr::Lit(v) => Some(v.clone()),
                Expr::Param(i) => params.get(*i).cloned(),
                _ => None,
            }
        };
        match stmt {
            Stmt::Set(assigns) => {
                for (target, e) in assigns {
                    match (target, lit(e)) {
                        (sql::Target::User(u), Some(v)) => {
                            self.user_vars.insert(u.clone(), v.text());
                        }
                        (sql::Target::User(u), None) => {
                            self.user_vars.remove(u);
                        }
                        (sql::Target::Sys(name), Some(v)) => {
                            let text = v.text().unwrap_or_default();
                            let text = match (name.as_str(), text.to_ascii_uppercase().as_str()) {
                                ("autocommit", "ON" | "1" | "TRUE") => "1".to_string(),
                                ("autocommit", "OFF" | "0" | "FALSE") => "0".to_string(),
                                (_, "ON" | "OFF" | "DEFAULT" | "TRUE" | "FALSE") => {
                                    self.sys_vars.remove(name);
                                    continue;
                                }
                                _ => text,
                            };
                            self.sys_vars.insert(name.clone(), text);
                        }
                        (sql::Target::Sys(name), None) => {
                            self.sys_vars.remove(name);
                        }
                        (sql::Target::Names(collation), Some(v)) => {
                            let cs = v.text().unwrap_or_default();
                            for n in [
                                "character_set_client",
                                "character_set_connection",
                                "character_set_results",
                            ] {
                                self.sys_vars.insert(n.into(), cs.clone());
                            }
                            match collation {
                                Some(c) => self
                                    .sys_vars
                                    .insert("collation_connection".into(), c.clone()),
                                None => self.sys_vars.remove("collation_connection"),
                            };
                        }
                        (sql::Target::Names(_), None) => {}
                    }
                }
            }
            Stmt::Do(exprs) => {
                for e in exprs {
                    if let Expr::Func(f, args) = e {
                        if f == "LAST_INSERT_ID" && args.len() == 1 {
                            if let Some(n) = lit(&args[0]).and_then(|v| v.as_int()) {
                                self.last_insert_id = n as u64;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        if ok.last_insert_id > 0 {
            self.last_insert_id = ok.last_insert_id;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Runner<S> {
    fn log(&self, what: impl std::fmt::Display) {
        if !self.spec.quiet {
            self.ctx.trace.log(&self.spec.name, what);
        }
    }

    fn error(&mut self, code: u16, message: &str, during: &str) {
        self.report.errors.push(ClientError {
            client: self.spec.name.clone(),
            code,
            message: message.to_string(),
            during: during.to_string(),
        });
    }

    fn violation(&mut self, what: String) {
        self.ctx
            .trace
            .log(&self.spec.name, format!("VIOLATION {what}"));
        self.report.violations.push(what);
    }

    async fn connect<F, Fut>(&mut self, connect: &F) -> bool
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<S>>,
    {
        let stream = match connect().await {
            Ok(s) => s,
            Err(e) => {
                self.ctx
                    .trace
                    .log(&self.spec.name, format!("connect failed: {e}"));
                self.error(2003, &format!("Can't connect to ferry: {e}"), "connect");
                return false;
            }
        };
        let limit = Duration::from_millis(self.spec.stuck_ms);
        let login = tokio::time::timeout(limit, Conn::login(stream, &self.spec)).await;
        let who = self.spec.user.clone();
        match login {
            Ok(Ok(Ok(conn))) => {
                self.ctx.trace.log(
                    &self.spec.name,
                    format!("login {who} ok (ferry id {})", conn.conn_id),
                );
                self.conn = Some(conn);
                true
            }
            Ok(Ok(Err(e))) => {
                self.ctx.trace.log(
                    &self.spec.name,
                    format!("login {who} ERR {} {}", e.code, e.message),
                );
                self.error(e.code, &e.message, "login");
                false
            }
            Ok(Err(Failure::Lost)) => {
                self.ctx
                    .trace
                    .log(&self.spec.name, format!("login {who} lost connection"));
                self.error(
                    2013,
                    "Lost connection to server at 'reading initial communication packet'",
                    "login",
                );
                false
            }
            Ok(Err(Failure::Protocol(why))) => {
                self.violation(format!("login: {why}"));
                false
            }
            Ok(Err(Failure::Stuck)) | Err(_) => {
                self.violation(format!(
                    "stuck: login got no answer within {}ms",
                    self.spec.stuck_ms
                ));
                false
            }
        }
    }

    fn expand(&self, text: &str, loops: &[u32]) -> String {
        let i = loops.last().copied().unwrap_or(1);
        let mut out = text
            .replace("${c}", &self.spec.name)
            .replace("${id}", &self.spec.id.to_string())
            .replace("${i}", &i.to_string())
            .replace(
                "${k}",
                &(self.spec.id as u64 * 100_000 + i as u64).to_string(),
            );
        while let Some(start) = out.find("${") {
            let Some(len) = out[start..].find('}') else {
                break;
            };
            let name = out[start + 2..start + len].to_string();
            let value = self
                .saved
                .get(&name)
                .cloned()
                .or_else(|| {
                    self.ctx
                        .board
                        .lock()
                        .expect("board lock")
                        .get(&name)
                        .cloned()
                })
                .unwrap_or_default();
            out.replace_range(start..start + len + 1, &value);
        }
        out
    }

    /// Runs steps; false once the client has stopped (connection lost, stuck, quit).
    async fn steps<F, Fut>(&mut self, steps: &[Step], loops: &[u32], connect: &F) -> bool
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<S>>,
    {
        for step in steps {
            let go = match step {
                Step::Loop(n, body) => {
                    let mut go = true;
                    for i in 1..=*n {
                        let mut inner = loops.to_vec();
                        inner.push(i);
                        if !Box::pin(self.steps(body, &inner, connect)).await {
                            go = false;
                            break;
                        }
                    }
                    go
                }
                Step::Sleep(ms) => {
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                    !self.spec.check_after_sleep || self.check_state().await
                }
                Step::CheckState => self.check_state().await,
                Step::Reconnect => {
                    if let Some(conn) = self.conn.take() {
                        conn.quit().await;
                    }
                    self.stmts.clear();
                    self.model = Model::default();
                    self.connect(connect).await
                }
                Step::Publish(name) => {
                    let id = self.conn.as_ref().map_or(0, |c| c.conn_id);
                    let name = self.expand(name, loops);
                    self.ctx
                        .board
                        .lock()
                        .expect("board lock")
                        .insert(name, id.to_string());
                    true
                }
                Step::WaitFor(name) => {
                    let name = self.expand(name, loops);
                    loop {
                        if self
                            .ctx
                            .board
                            .lock()
                            .expect("board lock")
                            .contains_key(&name)
                        {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    true
                }
                Step::Quit => {
                    if let Some(conn) = self.conn.take() {
                        self.log("→ ferry COM_QUIT");
                        conn.quit().await;
                    }
                    let name = self.spec.name.clone();
                    self.txn.end(&name, TxnStatus::Failed);
                    return false;
                }
                other => self.command(other, loops).await,
            };
            if !go {
                return false;
            }
        }
        true
    }

    async fn command(&mut self, step: &Step, loops: &[u32]) -> bool {
        if self.conn.is_none() {
            return false;
        }
        let (payload, label, sql, params, expected, vanish) = match step {
            Step::Query(q) | Step::Expect(q, _) | Step::Save(_, q) | Step::Vanish(q, _) => {
                let q = self.expand(q, loops);
                let mut p = vec![COM_QUERY];
                p.extend_from_slice(q.as_bytes());
                let expected = match step {
                    Step::Expect(_, e) => Some(e.clone()),
                    _ => None,
                };
                let vanish = match step {
                    Step::Vanish(_, n) => Some(*n),
                    _ => None,
                };
                (
                    p,
                    format!("COM_QUERY {q:?}"),
                    Some(q),
                    Vec::new(),
                    expected,
                    vanish,
                )
            }
            Step::Prepare(name, q) => {
                let q = self.expand(q, loops);
                let mut p = vec![COM_STMT_PREPARE];
                p.extend_from_slice(q.as_bytes());
                (
                    p,
                    format!("COM_STMT_PREPARE {name} {q:?}"),
                    None,
                    Vec::new(),
                    None,
                    None,
                )
            }
            Step::Execute(name, args) | Step::ExpectExecute(name, args, _) => {
                let Some((id, sql)) = self.stmts.get(name).cloned() else {
                    self.violation(format!("script executes unknown statement {name}"));
                    return false;
                };
                let args: Vec<Value> = args
                    .iter()
                    .map(|a| {
                        let a = self.expand(a, loops);
                        if a == "NULL" {
                            Value::Null
                        } else if let Ok(i) = a.parse::<i64>() {
                            Value::Int(i)
                        } else {
                            Value::Str(a)
                        }
                    })
                    .collect();
                let expected = match step {
                    Step::ExpectExecute(_, _, e) => Some(e.clone()),
                    _ => None,
                };
                let shown: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                (
                    execute_payload(id, &args),
                    format!("COM_STMT_EXECUTE {name} ({})", shown.join(", ")),
                    Some(sql),
                    args,
                    expected,
                    None,
                )
            }
            Step::CloseStmt(name) => {
                let Some((id, _)) = self.stmts.remove(name) else {
                    return true;
                };
                let mut p = vec![COM_STMT_CLOSE];
                p.extend_from_slice(&id.to_le_bytes());
                (
                    p,
                    format!("COM_STMT_CLOSE {name}"),
                    None,
                    Vec::new(),
                    None,
                    None,
                )
            }
            Step::Ping => (
                vec![COM_PING],
                "COM_PING".into(),
                None,
                Vec::new(),
                None,
                None,
            ),
            Step::InitDb(db) => {
                let db = self.expand(db, loops);
                let mut p = vec![COM_INIT_DB];
                p.extend_from_slice(db.as_bytes());
                (p, format!("COM_INIT_DB {db}"), None, Vec::new(), None, None)
            }
            _ => return true,
        };
        self.log(format!("→ ferry {label}"));
        let stmt = sql.as_deref().and_then(|s| sql::parse(s).ok());
        let mut limit = self.spec.stuck_ms;
        if let Some(Stmt::Select(items, _)) = &stmt {
            for item in items {
                if let Expr::Func(f, args) = &item.expr {
                    if f == "SLEEP" || f == "GET_LOCK" {
                        let secs = args.last().and_then(|a| match a {
                            Expr::Lit(v) => v.as_secs(),
                            _ => None,
                        });
                        limit += (secs.unwrap_or(0.0) * 1000.0) as u64;
                    }
                }
            }
        }
        let conn = self.conn.as_mut().expect("connected");
        let answer =
            tokio::time::timeout(Duration::from_millis(limit), conn.command(&payload, vanish))
                .await
                .unwrap_or(Err(Failure::Stuck));
        let name = self.spec.name.clone();
        let answer = match answer {
            Ok(a) => a,
            Err(Failure::Lost) if vanish.is_some() => {
                self.log("vanishes");
                self.conn = None;
                self.txn.end(&name, TxnStatus::Failed);
                return false;
            }
            Err(Failure::Lost) => {
                self.log("← ferry lost connection");
                self.error(2013, "Lost connection to server during query", &label);
                self.conn = None;
                // A statement that may have committed: COMMIT, or a write outside a transaction.
                let commit_in_flight = matches!(stmt, Some(Stmt::Commit))
                    || (self.txn.pending.is_empty()
                        && matches!(
                            stmt,
                            Some(Stmt::Insert { .. } | Stmt::Update { .. } | Stmt::Delete { .. })
                        ));
                if matches!(stmt, Some(Stmt::Commit)) {
                    self.txn.end(&name, TxnStatus::Unknown);
                } else if commit_in_flight {
                    self.txn.opaque = true;
                    self.txn.end(&name, TxnStatus::Unknown);
                } else {
                    self.txn.end(&name, TxnStatus::Failed);
                }
                return false;
            }
            Err(Failure::Stuck) => {
                self.violation(format!("stuck: {label} got no answer within {limit}ms"));
                self.conn = None;
                self.txn.opaque = true;
                self.txn.end(&name, TxnStatus::Unknown);
                return false;
            }
            Err(Failure::Protocol(why)) => {
                self.violation(format!("{label}: {why}"));
                self.conn = None;
                self.txn.opaque = true;
                self.txn.end(&name, TxnStatus::Unknown);
                return false;
            }
        };
        self.report.commands += 1;
        self.log(format!("← ferry {}", describe(&answer)));
        if let Answer::Err(e) = &answer {
            self.error(e.code, &e.message, &label);
        }
        match (step, &answer) {
            (Step::Prepare(name, q), Answer::Prepared(id, ..)) => {
                let q = self.expand(q, loops);
                self.stmts.insert(name.clone(), (*id, q));
            }
            (Step::Save(name, _), Answer::Rows(_, rows, _)) => {
                let v = rows
                    .first()
                    .and_then(|r| r.first().cloned().flatten())
                    .unwrap_or_default();
                self.saved.insert(self.expand(name, loops), v);
            }
            (Step::InitDb(db), Answer::Ok(_)) => {
                self.conn.as_mut().expect("connected").db = Some(db.clone())
            }
            _ => {}
        }
        if let (Some(stmt), Answer::Ok(ok)) = (stmt.as_ref(), &answer) {
            self.model.follow(stmt, &params, ok);
        }
        if let Answer::Ok(ok) = &answer {
            if ok.last_insert_id > 0 {
                self.model.last_insert_id = ok.last_insert_id;
            }
        }
        self.follow_txn(stmt.as_ref(), &params, &answer);
        if let Some(expected) = expected {
            let expected = match expected {
                Expected::Value(v) => Expected::Value(self.expand(&v, loops)),
                Expected::Rows(rows) => Expected::Rows(
                    rows.iter()
                        .map(|r| {
                            r.iter()
                                .map(|c| c.as_ref().map(|c| self.expand(c, loops)))
                                .collect()
                        })
                        .collect(),
                ),
                other => other,
            };
            if let Some(why) = mismatch(&expected, &answer) {
                self.violation(format!("{label}: {why}"));
            }
        }
        true
    }

    /// Runs one command outside the script (for checks); `None` when the connection is gone.
    async fn probe(&mut self, payload: &[u8], label: &str) -> Option<Answer> {
        let limit = Duration::from_millis(self.spec.stuck_ms);
        let conn = self.conn.as_mut()?;
        let answer = tokio::time::timeout(limit, conn.command(payload, None))
            .await
            .unwrap_or(Err(Failure::Stuck));
        match answer {
            Ok(a) => Some(a),
            Err(Failure::Lost) => {
                self.log("← ferry lost connection");
                self.error(2013, "Lost connection to server during query", label);
                self.conn = None;
                let name = self.spec.name.clone();
                self.txn.end(&name, TxnStatus::Failed);
                None
            }
            Err(Failure::Stuck) => {
                self.violation(format!(
                    "stuck: {label} got no answer within {}ms",
                    self.spec.stuck_ms
                ));
                self.conn = None;
                None
            }
            Err(Failure::Protocol(why)) => {
                self.violation(format!("{label}: {why}"));
                self.conn = None;
                None
            }
        }
    }

    /// Compares the session's state with the model; false once the connection is gone.
    async fn check_state(&mut self) -> bool {
        let Some(db) = self.conn.as_ref().map(|c| c.db.clone()) else {
            return false;
        };
        let mut items = vec!["DATABASE()".to_string(), "LAST_INSERT_ID()".to_string()];
        let mut want = vec![db, Some(self.model.last_insert_id.to_string())];
        for (u, v) in &self.model.user_vars {
            items.push(format!("@`{u}`"));
            want.push(v.clone());
        }
        for (name, v) in &self.model.sys_vars {
            items.push(format!("@@{name}"));
            want.push(Some(v.clone()));
        }
        let sql = format!("SELECT {}", items.join(", "));
        let mut payload = vec![COM_QUERY];
        payload.extend_from_slice(sql.as_bytes());
        let Some(answer) = self.probe(&payload, "state check").await else {
            return false;
        };
        match &answer {
            Answer::Rows(_, rows, _) if rows.len() == 1 && rows[0] == want => {}
            other => {
                let got = describe(other);
                let shown: Vec<String> = items
                    .iter()
                    .zip(&want)
                    .map(|(i, w)| format!("{i}={}", w.as_deref().unwrap_or("NULL")))
                    .collect();
                self.violation(format!(
                    "session state changed: expected {}, got {got}",
                    shown.join(" ")
                ));
            }
        }
        let stmts: Vec<(String, u32)> = self
            .stmts
            .iter()
            .map(|(n, (id, _))| (n.clone(), *id))
            .collect();
        for (name, id) in stmts {
            let mut p = vec![COM_STMT_RESET];
            p.extend_from_slice(&id.to_le_bytes());
            let Some(answer) = self.probe(&p, "state check").await else {
                return false;
            };
            if !matches!(answer, Answer::Ok(_)) {
                self.violation(format!(
                    "prepared statement {name} (id {id}) is gone: COM_STMT_RESET got {}",
                    describe(&answer)
                ));
            }
        }
        self.log("state check ok");
        true
    }

    /// Follows the transaction by the statement and the status flags of its answer.
    fn follow_txn(&mut self, stmt: Option<&Stmt>, params: &[Value], answer: &Answer) {
        let name = self.spec.name.clone();
        let (status, ok) = match answer {
            Answer::Ok(ok) => (ok.status, Some(ok)),
            Answer::Rows(_, _, status) => (*status, None),
            _ => return,
        };
        let in_trans = status & SERVER_STATUS_IN_TRANS != 0;
        if let Some(Stmt::Use(db)) = stmt {
            self.conn.as_mut().expect("connected").db = Some(db.clone());
        }
        if matches!(stmt, Some(Stmt::Rollback)) {
            self.txn.end(&name, TxnStatus::Failed);
            return;
        }
        // BEGIN commits what was open before it.
        if matches!(stmt, Some(Stmt::Begin)) {
            self.txn.end(&name, TxnStatus::Acked);
        }
        if let (Some(ok), Some(stmt)) = (ok, stmt) {
            if ok.affected_rows > 0 {
                match self.write_of(stmt, params, ok.last_insert_id) {
                    Some(w) => self.txn.pending.push(w),
                    None => self.txn.opaque = true,
                }
            }
        }
        if !in_trans {
            self.txn.end(&name, TxnStatus::Acked);
        }
    }

    fn write_of(&self, stmt: &Stmt, params: &[Value], insert_id: u64) -> Option<Write> {
        let lit = |e: &Expr| -> Option<Value> {
            match e {
                Expr::Lit(v) => Some(v.clone()),
                Expr::Param(i) => params.get(*i).cloned(),
                Expr::Neg(inner) => match inner.as_ref() {
                    Expr::Lit(Value::Int(i)) => Some(Value::Int(-i)),
                    _ => None,
                },
                _ => None,
            }
        };
        let qualify = |t: &str| -> Option<String> {
            if t.contains('.') {
                Some(t.to_string())
            } else {
                let db = self.conn.as_ref()?.db.clone()?;
                Some(format!("{db}.{t}"))
            }
        };
        match stmt {
            Stmt::Insert { table, key, value } => {
                let key = match key {
                    Some(k) => lit(k)?.as_int()?,
                    None => insert_id as i64,
                };
                Some(Write {
                    table: qualify(table)?,
                    key,
                    value: Some(lit(value)?.text().unwrap_or_default()),
                })
            }
            Stmt::Update { table, value, key } => Some(Write {
                table: qualify(table)?,
                key: lit(key)?.as_int()?,
                value: Some(lit(value)?.text().unwrap_or_default()),
            }),
            Stmt::Delete { table, key } => Some(Write {
                table: qualify(table)?,
                key: lit(key)?.as_int()?,
                value: None,
            }),
            _ => None,
        }
    }
}

fn mismatch(expected: &Expected, answer: &Answer) -> Option<String> {
    let got = describe(answer);
    let fine = match (expected, answer) {
        (Expected::Ok, Answer::Ok(_)) => true,
        (Expected::Affected(n), Answer::Ok(ok)) => ok.affected_rows == *n,
        (Expected::Rows(rows), Answer::Rows(_, got, _)) => rows == got,
        (Expected::Value(v), Answer::Rows(_, got, _)) => {
            got.len() == 1 && got[0].first().cloned().flatten().as_deref() == Some(v.as_str())
        }
        (Expected::OneOf(vs), Answer::Rows(_, got, _)) => {
            got.len() == 1
                && got[0]
                    .first()
                    .cloned()
                    .flatten()
                    .is_some_and(|v| vs.contains(&v))
        }
        (Expected::Err(code), Answer::Err(e)) => e.code == *code,
        _ => false,
    };
    (!fine).then(|| format!("expected {expected:?}, got {got}"))
}

/// A COM_STMT_EXECUTE payload binding `args` (integers as LONGLONG, the rest as strings).
pub fn execute_payload(id: u32, args: &[Value]) -> Vec<u8> {
    let mut p = BytesMut::new();
    p.put_u8(COM_STMT_EXECUTE);
    p.put_u32_le(id);
    p.put_u8(0);
    p.put_u32_le(1);
    if !args.is_empty() {
        let mut bitmap = vec![0u8; args.len().div_ceil(8)];
        for (i, a) in args.iter().enumerate() {
            if *a == Value::Null {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        p.put_slice(&bitmap);
        p.put_u8(1);
        for a in args {
            let ty = match a {
                Value::Null => 6,
                Value::Int(_) => 8,
                _ => 253,
            };
            p.put_u8(ty);
            p.put_u8(0);
        }
        for a in args {
            match a {
                Value::Null => {}
                Value::Int(i) => p.put_i64_le(*i),
                other => put_lenenc_bytes(&mut p, other.to_string().as_bytes()),
            }
        }
    }
    p.to_vec()
}
