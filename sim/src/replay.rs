//! `ferry-sim replay FILE`: replays a session recorded with `ferry --record`.
//!
//! The recording is cut into exchanges: the client packets of one turn (a
//! command), then the backend packets that answered it. Under turmoil, a
//! client logs in to ferry (the real shell code, `proxy::run_session`) with
//! the recorded user, database, capabilities and attributes and sends each
//! exchange's client packets; a replay backend behind ferry accepts ferry's
//! login, checks that it receives those packets and answers with the
//! recorded backend packets; the client checks that it receives them, packet
//! by packet. Logins are not compared (connection ids, salts and the login
//! OK legitimately differ); everything after login is compared exactly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::BytesMut;
use ferry_core::auth::{scramble_native, NATIVE_PASSWORD};
use ferry_core::client_trackers::SETTINGS_QUERY;
use ferry_core::config::{BackendConfig, Config, UserConfig, WorkState};
use ferry_core::labels::Labels;
use ferry_core::login::backend::TRACKER_SETUP;
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::status::SERVER_STATUS_AUTOCOMMIT;
use ferry_core::packets::{AuthSwitchRequest, ErrPacket, Handshake, HandshakeResponse, OkPacket};
use ferry_core::wire::{write_packet, Packet, PacketDecoder};
use ferry_shell::proxy::{self, Shared};
use ferry_shell::record::{Direction, Recording};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::clock::SimClock;
use crate::proxy_host::{SimConnector, PORT};

/// The password the replay gives the recorded user (recordings hold none).
const PASSWORD: &str = "replay";
/// COM_QUIT.
const COM_QUIT: u8 = 0x01;

/// One packet: sequence id and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    /// Sequence id.
    pub seq: u8,
    /// Payload.
    pub payload: Vec<u8>,
}

impl From<Packet> for Pkt {
    fn from(p: Packet) -> Self {
        Pkt {
            seq: p.seq,
            payload: p.payload.to_vec(),
        }
    }
}

/// A client turn and the backend's answer to it.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// µs since session start of the turn's first client bytes.
    pub at_us: u64,
    /// What the client sent.
    pub client: Vec<Pkt>,
    /// What the backend answered.
    pub backend: Vec<Pkt>,
}

/// Faults during a replay.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Message latency on every link, min and max (ms).
    pub latency_ms: Option<(u64, u64)>,
}

impl Faults {
    /// Parses `latency=A..B` (ms), comma-separated.
    pub fn parse(text: &str) -> Result<Faults, String> {
        let mut faults = Faults::default();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("bad fault '{part}': expected NAME=VALUE"))?;
            match name {
                "latency" => {
                    let (a, b) = value.split_once("..").unwrap_or((value, value));
                    let a: u64 = a.parse().map_err(|_| format!("bad latency '{value}'"))?;
                    let b: u64 = b.parse().map_err(|_| format!("bad latency '{value}'"))?;
                    faults.latency_ms = Some((a.min(b), a.max(b)));
                }
                other => return Err(format!("unknown fault '{other}' (known: latency=A..B)")),
            }
        }
        Ok(faults)
    }
}

/// Cuts a recording into exchanges.
pub fn exchanges(rec: &Recording) -> Result<Vec<Exchange>, String> {
    let mut client = PacketDecoder::new(1 << 30);
    let mut backend = PacketDecoder::new(1 << 30);
    let mut out: Vec<Exchange> = Vec::new();
    let mut current = Exchange::default();
    let mut started = false;
    for chunk in &rec.chunks {
        match chunk.dir {
            Direction::Client => {
                if !current.backend.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                if current.client.is_empty() {
                    current.at_us = chunk.at_us;
                }
                started = true;
                client.extend(&chunk.bytes);
                while let Some(p) = client.decode().map_err(|e| e.to_string())? {
                    current.client.push(p.into());
                }
            }
            Direction::Backend => {
                if !started {
                    return Err("backend bytes before the client's first command".into());
                }
                backend.extend(&chunk.bytes);
                while let Some(p) = backend.decode().map_err(|e| e.to_string())? {
                    current.backend.push(p.into());
                }
            }
        }
    }
    if !current.client.is_empty() || !current.backend.is_empty() {
        out.push(current);
    }
    if client.buffered() > 0 || backend.buffered() > 0 {
        return Err("the recording ends inside a packet".into());
    }
    Ok(out)
}

/// Runs the replay; `Err` holds the differences found.
pub fn replay(rec: &Recording, seed: u64, faults: &Faults) -> Result<(), String> {
    replay_altered(rec, seed, faults, None)
}

/// A byte the replay backend flips in what it sends (the client still
/// expects the recording): shows that an altered response is caught.
#[derive(Clone, Copy, Debug)]
pub struct Alteration {
    /// Which exchange.
    pub exchange: usize,
    /// Which backend packet of it.
    pub packet: usize,
    /// Which payload byte (XOR 0xFF).
    pub byte: usize,
}

/// [`replay`], with the backend altering one byte of its answers.
pub fn replay_altered(
    rec: &Recording,
    seed: u64,
    faults: &Faults,
    alteration: Option<Alteration>,
) -> Result<(), String> {
    run(rec, seed, faults, alteration, None)
}

/// [`replay`], with ferry recording the replayed session into `dir` (as `ferry --record DIR`).
pub fn replay_recorded(
    rec: &Recording,
    seed: u64,
    faults: &Faults,
    dir: &std::path::Path,
) -> Result<(), String> {
    run(rec, seed, faults, None, Some(dir.to_path_buf()))
}

fn run(
    rec: &Recording,
    seed: u64,
    faults: &Faults,
    alteration: Option<Alteration>,
    record_dir: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let exchanges = exchanges(rec)?;
    let mut served = exchanges.clone();
    if let Some(a) = alteration {
        let byte = served
            .get_mut(a.exchange)
            .and_then(|e| e.backend.get_mut(a.packet))
            .and_then(|p| p.payload.get_mut(a.byte))
            .ok_or("the alteration names no byte of the recording")?;
        *byte ^= 0xFF;
    }
    let exchanges = Arc::new(exchanges);
    let served = Arc::new(served);
    let caps = match rec.get("capabilities") {
        Some(c) => u32::from_str_radix(c.trim_start_matches("0x"), 16)
            .map_err(|_| format!("bad capabilities '{c}'"))?,
        None => return Err("the recording has no capabilities".into()),
    };
    let user = rec
        .get("client_user")
        .or(rec.get("user"))
        .ok_or("the recording has no user")?
        .to_string();
    let backend_user = rec.get("user").unwrap_or(&user).to_string();
    let tenant = rec.get("tenant").map(str::to_string);
    let database = rec.get("database").map(str::to_string);
    let attributes: Vec<(String, String)> = rec
        .header
        .iter()
        .filter(|(k, _)| k == "attr")
        .map(|(_, v)| {
            let (k, v) = v.split_once('\t').unwrap_or((v, ""));
            (k.to_string(), v.to_string())
        })
        .collect();

    let (min, max) = faults.latency_ms.unwrap_or((0, 0));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH)
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(min))
        .max_message_latency(Duration::from_millis(max))
        .tcp_capacity(1 << 16)
        .build();
    sim.lookup("ferry");
    let db_addr = SocketAddr::new(sim.lookup("db"), PORT);
    sim.lookup("client");

    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let exchanges = served.clone();
        let problems = problems.clone();
        sim.host("db", move || {
            let exchanges = exchanges.clone();
            let problems = problems.clone();
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                loop {
                    let (stream, _) = listener.accept().await?;
                    let exchanges = exchanges.clone();
                    let problems = problems.clone();
                    tokio::task::spawn_local(async move {
                        if let Err(e) = serve_backend(stream, &exchanges, caps).await {
                            problems
                                .lock()
                                .expect("problems")
                                .push(format!("backend: {e}"));
                        }
                    });
                }
            }
        });
    }

    let mut config = Config::parse(
        "(listen: \"0.0.0.0:3306\", admin_listen: \"127.0.0.1:3307\", server_version: \"5.5.5-10.11.6-MariaDB-ferry\")",
    )
    .map_err(|e| e.to_string())?;
    config.users = vec![UserConfig {
        tenant,
        any_tenant: false,
        user: backend_user,
        password: Some(PASSWORD.into()),
        password_hash: None,
    }];
    config.backends = vec![BackendConfig {
        compress_backend: true,
        id: "db".into(),
        addr: db_addr,
        labels: Labels::default(),
        state: WorkState::Working,
        tls: None,
        proxy_protocol: false,
    }];
    sim.host("ferry", move || {
        let config = config.clone();
        let record_dir = record_dir.clone();
        async move {
            let mut shared = Shared::from_config(&config, seed)?;
            shared.record_dir = record_dir;
            let shared = Arc::new(shared);
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
            let clock = SimClock::new();
            let mut n = 0u8;
            loop {
                let (stream, peer) = listener.accept().await?;
                let shared = shared.clone();
                n = n.wrapping_add(1);
                let salt = [33 + n % 94; 20];
                tokio::task::spawn_local(async move {
                    proxy::run_session(
                        shared,
                        stream.compat(),
                        peer,
                        &SimConnector,
                        &clock,
                        salt,
                        &ferry_shell::pump::NoTls,
                    )
                    .await;
                });
            }
        }
    });

    {
        let problems = problems.clone();
        let exchanges = exchanges.clone();
        sim.client("client", async move {
            let stream = turmoil::net::TcpStream::connect(("ferry", PORT)).await?;
            let login = ClientLogin {
                user,
                database,
                caps,
                attributes,
            };
            if let Err(e) = run_client(stream, &login, &exchanges).await {
                problems.lock().expect("problems").push(e);
            }
            Ok(())
        });
    }
    if let Err(e) = sim.run() {
        problems
            .lock()
            .expect("problems")
            .push(format!("simulation: {e}"));
    }
    let problems = std::mem::take(&mut *problems.lock().expect("problems"));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

struct Io<S> {
    stream: S,
    decoder: PacketDecoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    fn new(stream: S) -> Self {
        Io {
            stream,
            decoder: PacketDecoder::new(1 << 30),
        }
    }

    /// The next packet; `None` at end of stream.
    async fn read(&mut self) -> Result<Option<Packet>, String> {
        loop {
            if let Some(p) = self.decoder.decode().map_err(|e| e.to_string())? {
                return Ok(Some(p));
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.decoder.extend(&buf[..n]),
            }
        }
    }

    async fn send(&mut self, packets: &[Pkt]) -> Result<(), String> {
        let mut out = BytesMut::new();
        for p in packets {
            write_packet(&mut out, p.seq, &p.payload);
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))
    }
}

/// Accepts ferry's login, then answers each exchange with its recorded backend packets.
async fn serve_backend<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    exchanges: &[Exchange],
    caps: u32,
) -> Result<(), String> {
    let mut io = Io::new(stream);
    let hs = Handshake {
        server_version: "5.5.5-10.11.6-MariaDB-replay".into(),
        connection_id: 77,
        auth_data: b"0123456789abcdefghij".to_vec(),
        capabilities: caps | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH,
        mariadb_capabilities: 0,
        collation: 45,
        status: SERVER_STATUS_AUTOCOMMIT,
        auth_plugin: Some(NATIVE_PASSWORD.into()),
    };
    let mut p = BytesMut::new();
    hs.write(&mut p);
    io.send(&[Pkt {
        seq: 0,
        payload: p.to_vec(),
    }])
    .await?;
    let Some(response) = io.read().await? else {
        return Ok(()); // a probe that only wanted the handshake
    };
    let ok = ok_packet();
    let mut p = BytesMut::new();
    ok.write(&mut p, caps);
    io.send(&[Pkt {
        seq: response.next_seq,
        payload: p.to_vec(),
    }])
    .await?;
    for (i, ex) in exchanges.iter().enumerate() {
        for (j, want) in ex.client.iter().enumerate() {
            let got = loop {
                let got = io.read().await?.map(Pkt::from);
                match got.as_ref().and_then(|g| ferrys_own(g, want)) {
                    Some(answer) => io.send(&[answer]).await?,
                    None => break got,
                }
            };
            let Some(got) = got else {
                if want.payload.first() == Some(&COM_QUIT) {
                    return Ok(());
                }
                return Err(format!(
                    "exchange {i}: connection closed before client packet {j} ({})",
                    describe(&want.payload)
                ));
            };
            if got != *want {
                return Err(format!(
                    "exchange {i}: ferry forwarded a different client packet {j}\n  recorded: {}\n  received: {}",
                    show(want),
                    show(&got)
                ));
            }
        }
        io.send(&ex.backend).await?;
        if ex.client.last().and_then(|p| p.payload.first()) == Some(&COM_QUIT) {
            // A server closes the connection after COM_QUIT.
            return Ok(());
        }
    }
    while io.read().await?.is_some() {}
    Ok(())
}

/// ferry's own queries on a fresh backend connection (not in recordings,
/// which start after login): the answer the replay backend gives them.
/// The tracker settings are refused (ferry then assumes MariaDB's
/// defaults); switching all trackers on succeeds, as it did on the recorded server.
fn ferrys_own(got: &Pkt, want: &Pkt) -> Option<Pkt> {
    if got == want || got.payload.first() != Some(&0x03) {
        return None;
    }
    let sql = &got.payload[1..];
    let mut p = BytesMut::new();
    if sql == SETTINGS_QUERY.as_bytes() {
        ErrPacket {
            code: 1193,
            sql_state: Some(*b"HY000"),
            message: "Unknown system variable 'session_track_system_variables'".into(),
        }
        .write(&mut p);
    } else if sql == TRACKER_SETUP.as_bytes() {
        ok_packet().write(&mut p, CLIENT_PROTOCOL_41);
    } else {
        return None;
    }
    Some(Pkt {
        seq: 1,
        payload: p.to_vec(),
    })
}

fn ok_packet() -> OkPacket {
    OkPacket {
        header: 0,
        affected_rows: 0,
        last_insert_id: 0,
        status: SERVER_STATUS_AUTOCOMMIT,
        warnings: 0,
        info: Vec::new(),
        session_state: None,
    }
}

struct ClientLogin {
    user: String,
    database: Option<String>,
    caps: u32,
    attributes: Vec<(String, String)>,
}

async fn run_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    login: &ClientLogin,
    exchanges: &[Exchange],
) -> Result<(), String> {
    let mut io = Io::new(stream);
    let hs = io
        .read()
        .await?
        .ok_or("ferry closed before its handshake")?;
    let handshake = Handshake::parse(&hs.payload).map_err(|e| e.to_string())?;
    let caps = login.caps & handshake.capabilities;
    if caps != login.caps {
        return Err(format!(
            "ferry offers capabilities 0x{:08x}, the recording needs 0x{:08x}",
            handshake.capabilities, login.caps
        ));
    }
    let response = HandshakeResponse {
        capabilities: caps,
        mariadb_capabilities: 0,
        max_packet_size: 16 << 20,
        collation: 45,
        user: login.user.clone(),
        auth_response: scramble_native(&handshake.auth_data, PASSWORD.as_bytes()),
        database: login.database.clone(),
        auth_plugin: Some(NATIVE_PASSWORD.into()),
        attributes: login.attributes.clone(),
    };
    let mut p = BytesMut::new();
    response.write(&mut p);
    io.send(&[Pkt {
        seq: hs.next_seq,
        payload: p.to_vec(),
    }])
    .await?;
    loop {
        let reply = io.read().await?.ok_or("ferry closed during login")?;
        match reply.payload.first() {
            Some(0x00) => break,
            Some(0xFE) => {
                let switch = AuthSwitchRequest::parse(&reply.payload).map_err(|e| e.to_string())?;
                let scramble = scramble_native(&switch.data, PASSWORD.as_bytes());
                io.send(&[Pkt {
                    seq: reply.next_seq,
                    payload: scramble,
                }])
                .await?;
            }
            _ => {
                return Err(format!(
                    "login refused by ferry: {}",
                    String::from_utf8_lossy(&reply.payload)
                ))
            }
        }
    }
    for (i, ex) in exchanges.iter().enumerate() {
        io.send(&ex.client).await?;
        for (j, want) in ex.backend.iter().enumerate() {
            let got = io.read().await?.map(Pkt::from);
            let Some(got) = got else {
                return Err(format!(
                    "exchange {i} ({}): connection closed; expected response packet {j} of {}: {}",
                    command_of(ex),
                    ex.backend.len(),
                    show(want)
                ));
            };
            if !same_response(want, &got, caps) {
                return Err(format!(
                    "exchange {i} ({}): response packet {j} of {} differs\n  recorded: {}\n  received: {}",
                    command_of(ex),
                    ex.backend.len(),
                    show(want),
                    show(&got)
                ));
            }
        }
    }
    let quit = exchanges
        .last()
        .and_then(|e| e.client.last())
        .is_some_and(|p| p.payload.first() == Some(&COM_QUIT));
    if quit {
        // Waits for ferry to act on the COM_QUIT (so it is read, and
        // recorded, before the simulation ends). Not compared: a client that
        // sent COM_QUIT no longer reads (ferry currently answers the backend's
        // close after COM_QUIT with a lost-connection ERR).
        let _ = io.read().await;
    }
    Ok(())
}

/// SERVER_SESSION_STATE_CHANGED.
const STATE_CHANGED: u16 = 0x4000;

/// Whether the client received what was recorded. OK packets are compared
/// without their session-state information: ferry switches every tracker on
/// at the backend and shows a client only the entries its own settings ask
/// for, so the recorded backend OK legitimately carries more than the client sees.
fn same_response(want: &Pkt, got: &Pkt, caps: u32) -> bool {
    if want == got {
        return true;
    }
    if want.seq != got.seq || !matches!(want.payload.first(), Some(0x00 | 0xFE)) {
        return false;
    }
    match (
        OkPacket::parse(&want.payload, caps),
        OkPacket::parse(&got.payload, caps),
    ) {
        (Ok(w), Ok(g)) => {
            w.header == g.header
                && w.affected_rows == g.affected_rows
                && w.last_insert_id == g.last_insert_id
                && w.status & !STATE_CHANGED == g.status & !STATE_CHANGED
                && w.warnings == g.warnings
                && w.info == g.info
        }
        _ => false,
    }
}

fn command_of(ex: &Exchange) -> String {
    ex.client
        .first()
        .map_or_else(|| "no command".into(), |p| describe(&p.payload))
}

/// A command for people: its name and, for text, the statement.
pub fn describe(payload: &[u8]) -> String {
    let text = |p: &[u8]| {
        let s = String::from_utf8_lossy(p);
        if s.len() > 80 {
            format!("{}…", s.chars().take(80).collect::<String>())
        } else {
            s.into_owned()
        }
    };
    match payload.first() {
        Some(0x01) => "COM_QUIT".into(),
        Some(0x02) => format!("COM_INIT_DB {}", text(&payload[1..])),
        Some(0x03) => format!("COM_QUERY {}", text(&payload[1..])),
        Some(0x0e) => "COM_PING".into(),
        Some(0x16) => format!("COM_STMT_PREPARE {}", text(&payload[1..])),
        Some(0x17) => "COM_STMT_EXECUTE".into(),
        Some(0x19) => "COM_STMT_CLOSE".into(),
        Some(0x1a) => "COM_STMT_RESET".into(),
        Some(c) => format!("command 0x{c:02x}"),
        None => "empty packet".into(),
    }
}

fn show(p: &Pkt) -> String {
    let mut hex = String::new();
    for b in p.payload.iter().take(64) {
        hex.push_str(&format!("{b:02x}"));
    }
    if p.payload.len() > 64 {
        hex.push('…');
    }
    format!("seq {} len {} {hex}", p.seq, p.payload.len())
}

/// Reads and replays one recording file.
pub fn replay_file(path: &std::path::Path, seed: u64, faults: &Faults) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rec = Recording::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    replay(&rec, seed, faults)
}
