//! A small MySQL-protocol server built on ferry-core's packets: the
//! simulated backend. It speaks enough of MariaDB for ferry and the scripted
//! clients (see [`crate::sql`] for the dialect), keeps per-connection session
//! state, reports it through the session trackers, and stores data in the
//! [`Store`] all backends share.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use ferry_core::auth::{StoredCredential, NATIVE_PASSWORD};
use ferry_core::packets::codec::{put_lenenc_bytes, Reader};
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::command::*;
use ferry_core::packets::flags::status::*;
use ferry_core::packets::session_state::write_all;
use ferry_core::packets::{
    is_ssl_request, AuthSwitchRequest, ChangeUser, EofPacket, ErrPacket, Handshake,
    HandshakeResponse, OkPacket, TrackItem,
};
use ferry_core::wire::{write_packet, Packet, PacketDecoder};
use ferry_core::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::sql::{self, Expr, From, Stmt, Target, Value};
use crate::store::{Store, Write};
use crate::trace::Trace;

/// How a backend greets new connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Greeting {
    /// At once.
    #[default]
    Normal,
    /// After this many milliseconds.
    DelayMs(u64),
    /// Never: the connection is accepted and then nothing is said.
    Never,
}

/// What one simulated backend is.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    /// Its id (also its host name and `@@hostname`).
    pub id: String,
    /// Users and their clear-text passwords.
    pub users: BTreeMap<String, String>,
    /// Databases that exist.
    pub databases: BTreeSet<String>,
    /// How it greets.
    pub greeting: Greeting,
    /// Extra time before every reply, milliseconds.
    pub reply_delay_ms: u64,
    /// Seed for salts and thread ids.
    pub seed: u64,
}

/// The version the simulated backends announce.
pub const VERSION: &str = "5.5.5-10.11.6-MariaDB-sim";

/// Capabilities the simulated backends offer (MariaDB-like: `CLIENT_MYSQL` clear).
pub const CAPABILITIES: u32 = (FERRY_SUPPORTED
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF
    | CLIENT_PLUGIN_AUTH
    | CLIENT_SECURE_CONNECTION)
    & !CLIENT_MYSQL;

/// A live connection as other connections see it (for KILL).
#[derive(Debug)]
struct ConnHandle {
    user: Mutex<String>,
    killed: AtomicBool,
    kill_query: AtomicBool,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Runtime {
    threads: BTreeMap<u32, Arc<ConnHandle>>,
    locks: BTreeMap<String, u32>,
    rng: Option<Rng>,
    next_thread: u32,
}

/// One simulated backend: its spec, its live connections and named locks.
/// The [`Store`] is shared by all backends and survives crashes.
#[derive(Debug)]
pub struct Server {
    spec: BackendSpec,
    store: Store,
    trace: Trace,
    rt: Mutex<Runtime>,
    accepted: AtomicU32,
}

impl Server {
    /// A backend over `store`.
    pub fn new(spec: BackendSpec, store: Store, trace: Trace) -> Arc<Self> {
        let server = Arc::new(Server {
            spec,
            store,
            trace,
            rt: Mutex::new(Runtime::default()),
            accepted: AtomicU32::new(0),
        });
        server.restart();
        server
    }

    /// Forgets everything a process would lose (thread ids start again, locks are gone).
    pub fn restart(&self) {
        let mut rt = self.rt.lock().expect("backend lock");
        let mut rng = Rng::new(self.spec.seed);
        rt.next_thread = 1 + rng.below(1000) as u32;
        rt.rng = Some(rng);
        rt.threads.clear();
        rt.locks.clear();
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Connections open right now.
    pub fn live_connections(&self) -> usize {
        self.rt.lock().expect("backend lock").threads.len()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }

    fn register(self: &Arc<Self>) -> (u32, [u8; 20], Guard) {
        let mut rt = self.rt.lock().expect("backend lock");
        let thread = rt.next_thread;
        rt.next_thread += 1;
        let rng = rt.rng.as_mut().expect("seeded");
        let mut salt = [0u8; 20];
        for b in &mut salt {
            *b = 33 + rng.below(94) as u8;
        }
        let handle = Arc::new(ConnHandle {
            user: Mutex::new(String::new()),
            killed: AtomicBool::new(false),
            kill_query: AtomicBool::new(false),
            notify: Notify::new(),
        });
        rt.threads.insert(thread, handle.clone());
        self.accepted.fetch_add(1, Ordering::Relaxed);
        (
            thread,
            salt,
            Guard {
                server: self.clone(),
                thread,
                handle,
            },
        )
    }
}

/// Unregisters a connection and releases its locks however it ends (also on a crash).
struct Guard {
    server: Arc<Server>,
    thread: u32,
    handle: Arc<ConnHandle>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut rt = self.server.rt.lock().expect("backend lock");
        if rt
            .threads
            .get(&self.thread)
            .is_some_and(|h| Arc::ptr_eq(h, &self.handle))
        {
            rt.threads.remove(&self.thread);
        }
        rt.locks.retain(|_, t| *t != self.thread);
    }
}

/// System variables every session starts with (boolean ones as ON/OFF).
const DEFAULTS: &[(&str, &str)] = &[
    ("autocommit", "ON"),
    ("character_set_client", "utf8mb4"),
    ("character_set_connection", "utf8mb4"),
    ("character_set_results", "utf8mb4"),
    ("collation_connection", "utf8mb4_general_ci"),
    ("max_allowed_packet", "16777216"),
    ("net_write_timeout", "60"),
    ("session_track_schema", "ON"),
    ("session_track_state_change", "OFF"),
    (
        "session_track_system_variables",
        "autocommit,character_set_client,character_set_connection,character_set_results,time_zone",
    ),
    ("session_track_transaction_info", "OFF"),
    (
        "sql_mode",
        "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION",
    ),
    ("time_zone", "SYSTEM"),
    ("transaction_isolation", "REPEATABLE-READ"),
    ("tx_isolation", "REPEATABLE-READ"),
    ("wait_timeout", "28800"),
];

fn is_boolean(name: &str) -> bool {
    matches!(
        name,
        "autocommit" | "session_track_schema" | "session_track_state_change"
    )
}

fn err(code: u16, state: &str, msg: impl Into<String>) -> ErrPacket {
    ErrPacket::new(code, state, msg)
}

fn syntax(msg: String) -> ErrPacket {
    if msg.starts_with("Unknown column") {
        err(1054, "42S22", msg)
    } else if msg.starts_with("Column count") {
        err(1136, "21S01", msg)
    } else {
        err(1064, "42000", msg)
    }
}

/// A result: columns and rows (`None` is NULL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

/// What a statement produced.
enum Reply {
    Ok {
        affected: u64,
        insert_id: u64,
    },
    Rows(Rows),
    Err(ErrPacket),
    /// The connection was killed: send this error, then close.
    Killed(ErrPacket),
}

/// A prepared statement.
struct Prepared {
    stmt: Stmt,
    params: usize,
    columns: Vec<String>,
    types: Vec<u8>,
}

/// One connection's session.
struct Conn {
    server: Arc<Server>,
    handle: Arc<ConnHandle>,
    thread: u32,
    salt: [u8; 20],
    caps: u32,
    user: String,
    db: Option<String>,
    vars: BTreeMap<String, String>,
    user_vars: BTreeMap<String, Value>,
    /// `information_schema.USER_VARIABLES.VARIABLE_TYPE` of each user variable.
    user_types: BTreeMap<String, &'static str>,
    /// An open transaction: explicit (BEGIN) or implicit (autocommit off).
    txn: Option<Txn>,
    temp: BTreeMap<String, BTreeMap<i64, String>>,
    stmts: BTreeMap<u32, Prepared>,
    next_stmt: u32,
    last_prepared: Option<u32>,
    last_insert_id: u64,
    reported_trx: String,
    /// Session-tracker entries of the statement running now.
    track: Vec<TrackItem>,
    state_changed: bool,
}

#[derive(Default)]
struct Txn {
    explicit: bool,
    read: bool,
    writes: Vec<Write>,
}

/// Serves one accepted connection until it ends.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(server: Arc<Server>, mut stream: S) {
    let (thread, salt, guard) = server.register();
    match server.spec.greeting {
        Greeting::Normal => {}
        Greeting::DelayMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Greeting::Never => {
            // Hold the socket until the peer gives up.
            let mut sink = [0u8; 256];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            drop(guard);
            return;
        }
    }
    let mut conn = Conn {
        server: server.clone(),
        handle: guard.handle.clone(),
        thread,
        salt,
        caps: 0,
        user: String::new(),
        db: None,
        vars: defaults(),
        user_vars: BTreeMap::new(),
        user_types: BTreeMap::new(),
        txn: None,
        temp: BTreeMap::new(),
        stmts: BTreeMap::new(),
        next_stmt: 1,
        last_prepared: None,
        last_insert_id: 0,
        reported_trx: "________".into(),
        track: Vec::new(),
        state_changed: false,
    };
    let mut io = Io {
        stream,
        decoder: PacketDecoder::new(64 << 20),
    };
    if conn.login(&mut io).await.is_ok() {
        server
            .trace
            .log(&server.spec.id, format!("t{thread} login {}", conn.user));
        conn.run(&mut io).await;
        server
            .trace
            .log(&server.spec.id, format!("t{thread} closed"));
    }
    drop(guard);
}

fn defaults() -> BTreeMap<String, String> {
    DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Io<S> {
    stream: S,
    decoder: PacketDecoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn read(&mut self, handle: Option<&ConnHandle>) -> Option<Packet> {
        loop {
            match self.decoder.decode() {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(_) => return None,
            }
            let mut buf = [0u8; 16 * 1024];
            let n = match handle {
                Some(h) => loop {
                    if h.killed.load(Ordering::Relaxed) {
                        return None;
                    }
                    tokio::select! {
                        biased;
                        _ = h.notify.notified() => continue,
                        r = self.stream.read(&mut buf) => break r,
                    }
                },
                None => self.stream.read(&mut buf).await,
            };
            match n {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.decoder.extend(&buf[..n]),
            }
            if handle.is_some_and(|h| h.killed.load(Ordering::Relaxed)) {
                return None;
            }
        }
    }

    async fn send(&mut self, out: &mut BytesMut) -> bool {
        let ok = self.stream.write_all(out).await.is_ok();
        out.clear();
        ok
    }
}

/// Frames payloads with running sequence ids.
struct Out {
    buf: BytesMut,
    seq: u8,
}

impl Out {
    fn new(seq: u8) -> Self {
        Out {
            buf: BytesMut::new(),
            seq,
        }
    }

    fn packet(&mut self, payload: &[u8]) {
        self.seq = write_packet(&mut self.buf, self.seq, payload);
    }

    fn err(&mut self, e: &ErrPacket) {
        let mut p = BytesMut::new();
        e.write(&mut p);
        self.packet(&p);
    }
}

fn column_def(name: &str, schema: &str) -> BytesMut {
    let mut p = BytesMut::new();
    for s in ["def", schema, "", "", name, name] {
        put_lenenc_bytes(&mut p, s.as_bytes());
    }
    p.put_u8(0x0c);
    p.put_u16_le(45);
    p.put_u32_le(1020);
    p.put_u8(0xFD);
    p.put_u16_le(0);
    p.put_u8(0);
    p.put_u16_le(0);
    p
}

impl Conn {
    fn deprecate_eof(&self) -> bool {
        self.caps & CLIENT_DEPRECATE_EOF != 0
    }

    fn status(&self) -> u16 {
        let mut s = 0;
        if self.var("autocommit") == "ON" {
            s |= SERVER_STATUS_AUTOCOMMIT;
        }
        if self.txn.is_some() {
            s |= SERVER_STATUS_IN_TRANS;
        }
        s
    }

    fn var(&self, name: &str) -> &str {
        self.vars.get(name).map_or("", String::as_str)
    }

    async fn login<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) -> Result<(), ()> {
        let hs = Handshake {
            server_version: VERSION.into(),
            connection_id: self.thread,
            auth_data: self.salt.to_vec(),
            capabilities: CAPABILITIES,
            mariadb_capabilities: 0,
            collation: 45,
            status: SERVER_STATUS_AUTOCOMMIT,
            auth_plugin: Some(NATIVE_PASSWORD.into()),
        };
        let mut out = Out::new(0);
        let mut p = BytesMut::new();
        hs.write(&mut p);
        out.packet(&p);
        if !io.send(&mut out.buf).await {
            return Err(());
        }
        let packet = io.read(None).await.ok_or(())?;
        let mut out = Out::new(packet.next_seq);
        if is_ssl_request(&packet.payload) {
            out.err(&err(1043, "08S01", "Bad handshake"));
            io.send(&mut out.buf).await;
            return Err(());
        }
        let Ok(resp) = HandshakeResponse::parse(&packet.payload) else {
            out.err(&err(1043, "08S01", "Bad handshake"));
            io.send(&mut out.buf).await;
            return Err(());
        };
        self.caps = resp.capabilities & CAPABILITIES;
        let mut auth = resp.auth_response.clone();
        if resp
            .auth_plugin
            .as_deref()
            .is_some_and(|p| p != NATIVE_PASSWORD && !p.is_empty())
        {
            let mut p = BytesMut::new();
            AuthSwitchRequest {
                plugin: NATIVE_PASSWORD.into(),
                data: self.salt.to_vec(),
            }
            .write(&mut p);
            out.packet(&p);
            if !io.send(&mut out.buf).await {
                return Err(());
            }
            let reply = io.read(None).await.ok_or(())?;
            out = Out::new(reply.next_seq);
            auth = reply.payload.to_vec();
        }
        if !self.verify(&resp.user, &auth) {
            let using = if auth.is_empty() { "NO" } else { "YES" };
            out.err(&err(
                1045,
                "28000",
                format!(
                    "Access denied for user '{}'@'ferry' (using password: {using})",
                    resp.user
                ),
            ));
            io.send(&mut out.buf).await;
            return Err(());
        }
        self.user = resp.user.clone();
        self.set_handle_user();
        if let Some(db) = resp.database.as_deref().filter(|d| !d.is_empty()) {
            if !self.db_exists(db) {
                out.err(&err(1049, "42000", format!("Unknown database '{db}'")));
                io.send(&mut out.buf).await;
                return Err(());
            }
            self.db = Some(db.to_string());
        }
        self.ok(&mut out, 0, 0);
        if io.send(&mut out.buf).await {
            Ok(())
        } else {
            Err(())
        }
    }

    fn set_handle_user(&mut self) {
        *self.handle.user.lock().expect("handle lock") = self.user.clone();
    }

    fn verify(&self, user: &str, auth: &[u8]) -> bool {
        self.server.spec.users.get(user).is_some_and(|pw| {
            StoredCredential::from_password(pw)
                .verify(&self.salt, auth)
                .is_some()
        })
    }

    fn db_exists(&self, db: &str) -> bool {
        self.server.spec.databases.contains(db) || db == "information_schema" || db == "mysql"
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) {
        loop {
            let handle = self.handle.clone();
            let Some(packet) = io.read(Some(&handle)).await else {
                return;
            };
            let mut out = Out::new(packet.next_seq);
            let payload = packet.payload;
            let Some((&command, body)) = payload.split_first() else {
                return;
            };
            self.handle.kill_query.store(false, Ordering::Relaxed);
            if self.server.spec.reply_delay_ms > 0
                && command != COM_QUIT
                && command != COM_STMT_CLOSE
            {
                tokio::time::sleep(Duration::from_millis(self.server.spec.reply_delay_ms)).await;
            }
            let reply = match command {
                COM_QUIT => return,
                COM_STMT_CLOSE => {
                    if let Ok(id) = Reader::new(body, "close").u32() {
                        self.stmts.remove(&id);
                    }
                    continue;
                }
                COM_STMT_SEND_LONG_DATA => continue,
                COM_PING => Reply::Ok {
                    affected: 0,
                    insert_id: 0,
                },
                COM_INIT_DB => {
                    let db = String::from_utf8_lossy(body).into_owned();
                    self.use_db(&db)
                }
                COM_QUERY => {
                    let sql = String::from_utf8_lossy(body).into_owned();
                    match sql::parse(&sql) {
                        Ok(stmt) => self.execute(&stmt, &[]).await,
                        Err(e) => Reply::Err(syntax(e)),
                    }
                }
                COM_STMT_PREPARE => {
                    let sql = String::from_utf8_lossy(body).into_owned();
                    match self.prepare(&sql) {
                        Ok(()) => {
                            self.write_prepared(&mut out);
                            if !io.send(&mut out.buf).await {
                                return;
                            }
                            continue;
                        }
                        Err(e) => Reply::Err(e),
                    }
                }
                COM_STMT_EXECUTE => match self.bind(body) {
                    Ok((id, params)) => {
                        let stmt = self.stmts[&id].stmt.clone();
                        match self.execute(&stmt, &params).await {
                            Reply::Rows(rows) => {
                                self.write_rows(&mut out, io, &rows, true).await;
                                if !io.send(&mut out.buf).await {
                                    return;
                                }
                                continue;
                            }
                            other => other,
                        }
                    }
                    Err(e) => Reply::Err(e),
                },
                COM_STMT_RESET => Reply::Ok {
                    affected: 0,
                    insert_id: 0,
                },
                COM_RESET_CONNECTION => {
                    self.reset();
                    Reply::Ok {
                        affected: 0,
                        insert_id: 0,
                    }
                }
                COM_CHANGE_USER => self.change_user(&payload),
                COM_PROCESS_KILL => match Reader::new(body, "kill").u32() {
                    Ok(id) => self.kill(id, false),
                    Err(_) => Reply::Err(err(1047, "08S01", "Unknown command")),
                },
                _ => Reply::Err(err(1047, "08S01", "Unknown command")),
            };
            match reply {
                Reply::Ok {
                    affected,
                    insert_id,
                } => self.ok(&mut out, affected, insert_id),
                Reply::Rows(rows) => self.write_rows(&mut out, io, &rows, false).await,
                Reply::Err(e) => {
                    self.track.clear();
                    self.state_changed = false;
                    out.err(&e)
                }
                Reply::Killed(e) => {
                    out.err(&e);
                    io.send(&mut out.buf).await;
                    return;
                }
            }
            if !io.send(&mut out.buf).await {
                return;
            }
        }
    }

    /// The session-state block for what the statement changed (and the transaction state).
    fn take_track(&mut self) -> Vec<TrackItem> {
        let mut items = std::mem::take(&mut self.track);
        if self.var("session_track_state_change") == "ON" && self.state_changed {
            items.push(TrackItem::StateChange(true));
        }
        self.state_changed = false;
        if self.var("session_track_transaction_info") != "OFF" {
            let now = self.trx_state();
            if now != self.reported_trx {
                items.push(TrackItem::TransactionState(now.clone().into_bytes()));
                self.reported_trx = now;
            }
        }
        if self.caps & CLIENT_SESSION_TRACK == 0 {
            items.clear();
        }
        items
    }

    fn trx_state(&self) -> String {
        let Some(t) = &self.txn else {
            return "________".into();
        };
        let mut s = *b"________";
        s[0] = if t.explicit { b'T' } else { b'I' };
        if t.read {
            s[2] = b'R';
        }
        if !t.writes.is_empty() {
            s[4] = b'W';
        }
        String::from_utf8_lossy(&s).into_owned()
    }

    fn ok(&mut self, out: &mut Out, affected: u64, insert_id: u64) {
        let items = self.take_track();
        let mut ok = OkPacket {
            header: 0,
            affected_rows: affected,
            last_insert_id: insert_id,
            status: self.status(),
            ..OkPacket::default()
        };
        if !items.is_empty() {
            let mut block = BytesMut::new();
            write_all(&items, &mut block);
            ok.session_state = Some(block.to_vec());
            ok.status |= SERVER_SESSION_STATE_CHANGED;
        }
        let mut p = BytesMut::new();
        ok.write(&mut p, self.caps);
        out.packet(&p);
    }

    fn eof(&mut self, out: &mut Out) {
        let mut p = BytesMut::new();
        EofPacket {
            warnings: 0,
            status: self.status(),
        }
        .write(&mut p);
        out.packet(&p);
    }

    async fn write_rows<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        out: &mut Out,
        io: &mut Io<S>,
        rows: &Rows,
        binary: bool,
    ) {
        let mut p = BytesMut::new();
        ferry_core::packets::codec::put_lenenc_int(&mut p, rows.columns.len() as u64);
        out.packet(&p);
        let schema = self.db.clone().unwrap_or_default();
        for c in &rows.columns {
            out.packet(&column_def(c, &schema));
        }
        if !self.deprecate_eof() {
            self.eof(out);
        }
        for row in &rows.rows {
            let mut p = BytesMut::new();
            if binary {
                p.put_u8(0);
                let mut bitmap = vec![0u8; (row.len() + 7 + 2) / 8];
                for (i, v) in row.iter().enumerate() {
                    if v.is_none() {
                        bitmap[(i + 2) / 8] |= 1 << ((i + 2) % 8);
                    }
                }
                p.put_slice(&bitmap);
                for v in row.iter().flatten() {
                    put_lenenc_bytes(&mut p, v.as_bytes());
                }
            } else {
                for v in row {
                    match v {
                        Some(v) => put_lenenc_bytes(&mut p, v.as_bytes()),
                        None => p.put_u8(0xFB),
                    }
                }
            }
            out.packet(&p);
            if out.buf.len() > 32 * 1024 && !io.send(&mut out.buf).await {
                return;
            }
        }
        if self.deprecate_eof() {
            let items = self.take_track();
            let mut ok = OkPacket {
                header: 0xFE,
                status: self.status(),
                ..OkPacket::default()
            };
            if !items.is_empty() {
                let mut block = BytesMut::new();
                write_all(&items, &mut block);
                ok.session_state = Some(block.to_vec());
                ok.status |= SERVER_SESSION_STATE_CHANGED;
            }
            let mut p = BytesMut::new();
            ok.write(&mut p, self.caps);
            out.packet(&p);
        } else {
            self.take_track();
            self.eof(out);
        }
    }

    fn reset(&mut self) {
        self.vars = defaults();
        self.user_vars.clear();
        self.user_types.clear();
        self.txn = None;
        self.temp.clear();
        self.stmts.clear();
        self.last_insert_id = 0;
        self.reported_trx = "________".into();
        self.track.clear();
        self.state_changed = false;
        let thread = self.thread;
        let mut rt = self.server.rt.lock().expect("backend lock");
        rt.locks.retain(|_, t| *t != thread);
    }

    fn change_user(&mut self, payload: &[u8]) -> Reply {
        let Ok(cu) = ChangeUser::parse(payload, self.caps) else {
            return Reply::Err(err(1043, "08S01", "Bad handshake"));
        };
        if !self.verify(&cu.user, &cu.auth_response) {
            return Reply::Killed(err(
                1045,
                "28000",
                format!("Access denied for user '{}'@'ferry'", cu.user),
            ));
        }
        self.reset();
        self.user = cu.user;
        self.set_handle_user();
        self.db = (!cu.database.is_empty()).then_some(cu.database);
        Reply::Ok {
            affected: 0,
            insert_id: 0,
        }
    }

    fn use_db(&mut self, db: &str) -> Reply {
        if !self.db_exists(db) {
            return Reply::Err(err(1049, "42000", format!("Unknown database '{db}'")));
        }
        self.db = Some(db.to_string());
        if self.var("session_track_schema") == "ON" {
            self.track.push(TrackItem::Schema(db.as_bytes().to_vec()));
        }
        self.state_changed = true;
        Reply::Ok {
            affected: 0,
            insert_id: 0,
        }
    }

    fn qualify(&self, table: &str) -> Result<String, ErrPacket> {
        if table.contains('.') {
            return Ok(table.to_string());
        }
        match &self.db {
            Some(db) => Ok(format!("{db}.{table}")),
            None => Err(err(1046, "3D000", "No database selected")),
        }
    }

    fn commit(&mut self) {
        if let Some(t) = self.txn.take() {
            self.server
                .store
                .commit(t.writes, &self.server.spec.id, self.thread);
        }
    }

    /// Starts the implicit transaction of `autocommit = 0` when a statement touches data.
    fn touch(&mut self, write: bool) {
        if self.txn.is_none() && self.var("autocommit") == "OFF" {
            self.txn = Some(Txn::default());
        }
        if let Some(t) = &mut self.txn {
            if !write {
                t.read = true;
            }
        }
    }

    fn read_row(&self, table: &str, key: i64) -> Option<String> {
        if let Some(t) = self.temp.get(table) {
            return t.get(&key).cloned();
        }
        if let Some(t) = &self.txn {
            if let Some(w) = t
                .writes
                .iter()
                .rev()
                .find(|w| w.table == table && w.key == key)
            {
                return w.value.clone();
            }
        }
        self.server.store.get(table, key)
    }

    fn read_all(&self, table: &str) -> BTreeMap<i64, String> {
        if let Some(t) = self.temp.get(table) {
            return t.clone();
        }
        let mut rows = self.server.store.rows(table);
        if let Some(t) = &self.txn {
            for w in &t.writes {
                if w.table == table {
                    match &w.value {
                        Some(v) => rows.insert(w.key, v.clone()),
                        None => rows.remove(&w.key),
                    };
                }
            }
        }
        rows
    }

    fn write_row(&mut self, w: Write) {
        if let Some(t) = self.temp.get_mut(&w.table) {
            match w.value {
                Some(v) => t.insert(w.key, v),
                None => t.remove(&w.key),
            };
            return;
        }
        self.touch(true);
        match &mut self.txn {
            Some(t) => t.writes.push(w),
            None => self
                .server
                .store
                .commit(vec![w], &self.server.spec.id, self.thread),
        }
    }

    fn eval(&mut self, e: &Expr, params: &[Value]) -> Result<Value, ErrPacket> {
        Ok(match e {
            Expr::Lit(v) => v.clone(),
            Expr::Param(i) => params
                .get(*i)
                .cloned()
                .ok_or_else(|| err(1210, "HY000", "Incorrect arguments to EXECUTE"))?,
            Expr::UserVar(u) => self.user_vars.get(u).cloned().unwrap_or(Value::Null),
            Expr::SysVar(name) => self.sysvar(name)?,
            Expr::Neg(inner) => match self.eval(inner, params)? {
                Value::Int(i) => Value::Int(-i),
                Value::Null => Value::Null,
                Value::Double(d) => Value::Double(format!("-{d}")),
                other => Value::Dec(format!("-{other}")),
            },
            Expr::IsNull(inner, not) => {
                let null = self.eval(inner, params)? == Value::Null;
                Value::Int((null != *not) as i64)
            }
            Expr::Cast(inner, ty) => {
                let v = self.eval(inner, params)?;
                if v == Value::Null {
                    return Ok(Value::Null);
                }
                match ty.as_str() {
                    "SIGNED" | "UNSIGNED" | "INTEGER" | "INT" => {
                        Value::Int(v.as_int().unwrap_or(0))
                    }
                    "DECIMAL" => Value::Dec(v.to_string()),
                    "DOUBLE" | "REAL" | "FLOAT" => {
                        Value::Double(v.as_secs().map_or_else(|| v.to_string(), |f| f.to_string()))
                    }
                    "CHAR" | "VARCHAR" | "BINARY" => Value::Str(v.to_string()),
                    _ => return Err(err(1064, "42000", format!("unsupported CAST to {ty}"))),
                }
            }
            Expr::Column(c) => {
                return Err(err(
                    1054,
                    "42S22",
                    format!("Unknown column '{c}' in 'field list'"),
                ))
            }
            Expr::Func(name, args) => {
                let mut vals = Vec::new();
                for a in args {
                    vals.push(self.eval(a, params)?);
                }
                match (name.as_str(), vals.as_slice()) {
                    ("CONNECTION_ID", []) => Value::Int(self.thread as i64),
                    ("LAST_INSERT_ID", []) => Value::Int(self.last_insert_id as i64),
                    ("LAST_INSERT_ID", [v]) => {
                        self.last_insert_id = v.as_int().unwrap_or(0) as u64;
                        v.clone()
                    }
                    ("DATABASE" | "SCHEMA", []) => self.db.clone().map_or(Value::Null, Value::Str),
                    ("VERSION", []) => Value::Str(VERSION.trim_start_matches("5.5.5-").into()),
                    ("HEX", [v]) => match v {
                        Value::Null => Value::Null,
                        Value::Int(i) => Value::Str(format!("{i:X}")),
                        other => Value::Str(
                            other
                                .to_string()
                                .bytes()
                                .map(|b| format!("{b:02X}"))
                                .collect(),
                        ),
                    },
                    ("COLLATION", [v]) => match v {
                        Value::Str(_) => Value::Str(self.var("collation_connection").to_string()),
                        _ => Value::Str("binary".into()),
                    },
                    ("CONCAT", vs) => {
                        if vs.contains(&Value::Null) {
                            Value::Null
                        } else {
                            Value::Str(vs.iter().map(|v| v.to_string()).collect())
                        }
                    }
                    ("RELEASE_LOCK", [name]) => {
                        let name = name.to_string();
                        let mut rt = self.server.rt.lock().expect("backend lock");
                        match rt.locks.get(&name) {
                            None => Value::Null,
                            Some(t) if *t == self.thread => {
                                rt.locks.remove(&name);
                                Value::Int(1)
                            }
                            Some(_) => Value::Int(0),
                        }
                    }
                    ("IS_USED_LOCK", [name]) => {
                        let rt = self.server.rt.lock().expect("backend lock");
                        rt.locks
                            .get(&name.to_string())
                            .map_or(Value::Null, |t| Value::Int(*t as i64))
                    }
                    _ => {
                        return Err(err(
                            1305,
                            "42000",
                            format!("FUNCTION {name} does not exist"),
                        ))
                    }
                }
            }
        })
    }

    fn sysvar(&self, name: &str) -> Result<Value, ErrPacket> {
        Ok(match name {
            "hostname" => Value::Str(self.server.spec.id.clone()),
            "version" => Value::Str(VERSION.trim_start_matches("5.5.5-").into()),
            "last_insert_id" | "identity" => Value::Int(self.last_insert_id as i64),
            "in_transaction" => Value::Int(self.txn.is_some() as i64),
            _ => match self.vars.get(name) {
                Some(v) if is_boolean(name) => Value::Int((v == "ON") as i64),
                Some(v) => match v.parse::<i64>() {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::Str(v.clone()),
                },
                None => {
                    return Err(err(
                        1193,
                        "HY000",
                        format!("Unknown system variable '{name}'"),
                    ))
                }
            },
        })
    }

    fn set_sysvar(&mut self, name: &str, value: Value) -> Result<(), ErrPacket> {
        if !self.vars.contains_key(name) {
            return Err(err(
                1193,
                "HY000",
                format!("Unknown system variable '{name}'"),
            ));
        }
        let mut text = value.text().unwrap_or_default();
        if is_boolean(name) {
            text = match text.to_ascii_uppercase().as_str() {
                "1" | "ON" | "TRUE" => "ON".into(),
                "0" | "OFF" | "FALSE" => "OFF".into(),
                _ => {
                    return Err(err(
                        1231,
                        "42000",
                        format!("Variable '{name}' can't be set to the value of '{text}'"),
                    ))
                }
            };
        }
        if text.eq_ignore_ascii_case("DEFAULT") {
            text = DEFAULTS
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(String::new(), |(_, v)| v.to_string());
        }
        if name == "session_track_transaction_info" {
            text = text.to_ascii_uppercase();
        }
        if name == "autocommit" {
            if text == "ON" && self.var("autocommit") == "OFF" {
                self.commit();
            }
            if text == "OFF" && self.var("autocommit") == "ON" {
                // Nothing to do until a statement touches data.
            }
        }
        self.vars.insert(name.to_string(), text.clone());
        if name == "tx_isolation" || name == "transaction_isolation" {
            self.vars.insert("tx_isolation".into(), text.clone());
            self.vars
                .insert("transaction_isolation".into(), text.clone());
        }
        let tracked = self.var("session_track_system_variables").to_string();
        if tracked
            .split(',')
            .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case(name))
        {
            self.track.push(TrackItem::SystemVariable {
                name: name.as_bytes().to_vec(),
                value: text.into_bytes(),
            });
        }
        self.state_changed = true;
        Ok(())
    }

    fn kill(&mut self, id: u32, query: bool) -> Reply {
        let target = {
            let rt = self.server.rt.lock().expect("backend lock");
            rt.threads.get(&id).cloned()
        };
        let Some(target) = target else {
            return Reply::Err(err(1094, "HY000", format!("Unknown thread id: {id}")));
        };
        if *target.user.lock().expect("handle lock") != self.user {
            return Reply::Err(err(
                1095,
                "HY000",
                format!("You are not owner of thread {id}"),
            ));
        }
        self.server.trace.log(
            &self.server.spec.id,
            format!(
                "t{} kills {}t{id}",
                self.thread,
                if query { "the query of " } else { "" }
            ),
        );
        if id == self.thread && !query {
            return Reply::Killed(err(1927, "70100", "Connection was killed"));
        }
        if query {
            target.kill_query.store(true, Ordering::Relaxed);
        } else {
            target.killed.store(true, Ordering::Relaxed);
        }
        target.notify.notify_waiters();
        target.notify.notify_one();
        Reply::Ok {
            affected: 0,
            insert_id: 0,
        }
    }

    /// Waits up to `secs`, or until a KILL; true if the wait was interrupted.
    async fn wait(&self, secs: f64) -> bool {
        let sleep = tokio::time::sleep(Duration::from_micros((secs.max(0.0) * 1e6) as u64));
        tokio::pin!(sleep);
        loop {
            if self.interrupted() {
                return true;
            }
            tokio::select! {
                biased;
                _ = self.handle.notify.notified() => {}
                _ = &mut sleep => return self.interrupted(),
            }
        }
    }

    fn interrupted(&self) -> bool {
        self.handle.killed.load(Ordering::Relaxed) || self.handle.kill_query.load(Ordering::Relaxed)
    }

    async fn get_lock(&mut self, name: String, timeout: f64) -> Value {
        let deadline =
            tokio::time::Instant::now() + Duration::from_micros((timeout.max(0.0) * 1e6) as u64);
        loop {
            {
                let mut rt = self.server.rt.lock().expect("backend lock");
                match rt.locks.get(&name) {
                    Some(t) if *t != self.thread => {}
                    _ => {
                        rt.locks.insert(name, self.thread);
                        self.state_changed = true;
                        return Value::Int(1);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Value::Int(0);
            }
            if self.wait(0.01).await {
                return Value::Null;
            }
        }
    }

    async fn execute(&mut self, stmt: &Stmt, params: &[Value]) -> Reply {
        let done = Reply::Ok {
            affected: 0,
            insert_id: 0,
        };
        match stmt {
            Stmt::Begin => {
                self.commit();
                self.txn = Some(Txn {
                    explicit: true,
                    ..Txn::default()
                });
                done
            }
            Stmt::Commit => {
                self.commit();
                done
            }
            Stmt::Rollback => {
                self.txn = None;
                done
            }
            Stmt::Use(db) => self.use_db(db),
            Stmt::Set(assigns) => {
                for (target, expr) in assigns {
                    let value = match self.eval(expr, params) {
                        Ok(v) => v,
                        Err(e) => return Reply::Err(e),
                    };
                    let result = match target {
                        Target::User(u) => {
                            let ty = match (&value, expr) {
                                (Value::Null, Expr::Cast(_, t)) => match t.as_str() {
                                    "SIGNED" | "INTEGER" | "INT" => "INT",
                                    "UNSIGNED" => "INT UNSIGNED",
                                    "DECIMAL" => "DECIMAL",
                                    "DOUBLE" | "REAL" | "FLOAT" => "DOUBLE",
                                    _ => "VARCHAR",
                                },
                                (v, _) => v.type_name(),
                            };
                            self.user_types.insert(u.clone(), ty);
                            self.user_vars.insert(u.clone(), value);
                            self.state_changed = true;
                            Ok(())
                        }
                        Target::Sys(name) => self.set_sysvar(name, value),
                        Target::Names(collation) => {
                            let cs = value.to_string();
                            let coll = collation.clone().unwrap_or_else(|| match cs.as_str() {
                                "utf8mb4" => "utf8mb4_general_ci".into(),
                                other => format!("{other}_general_ci"),
                            });
                            let mut r = Ok(());
                            for (n, v) in [
                                ("character_set_client", &cs),
                                ("character_set_connection", &cs),
                                ("character_set_results", &cs),
                                ("collation_connection", &coll),
                            ] {
                                r = r.and(self.set_sysvar(n, Value::Str(v.clone())));
                            }
                            r
                        }
                    };
                    if let Err(e) = result {
                        return Reply::Err(e);
                    }
                }
                done
            }
            Stmt::Do(exprs) => {
                for e in exprs {
                    if let Err(e) = self.eval(e, params) {
                        return Reply::Err(e);
                    }
                }
                done
            }
            Stmt::Kill { query, id } => match self.eval(id, params).map(|v| v.as_int()) {
                Ok(Some(id)) => self.kill(id as u32, *query),
                Ok(None) => Reply::Err(err(1094, "HY000", "Unknown thread id: 0")),
                Err(e) => Reply::Err(e),
            },
            Stmt::CreateTable { table, temporary } => {
                let table = match self.qualify(table) {
                    Ok(t) => t,
                    Err(e) => return Reply::Err(e),
                };
                if *temporary {
                    self.temp.entry(table).or_default();
                    self.state_changed = true;
                } else {
                    self.commit();
                }
                done
            }
            Stmt::DropTable { table, temporary } => {
                let table = match self.qualify(table) {
                    Ok(t) => t,
                    Err(e) => return Reply::Err(e),
                };
                if self.temp.remove(&table).is_some() {
                    self.state_changed = true;
                } else if *temporary {
                    return Reply::Err(err(1051, "42S02", format!("Unknown table '{table}'")));
                }
                done
            }
            Stmt::Insert { table, key, value } => {
                let table = match self.qualify(table) {
                    Ok(t) => t,
                    Err(e) => return Reply::Err(e),
                };
                let value = match self.eval(value, params) {
                    Ok(v) => v.text(),
                    Err(e) => return Reply::Err(e),
                };
                let (key, auto) = match key {
                    Some(k) => match self.eval(k, params).map(|v| v.as_int()) {
                        Ok(Some(k)) => (k, false),
                        Ok(None) => {
                            return Reply::Err(err(1048, "23000", "Column 'k' cannot be null"))
                        }
                        Err(e) => return Reply::Err(e),
                    },
                    None => (self.server.store.next_key(&table), true),
                };
                if self.read_row(&table, key).is_some() {
                    return Reply::Err(err(
                        1062,
                        "23000",
                        format!("Duplicate entry '{key}' for key 'PRIMARY'"),
                    ));
                }
                self.write_row(Write {
                    table,
                    key,
                    value: Some(value.unwrap_or_default()),
                });
                let insert_id = if auto {
                    self.last_insert_id = key as u64;
                    key as u64
                } else {
                    0
                };
                Reply::Ok {
                    affected: 1,
                    insert_id,
                }
            }
            Stmt::Update { table, value, key } => {
                let table = match self.qualify(table) {
                    Ok(t) => t,
                    Err(e) => return Reply::Err(e),
                };
                let (value, key) = match (self.eval(value, params), self.eval(key, params)) {
                    (Ok(v), Ok(k)) => (v.text(), k.as_int().unwrap_or(i64::MIN)),
                    (Err(e), _) | (_, Err(e)) => return Reply::Err(e),
                };
                self.touch(false);
                if self.read_row(&table, key).is_none() {
                    return Reply::Ok {
                        affected: 0,
                        insert_id: 0,
                    };
                }
                self.write_row(Write {
                    table,
                    key,
                    value: Some(value.unwrap_or_default()),
                });
                Reply::Ok {
                    affected: 1,
                    insert_id: 0,
                }
            }
            Stmt::Delete { table, key } => {
                let table = match self.qualify(table) {
                    Ok(t) => t,
                    Err(e) => return Reply::Err(e),
                };
                let key = match self.eval(key, params) {
                    Ok(k) => k.as_int().unwrap_or(i64::MIN),
                    Err(e) => return Reply::Err(e),
                };
                self.touch(false);
                if self.read_row(&table, key).is_none() {
                    return done;
                }
                self.write_row(Write {
                    table,
                    key,
                    value: None,
                });
                Reply::Ok {
                    affected: 1,
                    insert_id: 0,
                }
            }
            Stmt::Select(items, from) => match self.select(items, from.as_ref(), params).await {
                Ok(rows) => Reply::Rows(rows),
                Err(e) if e.code == 1927 => Reply::Killed(e),
                Err(e) => Reply::Err(e),
            },
        }
    }

    async fn select(
        &mut self,
        items: &[sql::Item],
        from: Option<&From>,
        params: &[Value],
    ) -> Result<Rows, ErrPacket> {
        let mut rows = Rows::default();
        match from {
            None => {
                let mut row = Vec::new();
                for item in items {
                    rows.columns.push(item.name.clone());
                    let v = match &item.expr {
                        Expr::Func(f, args) if f == "SLEEP" && args.len() == 1 => {
                            let secs = self.eval(&args[0], params)?.as_secs().unwrap_or(0.0);
                            let interrupted = self.wait(secs).await;
                            if self.handle.killed.load(Ordering::Relaxed) {
                                return Err(err(1927, "70100", "Connection was killed"));
                            }
                            Value::Int(interrupted as i64)
                        }
                        Expr::Func(f, args) if f == "GET_LOCK" && args.len() == 2 => {
                            let name = self.eval(&args[0], params)?.to_string();
                            let t = self.eval(&args[1], params)?.as_secs().unwrap_or(0.0);
                            self.get_lock(name, t).await
                        }
                        e => self.eval(e, params)?,
                    };
                    row.push(v.text());
                }
                rows.rows.push(row);
            }
            Some(From::Seq(n)) => {
                for item in items {
                    match &item.expr {
                        Expr::Column(c) if c == "*" || c.eq_ignore_ascii_case("seq") => {}
                        _ => {
                            return Err(err(
                                1054,
                                "42S22",
                                format!("Unknown column '{}' in 'field list'", item.name),
                            ))
                        }
                    }
                    rows.columns.push("seq".into());
                }
                for i in 1..=*n {
                    rows.rows
                        .push(rows.columns.iter().map(|_| Some(i.to_string())).collect());
                }
            }
            Some(From::UserVariables) => {
                const COLS: [&str; 4] = [
                    "VARIABLE_NAME",
                    "VARIABLE_VALUE",
                    "VARIABLE_TYPE",
                    "CHARACTER_SET_NAME",
                ];
                let mut pick = Vec::new();
                for item in items {
                    match &item.expr {
                        Expr::Column(c) if c == "*" => {
                            for (i, n) in COLS.iter().enumerate() {
                                pick.push(i);
                                rows.columns.push(n.to_string());
                            }
                        }
                        Expr::Column(c) => {
                            let i = COLS
                                .iter()
                                .position(|n| n.eq_ignore_ascii_case(c))
                                .ok_or_else(|| {
                                    err(
                                        1054,
                                        "42S22",
                                        format!("Unknown column '{c}' in 'field list'"),
                                    )
                                })?;
                            pick.push(i);
                            rows.columns.push(item.name.clone());
                        }
                        _ => return Err(err(1064, "42000", "unsupported select list")),
                    }
                }
                let charset = self.var("character_set_connection").to_string();
                for (name, value) in &self.user_vars {
                    let ty = self.user_types.get(name).copied().unwrap_or("VARCHAR");
                    let cs = match value {
                        Value::Str(_) => charset.clone(),
                        Value::Null if ty == "VARCHAR" => "binary".to_string(),
                        _ => "latin1".to_string(),
                    };
                    let all = [
                        Some(name.clone()),
                        value.text(),
                        Some(ty.to_string()),
                        Some(cs),
                    ];
                    rows.rows
                        .push(pick.iter().map(|&i| all[i].clone()).collect());
                }
            }
            Some(From::Table { table, key }) => {
                let table = self.qualify(table)?;
                let mut cols = Vec::new();
                for item in items {
                    match &item.expr {
                        Expr::Column(c) if c == "*" => {
                            cols.extend(["k", "v"]);
                            rows.columns.extend(["k".to_string(), "v".to_string()]);
                        }
                        Expr::Column(c) if c.eq_ignore_ascii_case("k") => {
                            cols.push("k");
                            rows.columns.push(item.name.clone());
                        }
                        Expr::Column(c) if c.eq_ignore_ascii_case("v") => {
                            cols.push("v");
                            rows.columns.push(item.name.clone());
                        }
                        Expr::Func(f, _) if f == "COUNT" => {
                            cols.push("count");
                            rows.columns.push(item.name.clone());
                        }
                        _ => {
                            return Err(err(
                                1054,
                                "42S22",
                                format!("Unknown column '{}' in 'field list'", item.name),
                            ))
                        }
                    }
                }
                self.touch(false);
                let data: Vec<(i64, String)> = match key {
                    Some(k) => {
                        let k = self.eval(k, params)?.as_int().unwrap_or(i64::MIN);
                        self.read_row(&table, k)
                            .map(|v| (k, v))
                            .into_iter()
                            .collect()
                    }
                    None => self.read_all(&table).into_iter().collect(),
                };
                if cols.contains(&"count") {
                    rows.rows.push(vec![Some(data.len().to_string())]);
                } else {
                    for (k, v) in data {
                        rows.rows.push(
                            cols.iter()
                                .map(|c| Some(if *c == "k" { k.to_string() } else { v.clone() }))
                                .collect(),
                        );
                    }
                }
            }
        }
        Ok(rows)
    }

    fn prepare(&mut self, sql: &str) -> Result<(), ErrPacket> {
        let stmt = sql::parse(sql).map_err(syntax)?;
        let params = sql::count_params(sql);
        let columns = match &stmt {
            Stmt::Select(items, from) => {
                let mut cols = Vec::new();
                for i in items {
                    match (&i.expr, from) {
                        (Expr::Column(c), Some(From::Table { .. })) if c == "*" => {
                            cols.extend(["k".to_string(), "v".to_string()])
                        }
                        (Expr::Column(c), Some(From::Seq(_))) if c == "*" => {
                            cols.push("seq".into())
                        }
                        _ => cols.push(i.name.clone()),
                    }
                }
                cols
            }
            _ => Vec::new(),
        };
        let id = self.next_stmt;
        self.next_stmt += 1;
        self.stmts.insert(
            id,
            Prepared {
                stmt,
                params,
                columns,
                types: Vec::new(),
            },
        );
        self.last_prepared = Some(id);
        Ok(())
    }

    fn write_prepared(&mut self, out: &mut Out) {
        let id = self.last_prepared.expect("just prepared");
        let (params, columns) = {
            let p = &self.stmts[&id];
            (p.params, p.columns.clone())
        };
        let mut p = BytesMut::new();
        p.put_u8(0);
        p.put_u32_le(id);
        p.put_u16_le(columns.len() as u16);
        p.put_u16_le(params as u16);
        p.put_u8(0);
        p.put_u16_le(0);
        out.packet(&p);
        let schema = self.db.clone().unwrap_or_default();
        if params > 0 {
            for _ in 0..params {
                out.packet(&column_def("?", ""));
            }
            if !self.deprecate_eof() {
                self.eof(out);
            }
        }
        if !columns.is_empty() {
            for c in &columns {
                out.packet(&column_def(c, &schema));
            }
            if !self.deprecate_eof() {
                self.eof(out);
            }
        }
    }

    /// Reads a COM_STMT_EXECUTE body: the statement and its parameters.
    fn bind(&mut self, body: &[u8]) -> Result<(u32, Vec<Value>), ErrPacket> {
        let bad = || err(1210, "HY000", "Incorrect arguments to mysqld_stmt_execute");
        let mut r = Reader::new(body, "execute");
        let mut id = r.u32().map_err(|_| bad())?;
        if id == u32::MAX {
            id = self.last_prepared.unwrap_or(0);
        }
        let Some(stmt) = self.stmts.get_mut(&id) else {
            return Err(err(
                1243,
                "HY000",
                format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_execute"),
            ));
        };
        r.u8().map_err(|_| bad())?;
        r.u32().map_err(|_| bad())?;
        let n = stmt.params;
        let mut values = Vec::with_capacity(n);
        if n > 0 {
            let bitmap = r.bytes(n.div_ceil(8)).map_err(|_| bad())?.to_vec();
            if r.u8().map_err(|_| bad())? == 1 {
                stmt.types.clear();
                for _ in 0..n {
                    stmt.types.push(r.u8().map_err(|_| bad())?);
                    r.u8().map_err(|_| bad())?;
                }
            }
            if stmt.types.len() != n {
                return Err(bad());
            }
            for i in 0..n {
                if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                    values.push(Value::Null);
                    continue;
                }
                let v = match stmt.types[i] {
                    6 => Value::Null,
                    1 => Value::Int(r.u8().map_err(|_| bad())? as i8 as i64),
                    2 | 13 => Value::Int(r.u16().map_err(|_| bad())? as i16 as i64),
                    3 | 9 => Value::Int(r.u32().map_err(|_| bad())? as i32 as i64),
                    8 => Value::Int(r.u64().map_err(|_| bad())? as i64),
                    4 => Value::Dec(
                        f32::from_le_bytes(r.bytes(4).map_err(|_| bad())?.try_into().expect("4"))
                            .to_string(),
                    ),
                    5 => Value::Dec(
                        f64::from_le_bytes(r.bytes(8).map_err(|_| bad())?.try_into().expect("8"))
                            .to_string(),
                    ),
                    7 | 10 | 11 | 12 => {
                        let len = r.u8().map_err(|_| bad())? as usize;
                        r.bytes(len).map_err(|_| bad())?;
                        Value::Str(String::new())
                    }
                    _ => Value::Str(
                        String::from_utf8_lossy(r.lenenc_bytes().map_err(|_| bad())?).into_owned(),
                    ),
                };
                values.push(v);
            }
        }
        Ok((id, values))
    }
}
