//! Packet parsers and writers, checked against known bytes and against
//! `mysql_common` as an independent implementation.

use bytes::BytesMut;
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::status::*;
use ferry_core::packets::{
    is_ssl_request, AuthMoreData, AuthSwitchRequest, EofPacket, ErrPacket, Handshake,
    HandshakeResponse, OkPacket,
};
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::proto::{MyDeserialize, MySerialize};
use quickcheck::{Arbitrary, Gen};
use quickcheck_macros::quickcheck;

fn written(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

/// A handshake captured from MariaDB 10.11 (salt and thread id vary per connection).
const MARIADB_HANDSHAKE: &[u8] = b"\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x2a\x00\x00\x00\
ABCDEFGH\x00\xfe\xf7\x2d\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00\
IJKLMNOPQRST\x00mysql_native_password\x00";

#[test]
fn parses_a_real_mariadb_handshake() {
    let h = Handshake::parse(MARIADB_HANDSHAKE).unwrap();
    assert_eq!(h.server_version, "5.5.5-10.11.6-MariaDB-0+deb12u1");
    assert_eq!(h.connection_id, 42);
    assert_eq!(h.auth_data, b"ABCDEFGHIJKLMNOPQRST");
    assert_eq!(
        h.capabilities & CLIENT_MYSQL,
        0,
        "MariaDB clears CLIENT_MYSQL"
    );
    assert_eq!(h.mariadb_capabilities, 0x1d);
    assert_eq!(h.collation, 45);
    assert_eq!(h.status, SERVER_STATUS_AUTOCOMMIT);
    assert_eq!(h.auth_plugin.as_deref(), Some("mysql_native_password"));
    assert_eq!(
        written(|b| h.write(b)),
        MARIADB_HANDSHAKE,
        "writes back byte for byte"
    );
}

#[test]
fn our_handshake_reads_the_same_in_mysql_common() {
    let h = Handshake::parse(MARIADB_HANDSHAKE).unwrap();
    let bytes = written(|b| h.write(b));
    let theirs =
        mysql_common::packets::HandshakePacket::deserialize((), &mut ParseBuf(&bytes)).unwrap();
    assert_eq!(theirs.server_version_str(), h.server_version);
    assert_eq!(theirs.connection_id(), h.connection_id);
    assert_eq!(theirs.nonce(), h.auth_data);
    assert_eq!(theirs.capabilities().bits(), h.capabilities);
    assert_eq!(
        theirs.auth_plugin_name_str().as_deref(),
        Some("mysql_native_password")
    );
}

fn their_response(caps: u32, db: Option<&str>, attrs: &[(&str, &str)]) -> Vec<u8> {
    let attrs = (!attrs.is_empty()).then(|| {
        attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    let resp = mysql_common::packets::HandshakeResponse::new(
        Some(&[9u8; 20][..]),
        (10, 11, 6),
        Some(&b"acc1:app?region=eu"[..]),
        db.map(str::as_bytes),
        Some(mysql_common::packets::AuthPlugin::MysqlNativePassword),
        CapabilityFlags::from_bits_retain(caps),
        attrs,
        16 << 20,
    );
    let mut out = Vec::new();
    resp.serialize(&mut out);
    out
}

#[test]
fn parses_mysql_common_handshake_responses() {
    let caps = CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH
        | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CLIENT_CONNECT_WITH_DB
        | CLIENT_CONNECT_ATTRS;
    let bytes = their_response(caps, Some("test"), &[("_client_name", "x"), ("zone", "a")]);
    let r = HandshakeResponse::parse(&bytes).unwrap();
    assert_eq!(r.user, "acc1:app?region=eu");
    assert_eq!(r.auth_response, vec![9u8; 20]);
    assert_eq!(r.database.as_deref(), Some("test"));
    assert_eq!(r.auth_plugin.as_deref(), Some("mysql_native_password"));
    let mut attrs = r.attributes.clone();
    attrs.sort();
    assert_eq!(
        attrs,
        vec![
            ("_client_name".into(), "x".into()),
            ("zone".into(), "a".into())
        ]
    );
    // And what we write, mysql_common reads back the same.
    let ours = written(|b| r.write(b));
    let theirs =
        mysql_common::packets::HandshakeResponse::deserialize((), &mut ParseBuf(&ours)).unwrap();
    assert_eq!(theirs.user(), r.user.as_bytes());
    assert_eq!(theirs.scramble_buf(), &r.auth_response[..]);
    assert_eq!(theirs.db_name(), Some(&b"test"[..]));
    assert_eq!(theirs.connect_attributes().unwrap().len(), 2);
}

#[test]
fn parses_responses_without_lenenc_auth_data_or_database() {
    let caps = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
    let r = HandshakeResponse::parse(&their_response(caps, None, &[])).unwrap();
    assert_eq!(r.auth_response.len(), 20);
    assert_eq!(r.database, None);
}

#[test]
fn recognises_an_ssl_request() {
    let mut b = BytesMut::new();
    b.extend_from_slice(&(CLIENT_PROTOCOL_41 | CLIENT_SSL).to_le_bytes());
    b.extend_from_slice(&[0; 28]);
    assert!(is_ssl_request(&b));
    let caps = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION;
    assert!(!is_ssl_request(&their_response(caps, None, &[])));
}

/// An OK payload as mysql_common reads it.
fn their_ok(bytes: &[u8], caps: u32) -> mysql_common::packets::OkPacket<'_> {
    mysql_common::packets::OkPacketDeserializer::<mysql_common::packets::CommonOkPacket>::deserialize(
        CapabilityFlags::from_bits_retain(caps),
        &mut ParseBuf(bytes),
    )
    .unwrap()
    .into_inner()
}

#[test]
fn ok_packets_match_mysql_common() {
    let caps = CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK;
    let ok = OkPacket {
        header: 0,
        affected_rows: 3,
        last_insert_id: 70000,
        status: SERVER_STATUS_AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED,
        warnings: 1,
        info: b"Rows matched".to_vec(),
        session_state: Some(b"\x01\x05\x04test".to_vec()),
    };
    let bytes = written(|b| ok.write(b, caps));
    let theirs = their_ok(&bytes, caps);
    assert_eq!(theirs.affected_rows(), 3);
    assert_eq!(theirs.last_insert_id(), Some(70000));
    assert_eq!(theirs.warnings(), 1);
    assert_eq!(theirs.info_ref(), Some(&b"Rows matched"[..]));
    assert_eq!(
        theirs.session_state_info_ref(),
        Some(&b"\x01\x05\x04test"[..])
    );
    assert_eq!(OkPacket::parse(&bytes, caps).unwrap(), ok);
}

#[test]
fn ok_packets_lose_session_state_for_clients_without_session_track() {
    let ok = OkPacket {
        status: SERVER_STATUS_AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED,
        session_state: Some(b"\x00\x01\x00".to_vec()),
        ..OkPacket::default()
    };
    let bytes = written(|b| ok.write(b, CLIENT_PROTOCOL_41));
    assert_eq!(bytes, b"\x00\x00\x00\x02\x00\x00\x00");
    let back = OkPacket::parse(&bytes, CLIENT_PROTOCOL_41).unwrap();
    assert_eq!(back.status, SERVER_STATUS_AUTOCOMMIT);
    assert_eq!(back.session_state, None);
}

#[test]
fn err_packets_match_mysql_common() {
    let err = ErrPacket::new(
        1045,
        "28000",
        "Access denied for user 'root'@'127.0.0.1' (using password: YES)",
    );
    let bytes = written(|b| err.write(b));
    let theirs = mysql_common::packets::ErrPacket::deserialize(
        CapabilityFlags::CLIENT_PROTOCOL_41,
        &mut ParseBuf(&bytes),
    )
    .unwrap();
    match theirs {
        mysql_common::packets::ErrPacket::Error(e) => {
            assert_eq!(e.error_code(), 1045);
            assert_eq!(e.sql_state_ref().unwrap().as_str(), "28000");
            assert_eq!(e.message_str(), err.message);
        }
        other => panic!("not an error: {other:?}"),
    }
    assert_eq!(ErrPacket::parse(&bytes).unwrap(), err);
}

#[test]
fn eof_packets_round_trip() {
    let eof = EofPacket {
        warnings: 2,
        status: SERVER_MORE_RESULTS_EXISTS | SERVER_STATUS_IN_TRANS,
    };
    let bytes = written(|b| eof.write(b));
    assert_eq!(bytes, b"\xfe\x02\x00\x09\x00");
    assert!(EofPacket::matches(&bytes));
    assert_eq!(EofPacket::parse(&bytes).unwrap(), eof);
    let flags = StatusFlags::from_bits_truncate(eof.status);
    assert!(flags.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS));
}

#[test]
fn auth_switch_and_more_data_round_trip() {
    let s = AuthSwitchRequest {
        plugin: "mysql_native_password".into(),
        data: b"01234567890123456789".to_vec(),
    };
    let bytes = written(|b| s.write(b));
    assert_eq!(
        bytes.last(),
        Some(&0),
        "the salt is NUL-terminated on the wire"
    );
    assert_eq!(AuthSwitchRequest::parse(&bytes).unwrap(), s);
    let m = AuthMoreData { data: vec![3] };
    assert_eq!(AuthMoreData::parse(&written(|b| m.write(b))).unwrap(), m);
}

#[derive(Clone, Debug)]
struct AnyResponse(HandshakeResponse);

impl Arbitrary for AnyResponse {
    fn arbitrary(g: &mut Gen) -> Self {
        let optional = [
            CLIENT_CONNECT_WITH_DB,
            CLIENT_PLUGIN_AUTH,
            CLIENT_CONNECT_ATTRS,
            CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
            CLIENT_SESSION_TRACK,
            CLIENT_DEPRECATE_EOF,
        ];
        let mut caps = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION;
        for c in optional {
            if bool::arbitrary(g) {
                caps |= c;
            }
        }
        let text = |g: &mut Gen| -> String {
            String::arbitrary(g)
                .chars()
                .filter(|c| *c != '\0')
                .take(40)
                .collect()
        };
        let n = usize::arbitrary(g) % 4;
        AnyResponse(HandshakeResponse {
            capabilities: caps,
            mariadb_capabilities: u32::arbitrary(g),
            max_packet_size: u32::arbitrary(g),
            collation: u8::arbitrary(g),
            user: text(g),
            auth_response: (0..usize::arbitrary(g) % 40)
                .map(|_| u8::arbitrary(g))
                .collect(),
            database: (caps & CLIENT_CONNECT_WITH_DB != 0).then(|| text(g)),
            auth_plugin: (caps & CLIENT_PLUGIN_AUTH != 0).then(|| text(g)),
            attributes: if caps & CLIENT_CONNECT_ATTRS != 0 {
                (0..n).map(|_| (text(g), text(g))).collect()
            } else {
                Vec::new()
            },
        })
    }
}

#[quickcheck]
fn handshake_responses_round_trip(r: AnyResponse) -> bool {
    let bytes = written(|b| r.0.write(b));
    let mut back = HandshakeResponse::parse(&bytes).unwrap();
    // An empty trailing database/plugin is indistinguishable from "present but empty".
    if r.0.database.is_some() && back.database.is_none() {
        back.database = Some(String::new());
    }
    // An empty plugin name names no plugin: it reads back as none.
    if r.0.auth_plugin.as_deref() == Some("") && back.auth_plugin.is_none() {
        back.auth_plugin = Some(String::new());
    }
    back == r.0
}

#[quickcheck]
fn parsers_never_panic_on_arbitrary_bytes(data: Vec<u8>, caps: u32) -> bool {
    let _ = Handshake::parse(&data);
    let _ = HandshakeResponse::parse(&data);
    let _ = OkPacket::parse(&data, caps);
    let _ = ErrPacket::parse(&data);
    let _ = EofPacket::parse(&data);
    let _ = AuthSwitchRequest::parse(&data);
    let _ = AuthMoreData::parse(&data);
    let _ = is_ssl_request(&data);
    true
}

#[test]
fn session_state_blocks_round_trip_and_match_mysql_common() {
    use ferry_core::packets::session_state::{parse, write_all};
    use ferry_core::packets::TrackItem;
    let entries = vec![
        TrackItem::SystemVariable {
            name: b"autocommit".to_vec(),
            value: b"OFF".to_vec(),
        },
        TrackItem::Schema(b"test".to_vec()),
        TrackItem::StateChange(true),
        TrackItem::TransactionState(b"T_______".to_vec()),
    ];
    let block = written(|b| write_all(&entries, b));
    assert_eq!(parse(&block).unwrap(), entries);

    let caps = CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK;
    let ok = OkPacket {
        status: SERVER_SESSION_STATE_CHANGED,
        session_state: Some(block),
        ..OkPacket::default()
    };
    let bytes = written(|b| ok.write(b, caps));
    let theirs = their_ok(&bytes, caps);
    let infos = theirs.session_state_info().unwrap();
    let kinds: Vec<u8> = infos.iter().map(|i| i.data_type() as u8).collect();
    assert_eq!(kinds, vec![0, 1, 2, 5]);
}

#[quickcheck]
fn session_state_parser_never_panics(data: Vec<u8>) -> bool {
    let _ = ferry_core::packets::session_state::parse(&data);
    true
}
