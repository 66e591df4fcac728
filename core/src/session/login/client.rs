//! ferry as the server: greet the client, read its response, switch it to
//! `mysql_native_password` if it asked for another plugin, and verify it.

use bytes::{Bytes, BytesMut};

use crate::auth::{Secret, NATIVE_PASSWORD};
use crate::errors;
use crate::labels::{labels_from_attrs, parse_login_name, LoginName};
use crate::packets::flags::caps::*;
use crate::packets::flags::status::SERVER_STATUS_AUTOCOMMIT;
use crate::packets::{is_ssl_request, AuthSwitchRequest, ErrPacket, Handshake, HandshakeResponse};
use crate::users::UserDirectory;
use crate::wire::Packet;

use super::{err_frame, frame};

/// What ferry tells clients in its handshake.
#[derive(Clone, Debug)]
pub struct Greeting {
    /// Server version string (the backends', so clients enable the same features).
    pub server_version: String,
    /// ferry's connection id for this client.
    pub connection_id: u32,
    /// A fresh 20-byte salt (printable, no NUL).
    pub salt: [u8; 20],
    /// Default collation id (utf8mb4_general_ci).
    pub collation: u8,
    /// Capabilities to offer: ferry's, cut down to the backends' when known,
    /// so no client negotiates a packet shape a backend will not produce.
    pub capabilities: u32,
}

/// A client whose login ferry has verified.
#[derive(Clone, Debug)]
pub struct VerifiedClient {
    /// Tenant, bare user and labels (from the name and the connection attributes).
    pub login: LoginName,
    /// The response as the client sent it, to replay to backends.
    pub response: HandshakeResponse,
    /// What answers any backend's salt.
    pub secret: Secret,
    /// Capabilities in force between the client and ferry.
    pub capabilities: u32,
    /// Sequence id of ferry's next packet to the client (the login OK).
    pub next_seq: u8,
    /// The salt ferry gave the client (COM_CHANGE_USER scrambles with it again).
    pub salt: [u8; 20],
}

/// What the client login wants done next.
#[derive(Debug)]
pub enum ClientStep {
    /// Send these bytes to the client and wait for its next packet.
    Send(Bytes),
    /// The client is verified; route it.
    Verified(Box<VerifiedClient>),
    /// Refuse the client: send this ERR frame, then close. The string is for logs.
    Refuse(Bytes, String),
}

#[derive(Debug)]
enum State {
    AwaitResponse,
    AwaitSwitchReply(Box<HandshakeResponse>),
    Finished,
}

/// The server side of the login handshake.
#[derive(Debug)]
pub struct ClientLogin {
    greeting: Greeting,
    peer_host: String,
    state: State,
}

impl ClientLogin {
    /// Starts a login for a client at `peer_host`; returns the machine and the handshake frame to send.
    pub fn start(greeting: Greeting, peer_host: String) -> (Self, Bytes) {
        let hs = Handshake {
            server_version: greeting.server_version.clone(),
            connection_id: greeting.connection_id,
            auth_data: greeting.salt.to_vec(),
            capabilities: greeting.capabilities & FERRY_SUPPORTED,
            mariadb_capabilities: FERRY_SUPPORTED_MARIADB,
            collation: greeting.collation,
            status: SERVER_STATUS_AUTOCOMMIT,
            auth_plugin: Some(NATIVE_PASSWORD.to_string()),
        };
        let mut payload = BytesMut::new();
        hs.write(&mut payload);
        let login = ClientLogin {
            greeting,
            peer_host,
            state: State::AwaitResponse,
        };
        (login, frame(&payload, 0))
    }

    /// Feeds the client's next packet.
    pub fn handle(&mut self, packet: Packet, users: &UserDirectory) -> ClientStep {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::AwaitResponse => self.on_response(packet, users),
            State::AwaitSwitchReply(response) => {
                let reply = packet.payload.to_vec();
                self.verify(*response, reply, packet.next_seq, users)
            }
            State::Finished => refuse(
                errors::malformed_packet("unexpected packet after login"),
                packet.next_seq,
                "packet after login finished".into(),
            ),
        }
    }

    fn on_response(&mut self, packet: Packet, users: &UserDirectory) -> ClientStep {
        if packet.seq != 1 {
            let why = format!("handshake response has sequence id {}", packet.seq);
            return refuse(errors::malformed_packet(&why), packet.next_seq, why);
        }
        if is_ssl_request(&packet.payload) {
            return refuse(
                errors::tls_unsupported(),
                packet.next_seq,
                "client requested TLS".into(),
            );
        }
        let response = match HandshakeResponse::parse(&packet.payload) {
            Ok(r) => r,
            Err(e) => {
                let why = e.to_string();
                return refuse(errors::malformed_packet(&why), packet.next_seq, why);
            }
        };
        let wants_other_plugin = response
            .auth_plugin
            .as_deref()
            .is_some_and(|p| p != NATIVE_PASSWORD)
            && response.capabilities & CLIENT_PLUGIN_AUTH != 0;
        if wants_other_plugin {
            let switch = AuthSwitchRequest {
                plugin: NATIVE_PASSWORD.to_string(),
                data: self.greeting.salt.to_vec(),
            };
            let mut payload = BytesMut::new();
            switch.write(&mut payload);
            self.state = State::AwaitSwitchReply(Box::new(response));
            return ClientStep::Send(frame(&payload, packet.next_seq));
        }
        let reply = response.auth_response.clone();
        self.verify(response, reply, packet.next_seq, users)
    }

    fn verify(
        &mut self,
        response: HandshakeResponse,
        reply: Vec<u8>,
        next_seq: u8,
        users: &UserDirectory,
    ) -> ClientStep {
        let denied = |why: String| {
            let err = errors::access_denied(&response.user, &self.peer_host, !reply.is_empty());
            refuse(err, next_seq, why)
        };
        let name = match parse_login_name(&response.user) {
            Ok(name) => name,
            Err(e) => {
                let why = e.to_string();
                return refuse(errors::bad_login_name(&why), next_seq, why);
            }
        };
        let Some(credential) = users.lookup(name.tenant.as_deref(), &name.user) else {
            return denied(format!("unknown user '{}'", response.user));
        };
        let Some(secret) = credential.verify(&self.greeting.salt, &reply) else {
            return denied(format!("wrong password for '{}'", response.user));
        };
        let attrs = labels_from_attrs(
            response
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let capabilities = response.capabilities & self.greeting.capabilities & FERRY_SUPPORTED;
        ClientStep::Verified(Box::new(VerifiedClient {
            login: name.with_attr_labels(attrs),
            response,
            secret,
            capabilities,
            next_seq,
            salt: self.greeting.salt,
        }))
    }
}

fn refuse(err: ErrPacket, seq: u8, why: String) -> ClientStep {
    ClientStep::Refuse(err_frame(&err, seq), why)
}
