//! The SSLRequest step of a login, on both sides: a client asking ferry for
//! TLS (offered, required, not configured), and ferry asking a backend.

mod support;

use bytes::{Bytes, BytesMut};
use ferry_core::cluster::Route;
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::status::SERVER_STATUS_AUTOCOMMIT;
use ferry_core::packets::{is_ssl_request, Handshake, HandshakeResponse};
use ferry_core::session::{CloseReason, Input, Output};
use ferry_core::wire::PacketDecoder;
use support::*;

/// A client's SSLRequest (sequence id 1): the fixed head of a response with CLIENT_SSL.
fn ssl_request() -> Bytes {
    frame(1, |b| {
        b.extend_from_slice(&(FERRY_SUPPORTED | CLIENT_SSL).to_le_bytes());
        b.extend_from_slice(&(1u32 << 24).to_le_bytes());
        b.extend_from_slice(&[45]);
        b.extend_from_slice(&[0; 23]);
    })
}

/// The client's handshake response as it comes over TLS: sequence id 2.
fn response_over_tls(h: &Harness, user: &str, password: &str) -> Bytes {
    let plain = client_response(user, password, &h.client_salt(), "mysql_native_password");
    let mut payload = BytesMut::from(&plain[4..]);
    let caps = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) | CLIENT_SSL;
    payload[..4].copy_from_slice(&caps.to_le_bytes());
    frame(2, |b| b.extend_from_slice(&payload))
}

fn greeting_caps(h: &Harness) -> u32 {
    let mut d = PacketDecoder::new(1 << 20);
    d.extend(&h.to_client[0]);
    Handshake::parse(&d.decode().unwrap().unwrap().payload)
        .unwrap()
        .capabilities
}

fn harness(tls: TlsOffer) -> Harness {
    Harness::with_tls(test_config(), TraceStyle::Login, tls)
}

fn packets(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut d = PacketDecoder::new(1 << 20);
    d.extend(bytes);
    let mut out = Vec::new();
    while let Some(p) = d.decode().unwrap() {
        out.push((p.seq, p.payload.to_vec()));
    }
    out
}

#[test]
fn without_tls_configured_ssl_is_not_offered_and_a_request_gets_1235() {
    let mut h = harness(TlsOffer::Off);
    assert_eq!(greeting_caps(&h) & CLIENT_SSL, 0);
    h.feed(Input::ClientData(ssl_request()));
    assert!(h.trace.contains("ERR 1235 (42000)"), "{}", h.trace);
    assert!(matches!(h.closed, Some(CloseReason::LoginRefused(_))));
}

#[test]
fn an_ssl_request_upgrades_and_the_response_over_tls_logs_in() {
    let mut h = harness(TlsOffer::Optional);
    assert_ne!(greeting_caps(&h) & CLIENT_SSL, 0, "ferry offers TLS");
    // The ClientHello often shares the read with the SSLRequest: it must reach the TLS layer.
    let hello = b"\x16\x03\x01\x00\x05hello";
    let mut first = BytesMut::from(&ssl_request()[..]);
    first.extend_from_slice(hello);
    h.feed(Input::ClientData(first.freeze()));
    let early = h.outputs.iter().find_map(|o| match o {
        Output::StartTls(early) => Some(early.clone()),
        _ => None,
    });
    assert_eq!(early.as_deref(), Some(&hello[..]), "{}", h.trace);
    assert!(h.closed.is_none());

    let response = response_over_tls(&h, "root", "111");
    h.feed(Input::ClientData(response));
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
    // The client's OK follows its second packet: sequence id 3.
    let ok = h.to_client.last().unwrap();
    assert_eq!((ok[3], ok[4]), (3, 0x00), "{}", h.trace);
    // ferry's TLS with the client is not the backend's business.
    let sent = &packets(&h.to_backend[0])[0];
    assert_eq!(sent.0, 1);
    let sent = HandshakeResponse::parse(&sent.1).unwrap();
    assert_eq!(sent.capabilities & CLIENT_SSL, 0);
}

#[test]
fn over_tls_the_response_must_have_sequence_id_2() {
    let mut h = harness(TlsOffer::Optional);
    h.feed(Input::ClientData(ssl_request()));
    h.client_logs_in("root", "111");
    assert!(h.trace.contains("ERR 1835"), "{}", h.trace);
    assert!(matches!(
        h.closed,
        Some(CloseReason::ProtocolError(_)) | Some(CloseReason::LoginRefused(_))
    ));
}

#[test]
fn a_second_ssl_request_over_tls_is_refused() {
    let mut h = harness(TlsOffer::Optional);
    h.feed(Input::ClientData(ssl_request()));
    let again = frame(2, |b| b.extend_from_slice(&ssl_request()[4..]));
    h.feed(Input::ClientData(again));
    assert!(h.trace.contains("ERR 1835"), "{}", h.trace);
    assert!(h.closed.is_some());
}

#[test]
fn optional_tls_still_lets_plain_clients_in() {
    let mut h = harness(TlsOffer::Optional);
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
}

#[test]
fn required_tls_refuses_a_plain_client_with_1045_and_says_why() {
    let mut h = harness(TlsOffer::Required);
    assert_ne!(greeting_caps(&h) & CLIENT_SSL, 0);
    h.client_logs_in("root", "111");
    assert!(
        h.trace.contains(
            "ERR 1045 (28000) Access denied for user 'root'@'127.0.0.1' (using password: YES)"
        ),
        "{}",
        h.trace
    );
    match &h.closed {
        Some(CloseReason::LoginRefused(why)) => assert!(why.contains("without TLS"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(!h.outputs.iter().any(|o| matches!(o, Output::Route(_))));
}

#[test]
fn required_tls_lets_a_tls_client_in() {
    let mut h = harness(TlsOffer::Required);
    h.feed(Input::ClientData(ssl_request()));
    let response = response_over_tls(&h, "root", "111");
    h.feed(Input::ClientData(response));
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
}

fn tls_route(id: &str) -> Route {
    Route {
        tls: true,
        ..route(id)
    }
}

fn backend_handshake_caps(caps: u32) -> Bytes {
    let hs = Handshake {
        server_version: "5.5.5-10.11.6-MariaDB".into(),
        connection_id: 501,
        auth_data: BACKEND_SALT.to_vec(),
        capabilities: caps,
        mariadb_capabilities: 0x1d,
        collation: 45,
        status: SERVER_STATUS_AUTOCOMMIT,
        auth_plugin: Some("mysql_native_password".into()),
    };
    frame(0, |b| hs.write(b))
}

#[test]
fn a_tls_backend_gets_an_ssl_request_then_the_response_over_tls() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.feed(Input::Routed(tls_route("cn1")));
    h.feed(Input::BackendConnected(B0));
    let before = h.outputs.len();
    h.feed(Input::BackendData(
        B0,
        backend_handshake_caps(BACKEND_CAPS | CLIENT_SSL),
    ));
    let steps: Vec<&Output> = h.outputs[before..].iter().collect();
    let [Output::ToBackend(_, request), Output::BackendTls(t), Output::ToBackend(_, response)] =
        steps[..]
    else {
        panic!("{steps:?}\n{}", h.trace);
    };
    assert_eq!(*t, B0);
    let request = packets(request);
    assert_eq!(request.len(), 1);
    assert_eq!(request[0].0, 1);
    assert!(is_ssl_request(&request[0].1));
    let response = packets(response);
    assert_eq!(response[0].0, 2, "the response follows the SSLRequest");
    let parsed = HandshakeResponse::parse(&response[0].1).unwrap();
    assert_ne!(parsed.capabilities & CLIENT_SSL, 0);
    assert_eq!(
        &response[0].1[..32],
        &request[0].1[..],
        "same capabilities in both"
    );
    // The backend answers the response (seq 2) with its OK (seq 3).
    h.backend_accepts(3);
    assert!(h.session.is_forwarding(), "{}", h.trace);
}

#[test]
fn a_tls_backend_that_offers_no_tls_fails_the_login_clearly() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.feed(Input::Routed(tls_route("cn1")));
    h.feed(Input::BackendConnected(B0));
    h.feed(Input::BackendData(
        B0,
        backend_handshake_caps(BACKEND_CAPS & !CLIENT_SSL),
    ));
    assert!(
        h.trace.contains("backend cn1 is unavailable: TLS is configured for this backend, but it does not offer TLS"),
        "{}",
        h.trace
    );
    assert!(!h.outputs.iter().any(|o| matches!(o, Output::BackendTls(_))));
}

#[test]
fn a_failed_backend_tls_handshake_names_the_backend_and_tls() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.feed(Input::Routed(tls_route("cn1")));
    h.feed(Input::BackendConnected(B0));
    h.feed(Input::BackendData(
        B0,
        backend_handshake_caps(BACKEND_CAPS | CLIENT_SSL),
    ));
    // What the shell feeds when the certificate does not verify; no other backend either.
    h.feed(Input::BackendConnectFailed(
        B0,
        "TLS with backend cn1 failed: invalid peer certificate: UnknownIssuer".into(),
    ));
    h.feed(Input::Transferred(Err("no other backend".into())));
    assert!(
        h.trace.contains(
            "backend cn1 is unavailable: TLS with backend cn1 failed: invalid peer certificate"
        ),
        "{}",
        h.trace
    );
    assert!(matches!(h.closed, Some(CloseReason::LoginRefused(_))));
}

#[test]
fn a_plain_backend_never_gets_client_ssl_even_when_it_offers_it() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    route_to(&mut h, "cn1");
    h.feed(Input::BackendData(
        B0,
        backend_handshake_caps(BACKEND_CAPS | CLIENT_SSL),
    ));
    let sent = &packets(h.to_backend.last().unwrap())[0];
    assert_eq!(sent.0, 1);
    assert_eq!(
        HandshakeResponse::parse(&sent.1).unwrap().capabilities & CLIENT_SSL,
        0
    );
}

#[test]
fn the_tls_settings_parse_in_the_documented_shapes() {
    use ferry_core::config::{BackendTlsConfig, ClientTlsConfig, Config};
    let text = r#"(
        listen: "127.0.0.1:6009",
        admin_listen: "127.0.0.1:6010",
        tls: Some((cert: "server.pem", key: "server.key", required: false)),
        backends: [
            (id: "cn1", addr: "127.0.0.1:3307", tls: Some((ca: "ca.pem", verify: true))),
            (id: "cn2", addr: "127.0.0.1:3308", tls: (verify: false)),
            (id: "cn3", addr: "127.0.0.1:3309"),
        ],
    )"#;
    let config = Config::parse(text).unwrap();
    assert_eq!(
        config.tls,
        Some(ClientTlsConfig {
            cert: "server.pem".into(),
            key: "server.key".into(),
            required: false,
        })
    );
    let tls: Vec<_> = config.backends.iter().map(|b| b.tls.clone()).collect();
    assert_eq!(
        tls,
        [
            Some(BackendTlsConfig {
                ca: Some("ca.pem".into()),
                verify: true
            }),
            Some(BackendTlsConfig {
                ca: None,
                verify: false
            }),
            None,
        ]
    );
    assert_eq!(Config::parse(&config.to_ron()).unwrap(), config);
}

#[test]
fn backend_tls_that_verifies_needs_a_ca() {
    use ferry_core::config::Config;
    let text = r#"(listen: "127.0.0.1:6009", admin_listen: "127.0.0.1:6010",
        backends: [(id: "cn1", addr: "127.0.0.1:3307", tls: Some((verify: true)))])"#;
    let e = Config::parse(text).unwrap_err();
    assert!(e.message.contains("needs ca"), "{e}");
    assert_eq!(e.line, 2, "{e}");
}
