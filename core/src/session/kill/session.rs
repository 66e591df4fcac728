//! The session's side of KILL: commands ferry handles alone wait at the gate
//! until everything before them is answered; a KILL is then resolved against
//! the live sessions and done where its target lives now.

use bytes::{Bytes, BytesMut};

use super::{
    classify, no_such_thread, not_owner, resolve, resolve::shared_with_another_tenant,
    untranslated_refused, Asker, Class, Kill, Peer, RemoteStatement, Resolution, Target,
};
use crate::errors;
use crate::login::{err_frame, frame};
use crate::packets::flags::command::COM_CHANGE_USER;
use crate::packets::{ErrPacket, OkPacket};
use crate::session::{CloseReason, Output, Session, State};
use crate::time::Timestamp;
use std::time::Duration;

/// How long a session named by a KILL CONNECTION waits, with a command in
/// flight, for its backend's own answer ("Connection was killed", 1927) and
/// close before ferry closes the client anyway.
const KILLED_GRACE: Duration = Duration::from_secs(2);

/// A statement longer than this is sorted by its beginning: a KILL ferry
/// translates is a few bytes, and the rest of a long one passes as read.
const CLASSIFY_LIMIT: usize = 64 * 1024;

/// What the session is doing about a KILL, and the client bytes that wait.
#[derive(Debug)]
pub(crate) struct Intercept {
    /// Finds the commands that wait; holds them and what follows.
    pub(crate) gate: super::Gate,
    pending: Option<Pending>,
    /// This session was killed while a command was in flight: the backend's
    /// answer still goes to the client, then the session closes.
    killed: Option<Killed>,
}

/// A KILL CONNECTION that named this session while its backend was answering.
#[derive(Debug)]
struct Killed {
    why: String,
    /// The session closes by then even if the backend never closes.
    deadline: Timestamp,
}

impl Intercept {
    /// For a client with `capabilities` (multi-statements on or off).
    pub(crate) fn new(capabilities: u32) -> Self {
        Intercept {
            gate: super::Gate::new(
                capabilities & crate::packets::flags::caps::CLIENT_MULTI_STATEMENTS != 0,
            ),
            pending: None,
            killed: None,
        }
    }

    /// When a killed session closes at the latest, if one waits for its backend.
    pub(crate) fn killed_deadline(&self) -> Option<Timestamp> {
        self.killed.as_ref().map(|k| k.deadline)
    }

    /// Nothing held, nothing under way: a move may start.
    pub(crate) fn is_clear(&self) -> bool {
        self.pending.is_none() && self.gate.held.is_empty()
    }
}

/// A KILL waiting for an answer from the rest of the proxy.
#[derive(Debug)]
enum Pending {
    /// For the live sessions, to resolve it.
    Kill { kill: Kill, packet: Bytes },
    /// For the live sessions, to see whether its backend is shared.
    Untranslated { packet: Bytes, whole: bool },
    /// For the statement run on the target's backend; then `victim` closes.
    Remote { victim: Option<u32> },
}

impl Session {
    /// Client bytes while forwarding: passed on, up to a command that must wait.
    pub(crate) fn client_commands(&mut self, data: Bytes) {
        let held_limit = self.config.limits.memory.held;
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let ic = &mut f.intercept;
        let data = if ic.pending.is_some() || !ic.gate.held.is_empty() {
            ic.gate.held.extend_from_slice(&data);
            if ic.gate.held.len() > held_limit {
                return self.held_too_long();
            }
            if ic.pending.is_some() {
                return;
            }
            ic.gate.held.split().freeze()
        } else {
            data
        };
        match ic.gate.scan(&data) {
            None => self.forward_client(data),
            Some(at) => {
                // Held before what precedes it is passed on: passing it may
                // reach a point where ferry starts an exchange of its own (a
                // move, a read-back), and the held command must keep a move
                // from starting and wait behind that exchange.
                // (While ferry lets the client's bytes pass its own exchange,
                // they go on at once, as before.)
                let passing = f.passing;
                ic.gate.held.extend_from_slice(&data[at..]);
                if at > 0 {
                    self.forward_client(data.slice(..at));
                }
                if passing {
                    self.handle_held();
                } else {
                    self.resume_intercept();
                }
            }
        }
    }

    /// Everything the client sent before is answered, no move or read of ferry's own is under way.
    fn alone(&self) -> bool {
        matches!(&self.state, State::Forwarding(f) if f.forward.is_idle()
            && f.moving.is_none()
            && f.refresh.is_none()
            && f.draining.is_none()
            && f.lost.is_none()
            && f.identity.parked_change_user.is_none())
    }

    /// Called after every input: lets held commands go once they may.
    pub(crate) fn resume_intercept(&mut self) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        if f.intercept.pending.is_some() || f.intercept.gate.held.is_empty() {
            return;
        }
        if f.lost.is_some() {
            // The next command hears that the backend is gone.
            let held = f.intercept.gate.held.split().freeze();
            return self.on_client_data(self.now, held);
        }
        if f.moving.is_some()
            || f.refresh.is_some()
            || f.draining.is_some()
            || f.identity.parked_change_user.is_some()
        {
            // ferry's own exchange first: the held bytes go on after it.
            return;
        }
        self.handle_held();
    }

    /// The first packet held: pass it, or handle it alone once it may.
    fn handle_held(&mut self) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let gate = &mut f.intercept.gate;
        if f.intercept.pending.is_some() || gate.held.is_empty() {
            return;
        }
        let Some(len) = gate.whole_first() else {
            if gate.held.len() <= CLASSIFY_LIMIT {
                return;
            }
            // A long statement: sorted by its beginning.
            if classify(&gate.held[crate::wire::HEADER_LEN..]) == Class::Other {
                let part = gate.pass_first_in_part().expect("incomplete").freeze();
                return self.forward_client(part);
            }
            if !self.alone() {
                return;
            }
            let State::Forwarding(f) = &mut self.state else {
                return;
            };
            let packet = f.intercept.gate.held.split().freeze();
            f.intercept.pending = Some(Pending::Untranslated {
                packet,
                whole: false,
            });
            self.outputs.push_back(Output::Locate);
            return;
        };
        let payload = &gate.held[crate::wire::HEADER_LEN..len];
        let class = if payload.first() == Some(&COM_CHANGE_USER) {
            None
        } else {
            Some(classify(payload))
        };
        if class == Some(Class::Other) {
            let packet = gate.held.split_to(len).freeze();
            self.forward_client(packet);
            return self.continue_held();
        }
        if !self.alone() {
            return;
        }
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let packet = f.intercept.gate.held.split_to(len).freeze();
        match class {
            None => {
                self.change_user(packet, false);
                self.continue_held();
            }
            Some(Class::Kill(kill)) => {
                f.intercept.pending = Some(Pending::Kill { kill, packet });
                self.outputs.push_back(Output::Locate);
            }
            Some(_) => {
                f.intercept.pending = Some(Pending::Untranslated {
                    packet,
                    whole: true,
                });
                self.outputs.push_back(Output::Locate);
            }
        }
    }

    /// A held command is done: what the client sent after it goes on.
    fn continue_held(&mut self) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        if f.intercept.pending.is_some() {
            return;
        }
        if f.intercept.gate.held.is_empty() {
            return self.try_move(self.now);
        }
        let rest = f.intercept.gate.held.split().freeze();
        // Through every hold a session has (a parked COM_CHANGE_USER, a move).
        self.on_client_data(self.now, rest);
    }

    /// The live sessions, for the KILL under way.
    pub(crate) fn on_located(&mut self, peers: Vec<Peer>) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let Some(pending) = f.intercept.pending.take() else {
            return;
        };
        let (packet, whole) = match &pending {
            Pending::Kill { packet, .. } => (packet.clone(), true),
            Pending::Untranslated { packet, whole } => (packet.clone(), *whole),
            Pending::Remote { .. } => return,
        };
        if !self.alone() {
            // The backend went away meanwhile: the command waits for what happens next.
            let State::Forwarding(f) = &mut self.state else {
                return;
            };
            let mut held = BytesMut::from(&packet[..]);
            held.unsplit(f.intercept.gate.held.split());
            f.intercept.gate.held = held;
            return;
        }
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let identity = &f.identity;
        let tenant = identity.client.login.tenant.as_deref();
        let backend = &identity.route.backend;
        let kill = match pending {
            Pending::Untranslated { .. } => {
                if shared_with_another_tenant(tenant, backend, &peers) {
                    self.reply_err(&untranslated_refused());
                    if !whole {
                        // Its rest is still coming: the session cannot go on.
                        return self.close(CloseReason::ProtocolError(
                            "a long KILL ferry does not translate, on a shared backend".into(),
                        ));
                    }
                } else if whole {
                    self.forward_client(packet);
                } else {
                    let State::Forwarding(f) = &mut self.state else {
                        return;
                    };
                    f.intercept.gate.held = BytesMut::from(&packet[..]);
                    let part = f.intercept.gate.pass_first_in_part().expect("incomplete");
                    self.forward_client(part.freeze());
                }
                return self.continue_held();
            }
            Pending::Kill { kill, .. } => kill,
            Pending::Remote { .. } => return,
        };
        let me = Asker {
            id: self.id,
            tenant,
            backend,
        };
        let resolution = match kill.target {
            Target::Id(id) => resolve(id, &me, &peers),
            Target::Own => Resolution::Session(Peer {
                id: self.id,
                tenant: tenant.map(str::to_string),
                user: identity.client.login.user.clone(),
                backend: backend.clone(),
                addr: Some(identity.route.addr),
                thread: f.backend_thread,
                earlier: Vec::new(),
            }),
        };
        let named = kill.id().unwrap_or(f.backend_thread);
        let own_backend = backend.clone();
        match resolution {
            Resolution::NotOwner => self.reply_err(&not_owner(named)),
            Resolution::Ambiguous => self.reply_err(&no_such_thread(named)),
            // Not a session of ferry's: the backend decides, as written.
            Resolution::Unowned => self.forward_client(packet),
            Resolution::Session(p) if p.id == self.id && !kill.query_only => {
                let err = errors::connection_closed("the session killed itself");
                self.outputs.push_back(Output::ToClient(err_frame(&err, 1)));
                self.quit_backend_if_idle();
                return self.close(CloseReason::Closed("killed itself".into()));
            }
            Resolution::Session(p) if kill.query_only && p.backend == own_backend => {
                self.forward_client(frame(&kill.payload_for(p.thread), 0));
            }
            Resolution::Session(p) => {
                // Run where the target lives, as this client: the backend
                // checks its privileges; a whole connection is then closed by
                // ferry, which would otherwise fail it over.
                let Some(addr) = p.addr else {
                    self.reply_err(&no_such_thread(named));
                    return self.continue_held();
                };
                let identity = match &self.state {
                    State::Forwarding(f) => &f.identity,
                    _ => return,
                };
                let statement = RemoteStatement {
                    backend: p.backend.0.clone(),
                    addr,
                    user: identity.client.login.user.clone(),
                    secret: identity.client.secret.clone(),
                    sql: kill.sql_for(p.thread),
                };
                if let State::Forwarding(f) = &mut self.state {
                    f.intercept.pending = Some(Pending::Remote {
                        victim: (!kill.query_only).then_some(p.id),
                    });
                }
                self.outputs.push_back(Output::RunElsewhere(statement));
                return;
            }
        }
        self.continue_held();
    }

    /// How the KILL run where its target lives went.
    pub(crate) fn on_ran_elsewhere(&mut self, result: Result<Result<(), ErrPacket>, String>) {
        let State::Forwarding(f) = &mut self.state else {
            return;
        };
        let Some(Pending::Remote { victim }) = f.intercept.pending.take() else {
            return;
        };
        match result {
            Ok(Ok(())) => {
                if let Some(id) = victim {
                    self.outputs.push_back(Output::CloseSession {
                        id,
                        why: format!("killed by connection {}", self.id),
                    });
                }
                self.reply_ok();
            }
            Ok(Err(err)) => self.reply_err(&err),
            Err(why) => self.reply_err(&errors::remote_failed(&why)),
        }
        self.continue_held();
    }

    /// This session was named by a KILL: as with MariaDB, the connection
    /// drops; its backend thread is gone already. With a command in flight
    /// the backend's own error (1927) is on its way and the client should
    /// read it, as it would directly: the session closes when the backend
    /// does (or after [`KILLED_GRACE`]). Idle, it closes now (the client
    /// reports 2013 at its next command).
    pub(crate) fn on_killed(&mut self, why: String) {
        let now = self.now;
        if let State::Forwarding(f) = &mut self.state {
            if !f.forward.is_idle() && f.moving.is_none() {
                f.intercept.killed = Some(Killed {
                    why,
                    deadline: now + KILLED_GRACE,
                });
                return;
            }
        }
        self.close(CloseReason::Closed(why));
    }

    /// The backend of a killed session closed, or the grace ran out: the
    /// session closes (a killed session never fails over). False if it was
    /// not killed, or its grace has not run out and the backend lives.
    pub(crate) fn close_if_killed(&mut self, backend_gone: bool) -> bool {
        let State::Forwarding(f) = &mut self.state else {
            return false;
        };
        let due = backend_gone
            || f.intercept
                .killed
                .as_ref()
                .is_some_and(|k| self.now >= k.deadline);
        match f.intercept.killed.take() {
            Some(k) if due => {
                self.close(CloseReason::Closed(k.why));
                true
            }
            other => {
                f.intercept.killed = other;
                false
            }
        }
    }

    fn reply_ok(&mut self) {
        let State::Forwarding(f) = &self.state else {
            return;
        };
        let ok = OkPacket {
            status: f.forward.server_status(),
            ..OkPacket::default()
        };
        let mut payload = BytesMut::new();
        ok.write(&mut payload, f.identity.client.capabilities);
        self.outputs.push_back(Output::ToClient(frame(&payload, 1)));
    }

    fn reply_err(&mut self, err: &ErrPacket) {
        self.outputs.push_back(Output::ToClient(err_frame(err, 1)));
    }

    fn held_too_long(&mut self) {
        let limit = self.config.limits.memory.held;
        let err = ErrPacket::new(
            1105,
            "HY000",
            format!(
                "ferry: the client sent more than {limit} bytes behind a command that waits for the answers before it"
            ),
        );
        self.reply_err(&err);
        self.close(CloseReason::ProtocolError(
            "too many bytes behind a held command".into(),
        ));
    }
}
