//! The login exchange, both ends driven in memory with a fake clock: given
//! these packets, the session emits these. Traces are insta snapshots.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_core::auth::scramble_native;
use ferry_core::cluster::{BackendId, LabelGroup, NoBackend, Route};
use ferry_core::labels::Labels;
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::{AuthSwitchRequest, ErrPacket, HandshakeResponse};
use ferry_core::session::{BackendHandle, CloseReason, Input, SessionConfig};
use ferry_core::wire::{write_packet, PacketDecoder};
use ferry_core::Timestamp;
use support::*;

#[test]
fn a_tenant_user_logs_in_and_the_backend_sees_the_bare_user() {
    let mut h = Harness::new();
    h.client_logs_in("acc1:app?region=eu", "secret");
    h.backend_greets("cn2");
    h.backend_accepts(2);

    // The backend got a valid scramble of the same password for its own salt.
    let mut d = PacketDecoder::new(1 << 20);
    d.extend(&h.to_backend[0]);
    let sent = HandshakeResponse::parse(&d.decode().unwrap().unwrap().payload).unwrap();
    assert_eq!(sent.user, "app");
    assert_eq!(sent.auth_response, scramble_native(BACKEND_SALT, b"secret"));
    assert_eq!(sent.database.as_deref(), Some("test"));
    assert!(h.session.is_forwarding());

    // After login, bytes pass through untouched and uncopied.
    let query = frame(0, |b| b.extend_from_slice(b"\x03SELECT 1"));
    h.feed(Input::ClientData(query.clone()));
    assert_eq!(
        h.to_backend.last().unwrap().as_ptr(),
        query.as_ptr(),
        "same buffer, no copy"
    );
    insta::assert_snapshot!(h.trace);
}

#[test]
fn commands_passed_on_are_counted_for_the_backend_counter() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    assert_eq!(h.session.commands_forwarded(), 0, "the login is no command");
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert_eq!(h.session.commands_forwarded(), 0);
    h.feed(Input::ClientData(frame(0, |b| {
        b.extend_from_slice(b"\x03SELECT 1")
    })));
    assert_eq!(h.session.commands_forwarded(), 1);
    h.feed(Input::BackendData(B0, backend_ok(1)));
    h.feed(Input::ClientData(frame(0, |b| {
        b.extend_from_slice(b"\x0e")
    })));
    assert_eq!(h.session.commands_forwarded(), 2, "{}", h.trace);
}

#[test]
fn a_wrong_password_is_refused_by_ferry_with_mysqls_wording() {
    let mut h = Harness::new();
    h.client_logs_in("root", "nope");
    assert!(matches!(h.closed, Some(CloseReason::LoginRefused(_))));
    insta::assert_snapshot!(h.trace);
}

#[test]
fn an_unknown_user_gets_the_same_1045() {
    // With `unverified_logins: Refuse`; by default the backend decides (tests/users_login.rs).
    let config = SessionConfig {
        logins: ferry_core::login::LoginPolicy {
            user_source: false,
            unverified: ferry_core::config::UnverifiedLogins::Refuse,
        },
        ..test_config()
    };
    let mut h = Harness::with(config, TraceStyle::Login);
    h.client_logs_in("nobody", "111");
    assert!(h.trace.contains(
        "ERR 1045 (28000) Access denied for user 'nobody'@'127.0.0.1' (using password: YES)"
    ));
}

#[test]
fn a_client_asking_for_another_plugin_is_switched_to_native_password() {
    let mut h = Harness::new();
    let salt = h.client_salt();
    let mut first =
        BytesMut::from(&client_response("root", "111", &salt, "caching_sha2_password")[..]);
    // Whatever the client put in auth data for its plugin is ignored.
    first[4 + 40] ^= 0xFF;
    h.feed(Input::ClientData(first.freeze()));
    let reply = frame(3, |b| b.extend_from_slice(&scramble_native(&salt, b"111")));
    h.feed(Input::ClientData(reply));
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_backend_auth_switch_is_answered_with_the_recovered_secret() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    let new_salt = b"another-salt-0123456";
    let switch = frame(2, |b| {
        AuthSwitchRequest {
            plugin: "mysql_native_password".into(),
            data: new_salt.to_vec(),
        }
        .write(b)
    });
    h.feed(Input::BackendData(B0, switch));
    assert_eq!(
        &h.to_backend.last().unwrap()[4..],
        &scramble_native(new_salt, b"111")[..]
    );
    h.backend_accepts(4);
    assert!(h.session.is_forwarding());
    insta::assert_snapshot!(h.trace);
}

#[test]
fn the_backends_err_reaches_the_client_unchanged_with_the_clients_sequence() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    let err = ErrPacket::new(
        1044,
        "42000",
        "Access denied for user 'root'@'%' to database 'test'",
    );
    h.feed(Input::BackendData(B0, frame(2, |b| err.write(b))));
    let last = h.to_client.last().unwrap();
    assert_eq!(last[3], 2, "sequence id continues the client's exchange");
    assert_eq!(ErrPacket::parse(&last[4..]).unwrap(), err);
    insta::assert_snapshot!(h.trace);
}

#[test]
fn no_matching_backend_is_a_clear_error_naming_tenant_and_labels() {
    let mut h = Harness::new();
    h.client_logs_in("acc1:app?region=us", "secret");
    let mut labels = Labels::new();
    labels.insert("region", "us");
    h.feed(Input::RouteFailed(NoBackend {
        tenant: Some("acc1".into()),
        labels,
    }));
    insta::assert_snapshot!(h.trace);
}

#[test]
fn tls_requests_are_refused_until_tls_is_supported() {
    let mut h = Harness::new();
    let mut ssl = BytesMut::new();
    ssl.extend_from_slice(&(CLIENT_PROTOCOL_41 | CLIENT_SSL).to_le_bytes());
    ssl.extend_from_slice(&[0; 28]);
    h.feed(Input::ClientData(frame(1, |b| b.extend_from_slice(&ssl))));
    assert!(h.trace.contains("ERR 1235 (42000)"));
    assert!(h.closed.is_some());
}

#[test]
fn a_client_that_never_answers_is_closed_at_the_login_timeout() {
    let mut h = Harness::new();
    assert_eq!(
        h.session.poll_timeout(),
        Some(Timestamp::ZERO + Duration::from_secs(10))
    );
    h.advance(Duration::from_secs(9));
    assert_eq!(h.closed, None);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.closed, Some(CloseReason::LoginTimeout));
}

#[test]
fn a_silent_backend_fails_the_login_at_the_backend_timeout() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    route_to(&mut h, "cn1");
    h.advance(Duration::from_secs(5));
    // ferry tries another backend first; with none left the client hears about the first.
    assert!(h.closed.is_none(), "{}", h.trace);
    h.feed(Input::Transferred(Err("no other backend".into())));
    assert!(h.closed.is_some(), "{}", h.trace);
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_refused_backend_connect_is_retried_on_another_backend() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    route_to(&mut h, "cn1");
    h.feed(Input::BackendConnectFailed(B0, "connection refused".into()));
    h.feed(Input::Transferred(Ok(Route {
        backend: BackendId("cn2".into()),
        addr: "127.0.0.1:3308".parse().unwrap(),
        group: LabelGroup::default(),
        tls: false,
    })));
    let b1 = BackendHandle(1);
    h.feed(Input::BackendConnected(b1));
    h.feed(Input::BackendData(b1, backend_handshake()));
    h.feed(Input::BackendData(b1, backend_ok(2)));
    h.feed(Input::BackendData(b1, backend_tracker_setup()));
    assert!(h.session.is_forwarding(), "{}", h.trace);
    assert_eq!(h.session.backend(), Some(b1));
    insta::assert_snapshot!(h.trace);
}

#[test]
fn garbage_instead_of_a_login_gets_an_error_and_a_close() {
    let mut h = Harness::new();
    h.feed(Input::ClientData(Bytes::from_static(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )));
    assert!(h.closed.is_some(), "closed: {}", h.trace);
    insta::assert_snapshot!(h.trace);
}

#[test]
fn a_login_split_into_single_bytes_still_works() {
    let mut h = Harness::new();
    let salt = h.client_salt();
    let response = client_response("root", "111", &salt, "mysql_native_password");
    for i in 0..response.len() {
        h.session
            .handle(h.now, Input::ClientData(response.slice(i..i + 1)));
        h.drain();
    }
    assert!(
        h.trace
            .contains("route            tenant=None labels={zone=a}"),
        "{}",
        h.trace
    );
}

#[test]
fn a_backend_that_refuses_session_tracking_still_serves_but_its_sessions_cannot_move() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    h.feed(Input::BackendData(B0, backend_ok(2)));
    let err = ErrPacket::new(
        1193,
        "HY000",
        "Unknown system variable 'session_track_system_variables'",
    );
    // Neither the settings query nor the set-up is known to this server.
    let mut payload = BytesMut::new();
    err.write(&mut payload);
    let mut both = BytesMut::new();
    write_packet(&mut both, 1, &payload);
    write_packet(&mut both, 1, &payload);
    h.feed(Input::BackendData(B0, both.freeze()));
    assert!(h.session.is_forwarding(), "{}", h.trace);
    let status = h.session.status().unwrap();
    assert!(!status.safe);
    assert!(
        status.blocked_by[0].contains("refused session tracking"),
        "{status:?}"
    );
}
