//! ferry as the server: greet the client, read its response (after a TLS
//! upgrade if it sent an SSLRequest), switch it to `mysql_native_password` if
//! it asked for another plugin, and verify it.

use bytes::{Bytes, BytesMut};
use zeroize::{Zeroize, Zeroizing};

use crate::auth::{Secret, NATIVE_PASSWORD};
use crate::config::UnverifiedLogins;
use crate::errors;
use crate::labels::{labels_from_attrs, parse_login_name, LoginName};
use crate::packets::flags::caps::*;
use crate::packets::flags::status::SERVER_STATUS_AUTOCOMMIT;
use crate::packets::{is_ssl_request, AuthSwitchRequest, ErrPacket, Handshake, HandshakeResponse};
use crate::users::UserDirectory;
use crate::wire::Packet;

use super::{err_frame, frame, Exchange, LoginPolicy, ReadUsers, RereadCause};

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
    /// MariaDB extended capabilities the backends offer (ferry offers what it also follows).
    pub mariadb_capabilities: u32,
    /// Whether ferry offers (or requires) TLS.
    pub tls: TlsOffer,
}

impl Greeting {
    /// The MariaDB extended capabilities ferry offers: those it follows that
    /// the backends offer, and only in a MariaDB greeting (`CLIENT_MYSQL` clear).
    pub fn offered_mariadb(&self) -> u32 {
        if self.capabilities & CLIENT_MYSQL != 0 {
            return 0;
        }
        self.mariadb_capabilities & FERRY_SUPPORTED_MARIADB
    }
}

/// What ferry offers clients for TLS (the config's top-level `tls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsOffer {
    /// No TLS: `CLIENT_SSL` is not offered and an SSLRequest gets ERR 1235.
    #[default]
    Off,
    /// `CLIENT_SSL` offered; clients may log in without TLS too.
    Optional,
    /// `CLIENT_SSL` offered and required: a login without TLS gets ERR 1045,
    /// as MariaDB answers an account created `REQUIRE SSL`.
    Required,
}

/// A client whose login ferry has verified.
#[derive(Clone, Debug)]
pub struct VerifiedClient {
    /// Tenant, bare user and labels (from the name and the connection attributes).
    pub login: LoginName,
    /// The response as the client sent it, to replay to backends.
    pub response: HandshakeResponse,
    /// What answers any backend's salt (while [`VerifiedBy::Backend`]: nothing
    /// valid yet, and no backend login may use it).
    pub secret: Secret,
    /// Who checked the password.
    pub verified_by: VerifiedBy,
    /// Capabilities in force between the client and ferry.
    pub capabilities: u32,
    /// Sequence id of ferry's next packet to the client (the login OK).
    pub next_seq: u8,
    /// The salt ferry gave the client (COM_CHANGE_USER scrambles with it again).
    pub salt: [u8; 20],
}

/// Who checked a client's password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifiedBy {
    /// ferry, against the user's stored hash: [`VerifiedClient::secret`] is the real one.
    Ferry,
    /// The backend the session was routed to: ferry did not know the user's
    /// hash. Holds the exchange once it happened, to recover the secret from
    /// when the hash becomes known.
    Backend(Option<Exchange>),
}

/// What the client login wants done next.
#[derive(Debug)]
pub enum ClientStep {
    /// Send these bytes to the client and wait for its next packet.
    Send(Bytes),
    /// The client sent an SSLRequest: upgrade its connection to TLS (the
    /// bytes it sent after the request are the start of its TLS handshake),
    /// then wait for its handshake response over TLS.
    StartTls,
    /// The client is verified; route it.
    Verified(Box<VerifiedClient>),
    /// Refuse the client: send this ERR frame, then close. The string is for logs.
    Refuse(Bytes, String),
    /// Have the user source read again, then call [`ClientLogin::users_read`].
    ReadUsers(ReadUsers),
}

#[derive(Debug)]
enum State {
    AwaitResponse,
    /// After the TLS upgrade: the real response, with sequence id 2.
    AwaitTlsResponse,
    AwaitSwitchReply(Box<HandshakeResponse>),
    /// Verification failed with the users ferry had; the source is being read again.
    AwaitUsers(Box<Verifying>),
    Finished,
}

/// A response kept while the users are read again.
#[derive(Debug)]
struct Verifying {
    response: HandshakeResponse,
    reply: Zeroizing<Vec<u8>>,
    next_seq: u8,
}

/// The server side of the login handshake.
#[derive(Debug)]
pub struct ClientLogin {
    greeting: Greeting,
    peer_host: String,
    state: State,
    /// The users were read again for this login already (once is enough).
    users_reread: bool,
}

impl ClientLogin {
    /// Starts a login for a client at `peer_host`; returns the machine and the handshake frame to send.
    pub fn start(greeting: Greeting, peer_host: String) -> (Self, Bytes) {
        let hs = Handshake {
            server_version: greeting.server_version.clone(),
            connection_id: greeting.connection_id,
            auth_data: greeting.salt.to_vec(),
            capabilities: greeting.capabilities & (FERRY_SUPPORTED | FERRY_COMPRESSION)
                | if greeting.tls == TlsOffer::Off {
                    0
                } else {
                    CLIENT_SSL
                },
            mariadb_capabilities: greeting.offered_mariadb(),
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
            users_reread: false,
        };
        (login, frame(&payload, 0))
    }

    /// Feeds the client's next packet.
    pub fn handle(
        &mut self,
        packet: Packet,
        users: &UserDirectory,
        policy: LoginPolicy,
    ) -> ClientStep {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::AwaitResponse => self.on_response(packet, false, users, policy),
            State::AwaitTlsResponse => self.on_response(packet, true, users, policy),
            State::AwaitSwitchReply(response) => {
                let reply = Zeroizing::new(packet.payload.to_vec());
                self.verify(*response, reply, packet.next_seq, users, policy)
            }
            State::AwaitUsers(_) => refuse(
                errors::malformed_packet("a packet before the login result"),
                packet.next_seq,
                "client sent a packet while its login was being verified".into(),
            ),
            State::Finished => refuse(
                errors::malformed_packet("unexpected packet after login"),
                packet.next_seq,
                "packet after login finished".into(),
            ),
        }
    }

    /// True while the login waits for [`ClientLogin::users_read`].
    pub fn awaits_users(&self) -> bool {
        matches!(self.state, State::AwaitUsers(_))
    }

    /// The users were read again (or could not be): verify once more, and
    /// this time refuse, or hand the login to the backend, instead of asking again.
    /// `None` if the login was not waiting for the users.
    pub fn users_read(&mut self, users: &UserDirectory, policy: LoginPolicy) -> Option<ClientStep> {
        let State::AwaitUsers(v) = std::mem::replace(&mut self.state, State::Finished) else {
            return None;
        };
        self.users_reread = true;
        let Verifying {
            response,
            reply,
            next_seq,
        } = *v;
        Some(self.verify(response, reply, next_seq, users, policy))
    }

    fn on_response(
        &mut self,
        packet: Packet,
        over_tls: bool,
        users: &UserDirectory,
        policy: LoginPolicy,
    ) -> ClientStep {
        // After an SSLRequest (sequence id 1) the response is the client's second packet.
        let expected = if over_tls { 2 } else { 1 };
        if packet.seq != expected {
            let why = format!("handshake response has sequence id {}", packet.seq);
            return refuse(errors::malformed_packet(&why), packet.next_seq, why);
        }
        if is_ssl_request(&packet.payload) {
            if over_tls {
                let why = "a second SSLRequest over TLS".to_string();
                return refuse(errors::malformed_packet(&why), packet.next_seq, why);
            }
            if self.greeting.tls == TlsOffer::Off {
                return refuse(
                    errors::tls_unsupported(),
                    packet.next_seq,
                    "client requested TLS".into(),
                );
            }
            self.state = State::AwaitTlsResponse;
            return ClientStep::StartTls;
        }
        let response = match HandshakeResponse::parse(&packet.payload) {
            Ok(r) => r,
            Err(e) => {
                let why = e.to_string();
                return refuse(errors::malformed_packet(&why), packet.next_seq, why);
            }
        };
        if !over_tls && self.greeting.tls == TlsOffer::Required {
            let err = errors::access_denied(
                &response.user,
                &self.peer_host,
                !response.auth_response.is_empty(),
            );
            let why = format!(
                "'{}' logged in without TLS, which ferry requires (tls.required)",
                response.user
            );
            return refuse(err, packet.next_seq, why);
        }
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
        let reply = Zeroizing::new(response.auth_response.clone());
        self.verify(response, reply, packet.next_seq, users, policy)
    }

    fn verify(
        &mut self,
        mut response: HandshakeResponse,
        reply: Zeroizing<Vec<u8>>,
        next_seq: u8,
        users: &UserDirectory,
        policy: LoginPolicy,
    ) -> ClientStep {
        // The client's scramble serves this check only (ferry answers every
        // backend from the recovered secret): wiped now rather than kept in
        // the saved handshake for the session's life.
        response.auth_response.zeroize();
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
        // The tenant is settled (an `account` attribute included) before the
        // user is looked up, so the credential checked is the one of the
        // tenant the session will be routed as.
        let attrs = labels_from_attrs(
            response
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let name = name.with_attr_labels(attrs);
        let may_reread = policy.user_source && !self.users_reread;
        let reread = if self.users_reread {
            " (after reading the users again)"
        } else {
            ""
        };
        let (secret, verified_by) = match users.lookup(name.tenant.as_deref(), &name.user) {
            Some(credential) => match credential.verify(&self.greeting.salt, &reply) {
                Some(secret) => (secret, VerifiedBy::Ferry),
                None if may_reread => {
                    return self.read_users(
                        response,
                        reply,
                        next_seq,
                        RereadCause::PasswordMismatch,
                    )
                }
                None => return denied(format!("wrong password for '{}'{reread}", response.user)),
            },
            None if may_reread => {
                return self.read_users(response, reply, next_seq, RereadCause::UnknownUser)
            }
            // Configured for other tenants only: ferry knows this user, and not here.
            None if users.knows(&name.user) => {
                return denied(format!(
                    "user '{}' is not configured for this tenant{reread}",
                    response.user
                ))
            }
            None if policy.unverified == UnverifiedLogins::Backend => {
                // ferry cannot check this password: the backend will (see `VerifiedBy::Backend`).
                (Secret::Empty, VerifiedBy::Backend(None))
            }
            None => return denied(format!("unknown user '{}'{reread}", response.user)),
        };
        let capabilities = response.capabilities
            & self.greeting.capabilities
            & (FERRY_SUPPORTED | FERRY_COMPRESSION);
        let mut response = response;
        // Replayed to backends: only what ferry offered is in force.
        response.mariadb_capabilities &= self.greeting.offered_mariadb();
        ClientStep::Verified(Box::new(VerifiedClient {
            login: name,
            response,
            secret,
            verified_by,
            capabilities,
            next_seq,
            salt: self.greeting.salt,
        }))
    }

    fn read_users(
        &mut self,
        response: HandshakeResponse,
        reply: Zeroizing<Vec<u8>>,
        next_seq: u8,
        cause: RereadCause,
    ) -> ClientStep {
        let wanted = ReadUsers {
            user: response.user.clone(),
            cause,
        };
        self.state = State::AwaitUsers(Box::new(Verifying {
            response,
            reply,
            next_seq,
        }));
        ClientStep::ReadUsers(wanted)
    }
}

fn refuse(err: ErrPacket, seq: u8, why: String) -> ClientStep {
    ClientStep::Refuse(err_frame(&err, seq), why)
}
