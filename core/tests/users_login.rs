//! Users that change while ferry runs: a login ferry cannot verify with the
//! users it has asks for them to be read again before it refuses; a user
//! whose hash ferry cannot read is verified by the backend, and such a
//! session cannot move until ferry learns its credential.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ferry_core::auth::{scramble_native, StoredCredential};
use ferry_core::config::UnverifiedLogins;
use ferry_core::login::{LoginPolicy, UsersRead, CREDENTIAL_UNKNOWN};
use ferry_core::packets::flags::caps::FERRY_SUPPORTED;
use ferry_core::packets::{AuthSwitchRequest, ChangeUser, ErrPacket, HandshakeResponse};
use ferry_core::session::{
    CloseReason, Control, Input, MoveRequest, Output, SessionConfig, SessionEvent, Trigger,
};
use ferry_core::users::UserDirectory;
use ferry_core::usersync::ReadSchedule;
use ferry_core::wire::PacketDecoder;
use ferry_core::Timestamp;
use support::*;

fn with_policy(user_source: bool, unverified: UnverifiedLogins) -> SessionConfig {
    SessionConfig {
        logins: LoginPolicy {
            user_source,
            unverified,
        },
        ..test_config()
    }
}

fn harness(user_source: bool, unverified: UnverifiedLogins) -> Harness {
    Harness::with(with_policy(user_source, unverified), TraceStyle::Login)
}

/// The test users plus `newbie`/`fresh-pw`, as a re-read finds them after `CREATE USER`.
fn users_with_newbie() -> Arc<UserDirectory> {
    let mut d = (*users()).clone();
    d.insert(
        None,
        "newbie".into(),
        StoredCredential::from_password("fresh-pw"),
    );
    Arc::new(d)
}

fn read_users_asked(h: &Harness) -> usize {
    h.outputs
        .iter()
        .filter(|o| matches!(o, Output::ReadUsers(_)))
        .count()
}

fn packet(bytes: &[u8]) -> ferry_core::wire::Packet {
    let mut d = PacketDecoder::new(1 << 20);
    d.extend(bytes);
    d.decode().unwrap().unwrap()
}

#[test]
fn an_unknown_user_makes_ferry_read_the_users_again_and_is_then_accepted() {
    let mut h = harness(true, UnverifiedLogins::Backend);
    h.client_logs_in("newbie", "fresh-pw");
    // Parked: nothing for the client, no route, until the users are read.
    assert_eq!(read_users_asked(&h), 1);
    assert!(h.closed.is_none());
    assert!(!h
        .outputs
        .iter()
        .any(|o| matches!(o, Output::Route(_) | Output::ToClient(_)) && h.to_client.len() > 1));
    h.feed(Input::UsersRead(UsersRead::Read(users_with_newbie())));
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
    let sent = HandshakeResponse::parse(&packet(&h.to_backend[0]).payload).unwrap();
    assert_eq!(sent.user, "newbie");
    assert_eq!(
        sent.auth_response,
        scramble_native(BACKEND_SALT, b"fresh-pw")
    );
    assert_eq!(read_users_asked(&h), 1, "one read per login");
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_wrong_password_reads_the_users_again_and_if_still_wrong_is_1045() {
    let mut h = harness(true, UnverifiedLogins::Backend);
    h.client_logs_in("root", "not-111");
    assert_eq!(read_users_asked(&h), 1);
    assert!(h.closed.is_none(), "no verdict before the re-read");
    h.feed(Input::UsersRead(UsersRead::Read(users())));
    assert!(
        matches!(&h.closed, Some(CloseReason::LoginRefused(why))
            if why.contains("wrong password") && why.contains("after reading the users again")),
        "{:?}",
        h.closed
    );
    let err = ErrPacket::parse(&packet(h.to_client.last().unwrap()).payload).unwrap();
    assert_eq!(err.code, 1045);
    assert_eq!(
        err.message,
        "Access denied for user 'root'@'127.0.0.1' (using password: YES)"
    );
    // The hash was known: the backend is never asked to decide.
    assert!(!h.outputs.iter().any(|o| matches!(o, Output::Route(_))));
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_failed_read_leaves_the_users_as_they_were() {
    let mut h = harness(true, UnverifiedLogins::Refuse);
    h.client_logs_in("newbie", "fresh-pw");
    h.feed(Input::UsersRead(UsersRead::Failed(
        "connection refused".into(),
    )));
    assert!(
        matches!(&h.closed, Some(CloseReason::LoginRefused(why)) if why.contains("unknown user")),
        "{:?}",
        h.closed
    );
}

#[test]
fn logins_that_ask_together_share_one_read() {
    // The shell's driver: every session that asked before the read started is served by it.
    let mut schedule = ReadSchedule::new(Duration::from_secs(1));
    let mut sessions: Vec<Harness> = (0..5)
        .map(|_| harness(true, UnverifiedLogins::Backend))
        .collect();
    let mut tickets = Vec::new();
    for h in &mut sessions {
        h.client_logs_in("newbie", "fresh-pw");
        assert_eq!(read_users_asked(h), 1);
        tickets.push(schedule.ask());
    }
    let read = schedule.start(Timestamp::ZERO);
    // A login that asks while the read runs needs the next one.
    let mut late = harness(true, UnverifiedLogins::Backend);
    late.client_logs_in("newbie", "fresh-pw");
    let late_ticket = schedule.ask();
    schedule.finish(read);
    for (h, t) in sessions.iter_mut().zip(&tickets) {
        assert!(schedule.served(*t));
        h.feed(Input::UsersRead(UsersRead::Read(users_with_newbie())));
        h.backend_greets("cn1");
        h.backend_accepts(2);
        assert!(h.session.is_forwarding(), "{}", h.trace);
    }
    assert_eq!(schedule.reads(), 1, "five logins, one read");
    assert!(!schedule.served(late_ticket));
    assert_eq!(
        schedule.earliest_start(),
        Timestamp::ZERO + Duration::from_secs(1)
    );
    let next = schedule.start(schedule.earliest_start());
    schedule.finish(next);
    assert!(schedule.served(late_ticket));
    late.feed(Input::UsersRead(UsersRead::Read(users_with_newbie())));
    assert!(late.outputs.iter().any(|o| matches!(o, Output::Route(_))));
}

/// Logs `ghost`/`boo` in through the backend: ferry has no hash for it.
fn backend_verified_login(h: &mut Harness) {
    h.client_logs_in("ghost", "boo");
    if read_users_asked(h) > 0 {
        h.feed(Input::UsersRead(UsersRead::Read(users())));
    }
    h.backend_greets("cn1");
    // ferry relays the backend's own salt to the client, which answers it.
    let switch = AuthSwitchRequest::parse(&packet(h.to_client.last().unwrap()).payload).unwrap();
    assert_eq!(switch.plugin, "mysql_native_password");
    assert_eq!(switch.data, BACKEND_SALT.to_vec());
    assert_eq!(packet(h.to_client.last().unwrap()).seq, 2);
    assert!(
        h.to_backend.is_empty(),
        "nothing for the backend before the client answered"
    );
    h.feed(Input::ClientData(frame(3, |b| {
        b.extend_from_slice(&scramble_native(BACKEND_SALT, b"boo"))
    })));
}

#[test]
fn a_user_ferry_cannot_verify_is_verified_by_the_backend_and_cannot_move_until_ferry_learns_it() {
    let mut h = harness(true, UnverifiedLogins::Backend);
    backend_verified_login(&mut h);
    let sent = HandshakeResponse::parse(&packet(&h.to_backend[0]).payload).unwrap();
    assert_eq!(sent.user, "ghost");
    assert_eq!(
        sent.auth_response,
        scramble_native(BACKEND_SALT, b"boo"),
        "the client's own answer"
    );
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
    assert_eq!(
        packet(h.to_client.last().unwrap()).seq,
        4,
        "OK after the switch"
    );
    let status = h.session.status().unwrap();
    assert!(!status.safe);
    assert_eq!(status.blocked_by, [CREDENTIAL_UNKNOWN]);
    assert!(h.outputs.iter().any(|o| matches!(
        o,
        Output::Event(SessionEvent::Status(s)) if s.blocked_by == [CREDENTIAL_UNKNOWN]
    )));

    // A move asked for now waits: ferry could not log in anywhere else.
    h.feed(Input::Control(Control::Migrate(MoveRequest {
        trigger: Trigger::Admin,
        to: None,
    })));
    assert!(!h.outputs.iter().any(|o| matches!(o, Output::Transfer(_))));

    // A read that still lacks the hash changes nothing.
    h.feed(Input::Control(Control::Users(users())));
    assert_eq!(h.session.status().unwrap().blocked_by, [CREDENTIAL_UNKNOWN]);

    // The hash becomes known (CREATE USER's, say): the credential is recovered
    // from the exchange, the blocker clears and the waiting move starts.
    let mut known = (*users()).clone();
    known.insert(None, "ghost".into(), StoredCredential::from_password("boo"));
    h.feed(Input::Control(Control::Users(Arc::new(known))));
    assert!(h.outputs.iter().any(|o| matches!(
        o,
        Output::Event(SessionEvent::CredentialRecovered { user }) if user == "ghost"
    )));
    let status = h.session.status().unwrap();
    assert!(status.safe, "{status:?}");
    assert!(
        h.outputs.iter().any(|o| matches!(o, Output::Transfer(_))),
        "{}",
        h.trace
    );
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_hash_that_does_not_match_the_exchange_recovers_nothing() {
    let mut h = harness(false, UnverifiedLogins::Backend);
    backend_verified_login(&mut h);
    h.backend_accepts(2);
    let mut other = (*users()).clone();
    other.insert(
        None,
        "ghost".into(),
        StoredCredential::from_password("changed"),
    );
    h.feed(Input::Control(Control::Users(Arc::new(other))));
    assert_eq!(h.session.status().unwrap().blocked_by, [CREDENTIAL_UNKNOWN]);
}

#[test]
fn without_a_user_source_an_unknown_user_goes_straight_to_the_backend_which_may_refuse() {
    let mut h = harness(false, UnverifiedLogins::Backend);
    backend_verified_login(&mut h);
    assert_eq!(read_users_asked(&h), 0, "no source to read");
    let refusal = ErrPacket::new(
        1045,
        "28000",
        "Access denied for user 'ghost'@'10.0.0.9' (using password: YES)",
    );
    h.feed(Input::BackendData(B0, frame(2, |b| refusal.write(b))));
    let to_client = packet(h.to_client.last().unwrap());
    assert_eq!(to_client.seq, 4);
    assert_eq!(
        ErrPacket::parse(&to_client.payload).unwrap(),
        refusal,
        "the backend's own ERR"
    );
    assert!(
        matches!(&h.closed, Some(CloseReason::LoginRefused(why)) if why.contains("only it could check")),
        "{:?}",
        h.closed
    );
    insta::assert_snapshot!(h.trace);
}

#[test]
fn unverified_logins_refuse_keeps_the_strict_behaviour() {
    let mut h = harness(false, UnverifiedLogins::Refuse);
    h.client_logs_in("ghost", "boo");
    assert!(matches!(h.closed, Some(CloseReason::LoginRefused(_))));
    assert!(!h.outputs.iter().any(|o| matches!(o, Output::Route(_))));
    let err = ErrPacket::parse(&packet(h.to_client.last().unwrap()).payload).unwrap();
    assert_eq!(err.code, 1045);
}

#[test]
fn change_user_to_a_user_created_meanwhile_reads_the_users_again() {
    let mut h = harness(true, UnverifiedLogins::Backend);
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding());
    let salt = h.client_salt();
    let change = ChangeUser {
        user: "newbie".into(),
        auth_response: scramble_native(&salt, b"fresh-pw"),
        database: String::new(),
        collation: Some(45),
        auth_plugin: Some("mysql_native_password".into()),
        attributes: None,
    };
    let sent_before = h.to_backend.len();
    h.feed(Input::ClientData(frame(0, |b| {
        change.write(b, FERRY_SUPPORTED)
    })));
    assert_eq!(read_users_asked(&h), 1);
    assert_eq!(
        h.to_backend.len(),
        sent_before,
        "parked until the users are read"
    );
    h.feed(Input::UsersRead(UsersRead::Read(users_with_newbie())));
    let to_backend = ChangeUser::parse(
        &packet(h.to_backend.last().unwrap()).payload,
        FERRY_SUPPORTED,
    )
    .unwrap();
    assert_eq!(to_backend.user, "newbie");
    assert_eq!(
        to_backend.auth_response,
        scramble_native(BACKEND_SALT, b"fresh-pw")
    );
    assert!(h.closed.is_none());
}

#[test]
fn a_user_configured_for_another_tenant_only_is_refused_not_handed_to_the_backend() {
    let mut h = harness(false, UnverifiedLogins::Backend);
    h.client_logs_in("acc2:app", "secret");
    assert!(
        matches!(&h.closed, Some(CloseReason::LoginRefused(why)) if why.contains("not configured for this tenant")),
        "{:?}",
        h.closed
    );
    assert!(!h.outputs.iter().any(|o| matches!(o, Output::Route(_))));
}

#[test]
fn a_client_slow_to_answer_the_relayed_challenge_hits_the_login_timeout_not_the_backends() {
    let mut h = harness(false, UnverifiedLogins::Backend);
    h.client_logs_in("ghost", "boo");
    h.backend_greets("cn1");
    // Past the backend timeout (5 s), within the login timeout (10 s): nothing happens.
    h.advance(Duration::from_secs(6));
    assert!(h.closed.is_none(), "{}", h.trace);
    assert!(
        !h.outputs
            .iter()
            .any(|o| matches!(o, Output::Event(SessionEvent::BackendUnreachable { .. }))),
        "the backend is not blamed for the client: {}",
        h.trace
    );
    h.advance(Duration::from_secs(5));
    assert_eq!(h.closed, Some(CloseReason::LoginTimeout));
}

#[test]
fn change_user_to_a_user_only_the_backend_knows_is_verified_by_the_backend() {
    let mut h = harness(false, UnverifiedLogins::Backend);
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    h.backend_accepts(2);
    let salt = h.client_salt();
    let change = ChangeUser {
        user: "ghost".into(),
        auth_response: scramble_native(&salt, b"boo"),
        database: String::new(),
        collation: Some(45),
        auth_plugin: Some("mysql_native_password".into()),
        attributes: None,
    };
    h.feed(Input::ClientData(frame(0, |b| {
        change.write(b, FERRY_SUPPORTED)
    })));
    let sent = ChangeUser::parse(
        &packet(h.to_backend.last().unwrap()).payload,
        FERRY_SUPPORTED,
    )
    .unwrap();
    assert_eq!(sent.user, "ghost", "passed on for the backend to decide");
    // MariaDB answers with an auth switch; the client answers it itself.
    let new_salt = b"change-user-salt-012";
    let switch = AuthSwitchRequest {
        plugin: "mysql_native_password".into(),
        data: new_salt.to_vec(),
    };
    h.feed(Input::BackendData(B0, frame(1, |b| switch.write(b))));
    assert_eq!(
        AuthSwitchRequest::parse(&packet(h.to_client.last().unwrap()).payload).unwrap(),
        switch
    );
    h.feed(Input::ClientData(frame(2, |b| {
        b.extend_from_slice(&scramble_native(new_salt, b"boo"))
    })));
    h.feed(Input::BackendData(B0, backend_ok(3)));
    // ferry switches the session trackers back on after the change.
    h.feed(Input::BackendData(B0, backend_ok(1)));
    assert!(h.outputs.iter().any(|o| matches!(
        o,
        Output::Event(SessionEvent::BackendVerified { user }) if user == "ghost"
    )));
    assert_eq!(
        h.session.status().unwrap().blocked_by,
        [CREDENTIAL_UNKNOWN],
        "{}",
        h.trace
    );

    // The hash becomes known: recovered from the change's exchange.
    let mut known = (*users()).clone();
    known.insert(None, "ghost".into(), StoredCredential::from_password("boo"));
    h.feed(Input::Control(Control::Users(Arc::new(known))));
    assert!(h.session.status().unwrap().safe, "{}", h.trace);
}

#[test]
fn a_change_user_the_backend_refuses_leaves_the_session_as_it_was() {
    let mut h = harness(false, UnverifiedLogins::Backend);
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    h.backend_accepts(2);
    let change = ChangeUser {
        user: "ghost".into(),
        auth_response: vec![7; 20],
        database: String::new(),
        collation: Some(45),
        auth_plugin: Some("mysql_native_password".into()),
        attributes: None,
    };
    h.feed(Input::ClientData(frame(0, |b| {
        change.write(b, FERRY_SUPPORTED)
    })));
    let switch = AuthSwitchRequest {
        plugin: "mysql_native_password".into(),
        data: b"change-user-salt-012".to_vec(),
    };
    h.feed(Input::BackendData(B0, frame(1, |b| switch.write(b))));
    h.feed(Input::ClientData(frame(2, |b| {
        b.extend_from_slice(&[9; 20])
    })));
    let refusal = ErrPacket::new(1045, "28000", "Access denied for user 'ghost'@'x'");
    h.feed(Input::BackendData(B0, frame(3, |b| refusal.write(b))));
    assert!(
        h.closed.is_none(),
        "the server keeps the connection, so does ferry"
    );
    assert!(!h
        .outputs
        .iter()
        .any(|o| matches!(o, Output::Event(SessionEvent::BackendVerified { .. }))));
    assert!(h.session.status().unwrap().safe, "{}", h.trace);
}
