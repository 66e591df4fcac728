//! The session's side of users that change while ferry runs: a login parked
//! while the user source is read again, a login the backend verifies (its
//! challenge relayed to the client), and the credential of such a session
//! recovered once the user's hash is known.

use bytes::BytesMut;

use crate::login::client::VerifiedBy;
use crate::login::{frame, Exchange, UsersRead, CREDENTIAL_UNKNOWN};
use crate::packets::{AuthSwitchRequest, ErrPacket};
use crate::session::{CloseReason, Output, Session, SessionEvent, State};
use crate::Timestamp;

use super::backend::BackendStep;

impl Session {
    /// The users were read again (a login or COM_CHANGE_USER waited for it),
    /// or the proxy pushed the users it read to a session the backend verified.
    pub(in crate::session) fn on_users(&mut self, now: Timestamp, answer: UsersRead) {
        if let UsersRead::Read(users) = answer {
            self.users = users;
        }
        match &mut self.state {
            State::ClientLogin(login) if login.awaits_users() => {
                if let Some(step) = login.users_read(&self.users, self.config.logins) {
                    self.client_login_step(step);
                }
                // Bytes the client sent meanwhile (none are expected) are judged now.
                self.drive_client_login();
            }
            State::Forwarding(f) => {
                if let Some((data, held)) = f.identity.parked_change_user.take() {
                    self.change_user(data, true);
                    if !held.is_empty() {
                        self.on_client_data(now, held.freeze());
                    }
                }
                self.recover_credential(now);
            }
            _ => {}
        }
    }

    /// A login the backend verifies: the backend greeted with `salt`; the
    /// client answers it through an auth switch to mysql_native_password.
    pub(in crate::session) fn relay_challenge(&mut self, salt: Vec<u8>) {
        let State::BackendLogin(phase) = &mut self.state else {
            return;
        };
        let switch = AuthSwitchRequest {
            plugin: crate::auth::NATIVE_PASSWORD.to_string(),
            data: salt.clone(),
        };
        let mut payload = BytesMut::new();
        switch.write(&mut payload);
        self.outputs
            .push_back(Output::ToClient(frame(&payload, phase.client.next_seq)));
        // The client answers with the next id; ferry's verdict follows that.
        phase.client.next_seq = phase.client.next_seq.wrapping_add(2);
        phase.relayed_salt = Some(salt);
        // Now the client is slow, not the backend: a slow client must not make
        // ferry take a backend out of routing. It has the login timeout.
        self.backend_deadline = None;
        self.login_deadline = Some(self.now + self.config.login_timeout);
    }

    /// The client's answer to the relayed challenge: on to the backend, which decides.
    pub(in crate::session) fn drive_relayed_reply(&mut self) {
        let State::BackendLogin(phase) = &mut self.state else {
            return;
        };
        let packet = match self.client_rx.decode() {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => return self.client_frame_error(e),
        };
        let Some(salt) = phase.relayed_salt.take() else {
            return;
        };
        let reply = packet.payload.to_vec();
        phase.client.next_seq = packet.next_seq;
        self.login_deadline = None;
        self.backend_deadline = Some(self.now + self.config.backend_timeout);
        phase.client.verified_by = VerifiedBy::Backend(Some(Exchange {
            salt,
            reply: reply.clone(),
        }));
        let h = phase.handle;
        match phase.login.client_replied(reply) {
            BackendStep::Send(bytes) => self.outputs.push_back(Output::ToBackend(h, bytes)),
            BackendStep::StartTls(request, response) => self.backend_tls(h, request, response),
            BackendStep::Failed(why) => self.fail_login(&why),
            _ => {}
        }
        if !self.client_rx.take_remaining().is_empty() {
            self.close(CloseReason::ProtocolError(
                "client sent data before its login finished".into(),
            ));
        }
    }

    /// Why a backend refused a login, for the logs.
    pub(in crate::session) fn backend_refusal(&self, err: &ErrPacket) -> String {
        match &self.state {
            State::BackendLogin(phase) if phase.client.verified_by != VerifiedBy::Ferry => format!(
                "backend {} refused '{}', whose password only it could check: {} {}",
                phase.route.backend, phase.client.response.user, err.code, err.message
            ),
            _ => "backend refused the login".into(),
        }
    }

    /// Just logged in: a session the backend verified cannot move until ferry knows its credential.
    pub(in crate::session) fn note_backend_verified(&mut self) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        if f.identity.client.verified_by == VerifiedBy::Ferry {
            return;
        }
        f.forward.set_blocker(CREDENTIAL_UNKNOWN, true);
        if let VerifiedBy::Backend(Some(exchange)) = &f.identity.client.verified_by {
            // The client answered the backend's salt last.
            f.identity.client_salt = Some(exchange.salt.clone());
        }
        let user = f.identity.client.response.user.clone();
        self.outputs
            .push_back(Output::Event(SessionEvent::BackendVerified { user }));
        self.report_status();
    }

    /// Recovers the secret of a session the backend verified, if the users now hold its hash.
    fn recover_credential(&mut self, _now: Timestamp) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let client = &mut f.identity.client;
        let VerifiedBy::Backend(Some(exchange)) = &client.verified_by else {
            return;
        };
        let secret = self
            .users
            .lookup(client.login.tenant.as_deref(), &client.login.user)
            .and_then(|cred| cred.verify(&exchange.salt, &exchange.reply));
        let Some(secret) = secret else {
            return;
        };
        client.secret = secret;
        client.verified_by = VerifiedBy::Ferry;
        let user = client.response.user.clone();
        f.forward.set_blocker(CREDENTIAL_UNKNOWN, false);
        self.outputs
            .push_back(Output::Event(SessionEvent::CredentialRecovered { user }));
        self.report_status();
    }

    /// Reports the status now if it changed (a blocker came or went outside any response).
    fn report_status(&mut self) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        if !f.forward.is_idle() {
            // The response in flight reports it when it completes.
            return;
        }
        f.forward.take_status_change();
        let status = f.forward.status();
        if status != self.last_status {
            self.last_status = status.clone();
            self.outputs
                .push_back(Output::Event(SessionEvent::Status(status)));
        }
        let now = self.now;
        self.try_move(now);
    }
}
