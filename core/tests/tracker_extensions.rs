//! MariaDB's extended protocol through a whole session: offered only where the
//! backends offer it, bulk execute followed and its parameter types re-sent
//! after a move, and a session using an extension never moved to a backend
//! without it.

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_core::cluster::BackendId;
use ferry_core::migrate::{MoveFailure, MoveReport, MoveRequest, Trigger};
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::command::*;
use ferry_core::packets::{Handshake, OkPacket};
use ferry_core::session::{BackendHandle, Control, Input, Output, SessionEvent};
use ferry_core::tracker::STMT_BULK_FLAG_CLIENT_SEND_TYPES;
use ferry_core::wire::{write_packet, PacketDecoder};
use support::*;

const B1: BackendHandle = BackendHandle(1);
const EXTENSIONS: u32 = MARIADB_CLIENT_STMT_BULK_OPERATIONS | MARIADB_CLIENT_EXTENDED_TYPE_INFO;
const LONGLONG: u16 = 0x08;
const VAR_STRING: u16 = 0xfd;

/// A session whose client asked for bulk execute and extended type info, on cn1 (b0, which offers both).
fn logged_in_with_extensions() -> Harness {
    let mut h = Harness::with_mariadb(test_config(), TraceStyle::Handles, 0x1d);
    let salt = h.client_salt();
    h.feed(Input::ClientData(client_response_mariadb(
        "root",
        "111",
        &salt,
        "mysql_native_password",
        EXTENSIONS | MARIADB_CLIENT_CACHE_METADATA,
    )));
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
    h
}

fn command(payload: &[u8]) -> Bytes {
    frame(0, |b| b.extend_from_slice(payload))
}

fn ok(seq: u8) -> Bytes {
    frame(seq, |b| OkPacket::default().write(b, CLIENT_PROTOCOL_41))
}

fn prepared(id: u32, params: u16) -> Bytes {
    let mut p = BytesMut::new();
    p.put_u8(0);
    p.put_u32_le(id);
    p.put_u16_le(0);
    p.put_u16_le(params);
    p.put_u8(0);
    p.put_u16_le(0);
    let mut out = BytesMut::new();
    let mut seq = write_packet(&mut out, 1, &p);
    for _ in 0..params {
        seq = write_packet(
            &mut out,
            seq,
            b"\x03def\x00\x00\x00\x01?\x00\x0c\x3f\x00\x00\x00\x00\x00\xfd\x80\x00\x00\x00\x00",
        );
    }
    out.freeze()
}

/// `COM_STMT_BULK_EXECUTE` of two rows (a LONGLONG and a string each), with or without the types.
fn bulk(id: u32, types: bool) -> Bytes {
    let mut p = vec![COM_STMT_BULK_EXECUTE];
    p.extend_from_slice(&id.to_le_bytes());
    let flags = if types {
        STMT_BULK_FLAG_CLIENT_SEND_TYPES
    } else {
        0
    };
    p.extend_from_slice(&flags.to_le_bytes());
    if types {
        for t in [LONGLONG, VAR_STRING] {
            p.extend_from_slice(&t.to_le_bytes());
        }
    }
    for row in [1u64, 2] {
        p.push(0);
        p.extend_from_slice(&row.to_le_bytes());
        p.push(0);
        p.extend_from_slice(b"\x01v");
    }
    command(&p)
}

fn written(h: &Harness, to: BackendHandle, mark: usize) -> Bytes {
    h.outputs[mark..]
        .iter()
        .filter_map(|o| match o {
            Output::ToBackend(b, bytes) if *b == to => Some(bytes.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat()
        .into()
}

fn moves(h: &Harness, mark: usize) -> Vec<MoveReport> {
    h.outputs[mark..]
        .iter()
        .filter_map(|o| match o {
            Output::Event(SessionEvent::Moved(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// Asks for a move to cn2 and lets its connection b1 greet with `mariadb` and accept the login.
fn move_to_cn2(h: &mut Harness, mariadb: u32) {
    h.feed(Input::Control(Control::Migrate(MoveRequest {
        trigger: Trigger::Admin,
        to: Some(BackendId("cn2".into())),
    })));
    h.feed(Input::Transferred(Ok(route("cn2"))));
    h.feed(Input::BackendConnected(B1));
    h.feed(Input::BackendData(
        B1,
        backend_handshake_mariadb(602, mariadb),
    ));
    h.feed(Input::BackendData(B1, backend_ok(2)));
    h.feed(Input::BackendData(B1, backend_tracker_setup()));
}

#[test]
fn ferry_offers_the_extensions_it_follows_where_the_backends_offer_them() {
    let offered = |backends: u32| {
        let h = Harness::with_mariadb(test_config(), TraceStyle::Login, backends);
        let mut d = PacketDecoder::new(1 << 20);
        d.extend(&h.to_client[0]);
        Handshake::parse(&d.decode().unwrap().unwrap().payload)
            .unwrap()
            .mariadb_capabilities
    };
    assert_eq!(offered(0x1d), EXTENSIONS);
    assert_eq!(
        offered(MARIADB_CLIENT_EXTENDED_TYPE_INFO),
        MARIADB_CLIENT_EXTENDED_TYPE_INFO
    );
    assert_eq!(offered(0), 0);
}

#[test]
fn the_first_bulk_execute_after_a_move_carries_the_parameter_types() {
    let mut h = logged_in_with_extensions();
    // The backend login asks for what the client has and ferry follows, nothing more.
    h.exchange_ok(command(b"\x16INSERT INTO t VALUES (?, ?)"), prepared(1, 2));
    let mark = h.outputs.len();
    h.feed(Input::ClientData(bulk(1, true)));
    assert_eq!(written(&h, B0, mark), bulk(1, true));
    h.feed(Input::BackendData(B0, ok(1)));
    assert!(h.session.status().unwrap().safe, "{}", h.trace);

    let mark = h.outputs.len();
    move_to_cn2(&mut h, 0x1d);
    h.feed(Input::BackendData(
        B1,
        [ok(1), prepared(7, 2)].concat().into(),
    ));
    let report = moves(&h, mark);
    assert_eq!(report.len(), 1, "{}", h.trace);
    assert_eq!(report[0].outcome, Ok(()), "{}", h.trace);

    // b1 never saw the types: ferry adds them (and says so in the flags).
    let mark = h.outputs.len();
    h.feed(Input::ClientData(bulk(1, false)));
    assert_eq!(written(&h, B1, mark), bulk(7, true), "{}", h.trace);
    h.feed(Input::BackendData(B1, ok(1)));
    let mark = h.outputs.len();
    h.feed(Input::ClientData(bulk(1, false)));
    assert_eq!(written(&h, B1, mark), bulk(7, false));
}

#[test]
fn a_session_using_the_extensions_does_not_move_to_a_backend_without_them() {
    let mut h = logged_in_with_extensions();
    let mark = h.outputs.len();
    move_to_cn2(&mut h, MARIADB_CLIENT_PROGRESS);
    let report = moves(&h, mark);
    assert_eq!(report.len(), 1, "{}", h.trace);
    match &report[0].outcome {
        Err((MoveFailure::Target, why)) => assert!(why.contains("MariaDB extensions"), "{why}"),
        other => panic!("{other:?}\n{}", h.trace),
    }
    assert_eq!(h.session.backend(), Some(B0));
}

trait Exchange {
    fn exchange_ok(&mut self, cmd: Bytes, reply: Bytes);
}

impl Exchange for Harness {
    /// The client sends `cmd`, it reaches b0 as it is, and b0 answers `reply`.
    fn exchange_ok(&mut self, cmd: Bytes, reply: Bytes) {
        let mark = self.outputs.len();
        self.feed(Input::ClientData(cmd.clone()));
        assert_eq!(written(self, B0, mark), cmd, "{}", self.trace);
        self.feed(Input::BackendData(B0, reply));
    }
}
