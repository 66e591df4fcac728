//! ferry as the client: log in to a backend with the client's saved response
//! and the recovered secret, answering the backend's own salt; over TLS when
//! the backend's `tls` setting asks for it (SSLRequest, upgrade, response).

use bytes::{Bytes, BytesMut};

use crate::auth::{Secret, NATIVE_PASSWORD};
use crate::client_trackers::{TrackingSettings, SETTINGS_QUERY};
use crate::packets::codec::Reader;
use crate::packets::flags::caps::*;
use crate::packets::flags::command::COM_QUERY;
use crate::packets::{
    AuthSwitchRequest, EofPacket, ErrPacket, Handshake, HandshakeResponse, OkPacket,
    SSL_REQUEST_LEN,
};
use crate::wire::write_packet;
use crate::wire::Packet;

use super::frame;

/// A completed backend login.
#[derive(Clone, Debug)]
pub struct BackendSession {
    /// The backend's handshake (its version and thread id).
    pub handshake: Handshake,
    /// Capabilities in force between ferry and the backend (without
    /// `CLIENT_SSL`: TLS is the transport's, not the packets' business).
    pub capabilities: u32,
    /// MariaDB extended capabilities in force between ferry and the backend.
    pub mariadb_capabilities: u32,
    /// The backend's login OK.
    pub ok: OkPacket,
    /// Whether the session trackers were switched on (see [`TRACKER_SETUP`]).
    pub trackers: Trackers,
}

impl BackendSession {
    /// MariaDB's metadata cache is in force: column counts carry a "metadata follows" byte.
    pub fn caches_metadata(&self) -> bool {
        self.mariadb_capabilities & MARIADB_CLIENT_CACHE_METADATA != 0
    }
}

/// Whether ferry could switch on the backend's session trackers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trackers {
    /// Not asked for.
    Off,
    /// On: every OK reports changed variables, schema, state and transaction state.
    /// Holds the settings the session had before (what its client expects to see).
    On(TrackingSettings),
    /// The backend refused (an older server); its error message.
    Refused(String),
}

/// What ferry runs on every backend connection right after login, so that OK
/// packets report every change of session state (the client never sees this).
pub const TRACKER_SETUP: &str = "SET SESSION session_track_system_variables='*', \
SESSION session_track_schema=ON, SESSION session_track_state_change=ON, \
SESSION session_track_transaction_info='STATE'";

/// What the backend login wants done next.
#[derive(Debug)]
pub enum BackendStep {
    /// Send these bytes to the backend and wait for its next packet.
    Send(Bytes),
    /// Send the first bytes (an SSLRequest), upgrade the connection to TLS,
    /// then send the second (the handshake response) over it.
    StartTls(Bytes, Bytes),
    /// Nothing to send; wait for the backend's next packet.
    Wait,
    /// Logged in.
    Done(Box<BackendSession>),
    /// The backend refused the login; its ERR, to pass on to the client.
    Refused(ErrPacket),
    /// A relayed login ([`BackendLogin::relayed`]): have the client answer
    /// this salt (an auth switch to mysql_native_password), then call
    /// [`BackendLogin::client_replied`].
    AskClient(Vec<u8>),
    /// The backend broke the protocol or wants what ferry cannot do; for logs and a client ERR.
    Failed(String),
}

#[derive(Debug)]
enum State {
    AwaitHandshake,
    /// A relayed login: the response waits for the client's answer to the backend's salt.
    AwaitClientReply {
        response: Box<HandshakeResponse>,
        handshake: Box<Handshake>,
        caps: u32,
        seq: u8,
    },
    AwaitResult {
        handshake: Box<Handshake>,
        caps: u32,
    },
    /// The settings query's result set, then the setup's OK (both sent at once).
    AwaitTrackerSetup(Box<BackendSession>, SettingsReply),
    Finished,
}

/// The client side of a login to one backend.
#[derive(Debug)]
pub struct BackendLogin {
    template: HandshakeResponse,
    /// `None` for a relayed login: the client answers the backend's salt itself.
    secret: Option<Secret>,
    client_caps: u32,
    track: bool,
    tls: bool,
    state: State,
    /// The login OK came and `CLIENT_COMPRESS` is in force: frames from here on are compressed.
    compressed: bool,
    /// MariaDB extended capabilities ferry asked the backend for.
    mariadb_caps: u32,
}

impl BackendLogin {
    /// A login replaying `template` (the client's response, user already stripped
    /// of tenant and labels) for a client that negotiated `client_caps` with ferry.
    /// With `track`, the session trackers are switched on after login.
    pub fn new(template: HandshakeResponse, secret: Secret, client_caps: u32, track: bool) -> Self {
        BackendLogin {
            template,
            secret: Some(secret),
            client_caps,
            track,
            tls: false,
            state: State::AwaitHandshake,
            compressed: false,
            mariadb_caps: 0,
        }
    }

    /// The same login over TLS (`tls`: the backend's `tls` setting is on).
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// A login whose password the backend checks: ferry does not know the
    /// user's hash, so the client answers the backend's own salt
    /// ([`BackendStep::AskClient`]) and the backend accepts or refuses.
    pub fn relayed(template: HandshakeResponse, client_caps: u32, track: bool) -> Self {
        BackendLogin {
            secret: None,
            ..BackendLogin::new(template, Secret::Empty, client_caps, track)
        }
    }

    /// The client's answer to the salt of [`BackendStep::AskClient`].
    pub fn client_replied(&mut self, reply: Vec<u8>) -> BackendStep {
        let State::AwaitClientReply {
            mut response,
            handshake,
            caps,
            seq,
        } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return BackendStep::Failed("a client answer ferry did not ask for".into());
        };
        response.auth_response = reply;
        self.send_response(&response, handshake, caps, seq)
    }

    /// Sends `response` with sequence id `seq`; over TLS, after an SSLRequest.
    fn send_response(
        &mut self,
        response: &HandshakeResponse,
        handshake: Box<Handshake>,
        caps: u32,
        seq: u8,
    ) -> BackendStep {
        let mut payload = BytesMut::new();
        response.write(&mut payload);
        self.state = State::AwaitResult {
            handshake,
            caps: caps & !CLIENT_SSL,
        };
        if self.tls {
            // The SSLRequest is the response's fixed head, so both carry the same capabilities.
            let request = frame(&payload[..SSL_REQUEST_LEN], seq);
            let response = frame(&payload, seq.wrapping_add(1));
            return BackendStep::StartTls(request, response);
        }
        BackendStep::Send(frame(&payload, seq))
    }

    /// True once the backend accepted the login with `CLIENT_COMPRESS` in force:
    /// everything after its OK, both ways, is compressed.
    pub fn compressed(&self) -> bool {
        self.compressed
    }

    /// Feeds the backend's next packet.
    pub fn handle(&mut self, packet: Packet) -> BackendStep {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::AwaitHandshake => self.on_handshake(packet),
            State::AwaitClientReply { .. } => BackendStep::Failed(
                "backend sent a packet before ferry answered its greeting".into(),
            ),
            State::AwaitResult { handshake, caps } => self.on_result(packet, handshake, caps),
            State::AwaitTrackerSetup(session, reply) => {
                self.on_tracker_setup(packet, session, reply)
            }
            State::Finished => BackendStep::Failed("backend sent a packet after login".into()),
        }
    }

    fn on_handshake(&mut self, packet: Packet) -> BackendStep {
        if packet.payload.first() == Some(&0xFF) {
            return match ErrPacket::parse(&packet.payload) {
                Ok(err) => BackendStep::Refused(err),
                Err(e) => BackendStep::Failed(format!("backend greeting: {e}")),
            };
        }
        let handshake = match Handshake::parse(&packet.payload) {
            Ok(h) => h,
            Err(e) => return BackendStep::Failed(format!("backend greeting: {e}")),
        };
        if handshake.capabilities & CLIENT_PROTOCOL_41 == 0 {
            return BackendStep::Failed("backend does not speak protocol 4.1".into());
        }
        // What the client and ferry agreed, cut down to what the backend offers.
        let mut caps = self.client_caps & handshake.capabilities;
        if self.track {
            caps |= CLIENT_SESSION_TRACK & handshake.capabilities;
        }
        caps |= (CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH)
            & handshake.capabilities;
        if self.template.database.is_some() {
            caps |= CLIENT_CONNECT_WITH_DB & handshake.capabilities;
        } else {
            caps &= !CLIENT_CONNECT_WITH_DB;
        }
        if self.template.attributes.is_empty() {
            caps &= !CLIENT_CONNECT_ATTRS;
        }
        // Never the client's request: ferry's TLS with the client is not the backend's.
        caps &= !CLIENT_SSL;
        if self.tls {
            if handshake.capabilities & CLIENT_SSL == 0 {
                return BackendStep::Failed(
                    "TLS is configured for this backend, but it does not offer TLS \
                     (no CLIENT_SSL in its handshake; give it ssl_cert and ssl_key)"
                        .into(),
                );
            }
            caps |= CLIENT_SSL;
        }
        let mut response = self.template.clone();
        response.capabilities = caps;
        response.mariadb_capabilities = self.template.mariadb_capabilities
            & handshake.mariadb_capabilities
            & FERRY_SUPPORTED_MARIADB;
        self.mariadb_caps = response.mariadb_capabilities;
        response.auth_plugin = Some(NATIVE_PASSWORD.to_string());
        let Some(secret) = &self.secret else {
            let salt = crate::auth::salt_bytes(&handshake.auth_data).to_vec();
            self.state = State::AwaitClientReply {
                response: Box::new(response),
                handshake: Box::new(handshake),
                caps,
                seq: packet.next_seq,
            };
            return BackendStep::AskClient(salt);
        };
        response.auth_response = secret.respond(&handshake.auth_data);
        self.send_response(&response, Box::new(handshake), caps, packet.next_seq)
    }

    fn on_result(&mut self, packet: Packet, handshake: Box<Handshake>, caps: u32) -> BackendStep {
        match packet.payload.first() {
            Some(0x00) => match OkPacket::parse(&packet.payload, caps) {
                Ok(ok) => {
                    self.compressed = caps & CLIENT_COMPRESS != 0;
                    let session = Box::new(BackendSession {
                        handshake: *handshake,
                        capabilities: caps,
                        mariadb_capabilities: self.mariadb_caps,
                        ok,
                        trackers: Trackers::Off,
                    });
                    if !self.track || caps & CLIENT_SESSION_TRACK == 0 {
                        return BackendStep::Done(session);
                    }
                    let deprecate_eof = caps & CLIENT_DEPRECATE_EOF != 0;
                    self.state = State::AwaitTrackerSetup(session, SettingsReply::new(deprecate_eof));
                    // Both at once: one round trip. The server answers them in order.
                    let mut out = BytesMut::new();
                    write_packet(&mut out, 0, &query_payload(SETTINGS_QUERY));
                    write_packet(&mut out, 0, &query_payload(TRACKER_SETUP));
                    BackendStep::Send(out.freeze())
                }
                Err(e) => BackendStep::Failed(format!("backend login OK: {e}")),
            },
            Some(0xFF) => match ErrPacket::parse(&packet.payload) {
                Ok(err) => BackendStep::Refused(err),
                Err(e) => BackendStep::Failed(format!("backend login ERR: {e}")),
            },
            Some(0xFE) => {
                let switch = match AuthSwitchRequest::parse(&packet.payload) {
                    Ok(s) => s,
                    Err(e) => return BackendStep::Failed(format!("backend auth switch: {e}")),
                };
                if switch.plugin != NATIVE_PASSWORD {
                    return BackendStep::Failed(format!(
                        "backend asks for auth plugin '{}'; ferry logs in with {NATIVE_PASSWORD} only",
                        switch.plugin
                    ));
                }
                let Some(secret) = &self.secret else {
                    // The client answered the greeting's salt; a new one would need it again.
                    return BackendStep::Failed(
                        "backend asked for another challenge during a login it verifies".into(),
                    );
                };
                let reply = secret.respond(&switch.data);
                self.state = State::AwaitResult { handshake, caps };
                BackendStep::Send(frame(&reply, packet.next_seq))
            }
            Some(0x01) => BackendStep::Failed(
                "backend wants more auth data (caching_sha2_password?); ferry logs in with mysql_native_password only".into(),
            ),
            _ => BackendStep::Failed("backend sent an unexpected packet during login".into()),
        }
    }

    fn on_tracker_setup(
        &mut self,
        packet: Packet,
        mut session: Box<BackendSession>,
        mut reply: SettingsReply,
    ) -> BackendStep {
        if !reply.is_done() {
            return match reply.feed(&packet.payload) {
                Ok(()) => {
                    self.state = State::AwaitTrackerSetup(session, reply);
                    BackendStep::Wait
                }
                Err(why) => BackendStep::Failed(format!("reading the tracker settings: {why}")),
            };
        }
        match packet.payload.first() {
            Some(0x00) => match OkPacket::parse(&packet.payload, session.capabilities) {
                Ok(_) => {
                    session.trackers = Trackers::On(reply.settings());
                    BackendStep::Done(session)
                }
                Err(e) => BackendStep::Failed(format!("tracker setup OK: {e}")),
            },
            Some(0xFF) => {
                let why = ErrPacket::parse(&packet.payload).map_or_else(
                    |e| e.to_string(),
                    |err| format!("{} {}", err.code, err.message),
                );
                session.trackers = Trackers::Refused(why);
                BackendStep::Done(session)
            }
            _ => BackendStep::Failed(
                "backend answered the tracker setup with neither OK nor ERR".into(),
            ),
        }
    }
}

fn query_payload(sql: &str) -> Vec<u8> {
    let mut query = Vec::with_capacity(sql.len() + 1);
    query.push(COM_QUERY);
    query.extend_from_slice(sql.as_bytes());
    query
}

/// [`TRACKER_SETUP`] as a command frame, to send again after the server reset the trackers.
pub fn tracker_setup_frame() -> Bytes {
    frame(&query_payload(TRACKER_SETUP), 0)
}

/// Reads the one-row result set of [`SETTINGS_QUERY`] (or its ERR, on servers without trackers).
#[derive(Debug)]
pub struct SettingsReply {
    deprecate_eof: bool,
    phase: Phase,
    values: Vec<Option<String>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    ColumnCount,
    Columns(u64),
    ColumnsEof,
    Rows,
    Done,
}

impl SettingsReply {
    fn new(deprecate_eof: bool) -> Self {
        SettingsReply {
            deprecate_eof,
            phase: Phase::ColumnCount,
            values: Vec::new(),
        }
    }

    fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The settings read; MariaDB's defaults for what could not be read.
    fn settings(&self) -> TrackingSettings {
        TrackingSettings::from_values(&self.values)
    }

    fn feed(&mut self, payload: &[u8]) -> Result<(), String> {
        let mut r = Reader::new(payload, "tracker settings");
        let first = payload.first().copied();
        self.phase = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::ColumnCount if first == Some(0xFF) => Phase::Done,
            Phase::ColumnCount => match r.lenenc_int() {
                Ok(n) if n > 0 => Phase::Columns(n),
                _ => return Err("bad column count".into()),
            },
            Phase::Columns(1) if self.deprecate_eof => Phase::Rows,
            Phase::Columns(1) => Phase::ColumnsEof,
            Phase::Columns(n) => Phase::Columns(n - 1),
            Phase::ColumnsEof if EofPacket::matches(payload) => Phase::Rows,
            Phase::ColumnsEof => return Err("expected EOF after the column definitions".into()),
            Phase::Rows if first == Some(0xFE) && payload.len() < 0xFF_FFFF => Phase::Done,
            Phase::Rows if first == Some(0xFF) => Phase::Done,
            Phase::Rows => {
                let mut values = Vec::new();
                while !r.is_empty() {
                    if r.peek() == Some(0xFB) {
                        r.u8().map_err(|e| e.to_string())?;
                        values.push(None);
                    } else {
                        let v = r.lenenc_bytes().map_err(|e| e.to_string())?;
                        values.push(Some(String::from_utf8_lossy(v).into_owned()));
                    }
                }
                self.values = values;
                Phase::Rows
            }
            Phase::Done => return Err("unexpected packet".into()),
        };
        Ok(())
    }
}
