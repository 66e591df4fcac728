//! Specification of the tracker, one response shape at a time:
//! "given these packets, the tracker reports ...".

use bytes::{BufMut, BytesMut};
use ferry_core::packets::codec::{put_lenenc_bytes, put_lenenc_int};
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::command::*;
use ferry_core::packets::flags::status::*;
use ferry_core::packets::{EofPacket, OkPacket};
use ferry_core::tracker::{Command, Event, Outcome, Tracker};
use ferry_core::wire::write_packet;

const BASE: u32 = CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS | CLIENT_MULTI_RESULTS;
const DEPRECATE: u32 = BASE | CLIENT_DEPRECATE_EOF | CLIENT_SESSION_TRACK;

/// Feeds one client packet (sequence 0) and returns the events.
fn client(t: &mut Tracker, payload: &[u8]) -> Vec<Event> {
    let mut out = BytesMut::new();
    write_packet(&mut out, 0, payload);
    t.client_bytes(&out).expect("client packet accepted");
    drain(t)
}

/// Feeds server packets (sequence ids from 1) and returns the events.
fn server(t: &mut Tracker, payloads: &[Vec<u8>]) -> Vec<Event> {
    let mut out = BytesMut::new();
    let mut seq = 1u8;
    for p in payloads {
        seq = write_packet(&mut out, seq, p);
    }
    t.server_bytes(&out).expect("server packets accepted");
    drain(t)
}

fn server_err(t: &mut Tracker, payloads: &[Vec<u8>]) -> String {
    let mut out = BytesMut::new();
    let mut seq = 1u8;
    for p in payloads {
        seq = write_packet(&mut out, seq, p);
    }
    t.server_bytes(&out).expect_err("violation").to_string()
}

fn drain(t: &mut Tracker) -> Vec<Event> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![COM_QUERY];
    p.extend_from_slice(sql.as_bytes());
    p
}

fn ok(status: u16, caps: u32) -> Vec<u8> {
    ok_with(0, status, caps)
}

fn ok_with(last_insert_id: u64, status: u16, caps: u32) -> Vec<u8> {
    let mut out = BytesMut::new();
    OkPacket {
        last_insert_id,
        status,
        ..OkPacket::default()
    }
    .write(&mut out, caps);
    out.to_vec()
}

fn ok_fe(status: u16, caps: u32) -> Vec<u8> {
    let mut out = BytesMut::new();
    OkPacket {
        header: 0xFE,
        status,
        ..OkPacket::default()
    }
    .write(&mut out, caps);
    out.to_vec()
}

fn eof(status: u16) -> Vec<u8> {
    let mut out = BytesMut::new();
    EofPacket {
        warnings: 0,
        status,
    }
    .write(&mut out);
    out.to_vec()
}

fn err() -> Vec<u8> {
    b"\xff\x28\x04#42000You have an error".to_vec()
}

fn count(n: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_lenenc_int(&mut out, n);
    out.to_vec()
}

fn coldef() -> Vec<u8> {
    let mut out = BytesMut::new();
    for s in ["def", "db", "t", "t", "c", "c"] {
        put_lenenc_bytes(&mut out, s.as_bytes());
    }
    out.put_u8(0x0c);
    out.put_slice(&[0x21, 0, 11, 0, 0, 0, 3, 0, 0, 0, 0, 0]);
    out.to_vec()
}

fn text_row(value: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_lenenc_bytes(&mut out, value);
    out.to_vec()
}

fn prepare_ok(id: u32, columns: u16, params: u16) -> Vec<u8> {
    let mut p = vec![0x00];
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&columns.to_le_bytes());
    p.extend_from_slice(&params.to_le_bytes());
    p.extend_from_slice(&[0, 0, 0]);
    p
}

fn stmt_cmd(code: u8, id: u32, extra: &[u8]) -> Vec<u8> {
    let mut p = vec![code];
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(extra);
    p
}

fn done(events: &[Event]) -> Option<Outcome> {
    events.iter().find_map(|e| match e {
        Event::ResponseDone { outcome } => Some(*outcome),
        _ => None,
    })
}

#[test]
fn ok_ends_a_query_and_reports_its_status() {
    let mut t = Tracker::new(BASE);
    let ev = client(&mut t, &query("BEGIN"));
    assert!(
        matches!(&ev[0], Event::Command { command: Command::Query(q), offset: 0 } if q.text == b"BEGIN")
    );
    assert!(!t.is_idle());
    assert!(!t.safe_point());
    let ev = server(&mut t, &[ok(SERVER_STATUS_IN_TRANS, BASE)]);
    assert_eq!(done(&ev), Some(Outcome::Ok));
    assert!(t.is_idle());
    assert!(t.in_transaction());
    assert!(!t.safe_point());
    client(&mut t, &query("COMMIT"));
    server(&mut t, &[ok(SERVER_STATUS_AUTOCOMMIT, BASE)]);
    assert!(!t.in_transaction());
    assert!(t.safe_point());
}

#[test]
fn after_err_the_next_ok_decides_the_transaction_state() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("BEGIN"));
    server(&mut t, &[ok(SERVER_STATUS_IN_TRANS, BASE)]);
    client(&mut t, &query("COMMIT"));
    let ev = server(&mut t, &[err()]);
    assert_eq!(done(&ev), Some(Outcome::Err));
    assert!(t.in_transaction(), "an ERR changes nothing");
    client(&mut t, &query("ROLLBACK"));
    server(&mut t, &[ok(SERVER_STATUS_AUTOCOMMIT, BASE)]);
    assert!(!t.in_transaction());
    assert!(t.safe_point());
}

#[test]
fn read_only_transaction_flag_counts_as_a_transaction() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("START TRANSACTION READ ONLY"));
    server(&mut t, &[ok(SERVER_STATUS_IN_TRANS_READONLY, BASE)]);
    assert!(t.in_transaction());
}

#[test]
fn transaction_state_tracker_opens_a_transaction() {
    let caps = DEPRECATE;
    let mut t = Tracker::new(caps);
    client(&mut t, &query("SELECT 1 FROM t"));
    let mut block = BytesMut::new();
    let mut item = BytesMut::new();
    put_lenenc_bytes(&mut item, b"I_______");
    block.put_u8(5);
    put_lenenc_bytes(&mut block, &item);
    let mut out = BytesMut::new();
    OkPacket {
        status: SERVER_SESSION_STATE_CHANGED,
        session_state: Some(block.to_vec()),
        ..OkPacket::default()
    }
    .write(&mut out, caps);
    server(&mut t, &[out.to_vec()]);
    assert!(t.in_transaction());
}

#[test]
fn text_result_set_without_deprecate_eof() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("SELECT c FROM t"));
    let ev = server(&mut t, &[count(1), coldef(), eof(0)]);
    assert_eq!(done(&ev), None);
    assert!(!t.is_idle());
    // A row that starts with 0xFE would be a huge string; 0x00 is an empty string.
    let ev = server(&mut t, &[text_row(b""), text_row(b"x"), vec![0xfb]]);
    assert_eq!(done(&ev), None);
    let ev = server(&mut t, &[eof(SERVER_STATUS_AUTOCOMMIT)]);
    assert_eq!(done(&ev), Some(Outcome::Ok));
    assert!(t.safe_point());
}

#[test]
fn text_result_set_with_deprecate_eof_ends_with_an_fe_ok() {
    let mut t = Tracker::new(DEPRECATE);
    client(&mut t, &query("SELECT c FROM t"));
    let ev = server(&mut t, &[count(1), coldef(), text_row(b"a")]);
    assert_eq!(done(&ev), None);
    let ev = server(&mut t, &[ok_fe(SERVER_STATUS_IN_TRANS, DEPRECATE)]);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Ok { ok, .. } if ok.header == 0xFE)));
    assert_eq!(done(&ev), Some(Outcome::Ok));
    assert!(t.in_transaction());
}

#[test]
fn an_eof_where_a_column_definition_is_due_is_a_violation() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("SELECT a, b"));
    let e = server_err(&mut t, &[count(2), coldef(), eof(0)]);
    assert!(
        e.contains("EOF before the announced column definitions"),
        "{e}"
    );
    // Once broken, the tracker stays broken and says why.
    assert!(t.server_bytes(b"").is_err());
    assert!(!t.safe_point());
}

#[test]
fn rows_whose_first_byte_looks_like_ok_are_rows() {
    // A text row starting 0x00 (empty string) and a row past seq 255: never an OK.
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("SELECT c FROM big"));
    let mut rows = vec![count(1), coldef(), eof(0)];
    rows.extend((0..600).map(|_| text_row(b"")));
    let ev = server(&mut t, &rows);
    assert_eq!(done(&ev), None);
    assert!(!t.is_idle());
    server(&mut t, &[eof(0)]);
    assert!(t.is_idle());
}

#[test]
fn multi_statement_with_an_error_in_the_middle() {
    let mut t = Tracker::new(DEPRECATE);
    client(&mut t, &query("SELECT 1; BAD; SELECT 2"));
    let ev = server(
        &mut t,
        &[
            count(1),
            coldef(),
            text_row(b"1"),
            ok_fe(SERVER_MORE_RESULTS_EXISTS, DEPRECATE),
        ],
    );
    assert_eq!(done(&ev), None);
    assert!(ev.iter().any(|e| matches!(e, Event::ResultDone { .. })));
    let ev = server(&mut t, &[err()]);
    assert_eq!(done(&ev), Some(Outcome::Err));
    assert!(t.is_idle());
}

#[test]
fn stored_procedure_with_two_result_sets_ends_with_an_ok() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("CALL p()"));
    let more = SERVER_MORE_RESULTS_EXISTS | SERVER_STATUS_AUTOCOMMIT;
    let ev = server(
        &mut t,
        &[
            count(1),
            coldef(),
            eof(more),
            text_row(b"a"),
            eof(more),
            count(1),
            coldef(),
            eof(more),
            eof(more),
        ],
    );
    assert_eq!(done(&ev), None);
    let ev = server(&mut t, &[ok(SERVER_STATUS_AUTOCOMMIT, BASE)]);
    assert_eq!(done(&ev), Some(Outcome::Ok));
    let results = ev
        .iter()
        .filter(|e| matches!(e, Event::ResultDone { .. }))
        .count();
    assert_eq!(results, 1);
}

#[test]
fn local_infile_waits_for_the_empty_packet_then_an_ok_with_any_sequence_id() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t"));
    let mut req = vec![0xFB];
    req.extend_from_slice(b"/tmp/f.csv");
    let ev = server(&mut t, &[req]);
    assert!(matches!(&ev[0], Event::LocalInfile { filename } if filename == b"/tmp/f.csv"));
    // The client's file packets: sequence ids 2, 3, ... then an empty packet.
    let mut data = BytesMut::new();
    write_packet(&mut data, 2, b"1,2\n");
    write_packet(&mut data, 3, b"");
    t.client_bytes(&data).unwrap();
    assert!(!t.is_idle());
    let mut reply = BytesMut::new();
    write_packet(&mut reply, 4, &ok(0, BASE));
    t.server_bytes(&reply).unwrap();
    assert_eq!(done(&drain(&mut t)), Some(Outcome::Ok));
}

#[test]
fn server_packets_during_the_clients_file_are_a_violation() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t"));
    server(&mut t, &[b"\xfbf".to_vec()]);
    let e = server_err(&mut t, &[ok(0, BASE)]);
    assert!(e.contains("client's turn"), "{e}");
}

#[test]
fn prepare_with_and_without_eofs() {
    for caps in [BASE, DEPRECATE] {
        let mut t = Tracker::new(caps);
        client(&mut t, &query_prepare("SELECT ? FROM t WHERE a = ?"));
        let mut packets = vec![prepare_ok(7, 1, 2), coldef(), coldef()];
        if caps & CLIENT_DEPRECATE_EOF == 0 {
            packets.push(eof(0));
        }
        let ev = server(&mut t, &packets);
        assert!(ev.contains(&Event::Prepared {
            id: 7,
            params: 2,
            columns: 1
        }));
        assert_eq!(done(&ev), None, "column definitions still due");
        let mut packets = vec![coldef()];
        if caps & CLIENT_DEPRECATE_EOF == 0 {
            packets.push(eof(0));
        }
        let ev = server(&mut t, &packets);
        assert_eq!(done(&ev), Some(Outcome::Ok));
    }
}

fn query_prepare(sql: &str) -> Vec<u8> {
    let mut p = vec![COM_STMT_PREPARE];
    p.extend_from_slice(sql.as_bytes());
    p
}

fn execute(id: u32, flags: u8, params: u16, types: Option<&[u16]>) -> Vec<u8> {
    let mut p = stmt_cmd(COM_STMT_EXECUTE, id, &[flags, 1, 0, 0, 0]);
    if params > 0 {
        p.extend(std::iter::repeat_n(0u8, (params as usize).div_ceil(8)));
        match types {
            Some(ts) => {
                p.push(1);
                for t in ts {
                    p.extend_from_slice(&t.to_le_bytes());
                }
                p.extend(std::iter::repeat_n(0u8, 8 * params as usize));
            }
            None => p.push(0),
        }
    }
    p
}

fn prepared(t: &mut Tracker, id: u32, params: u16) {
    client(t, &query_prepare("SELECT ?"));
    let mut packets = vec![prepare_ok(id, 0, params)];
    packets.extend((0..params).map(|_| coldef()));
    server(t, &packets);
    assert!(t.is_idle());
}

#[test]
fn execute_reports_the_bound_parameter_types() {
    let mut t = Tracker::new(DEPRECATE);
    prepared(&mut t, 3, 2);
    let ev = client(&mut t, &execute(3, 0, 2, Some(&[8, 0xfe])));
    assert!(matches!(
        &ev[0],
        Event::Command { command: Command::Execute { id: 3, param_types: Some(ts), .. }, .. } if ts == &[8, 0xfe]
    ));
    let ev = server(
        &mut t,
        &[count(1), coldef(), vec![0, 0, 1], ok_fe(0, DEPRECATE)],
    );
    assert_eq!(done(&ev), Some(Outcome::Ok));
    let ev = client(&mut t, &execute(0xFFFF_FFFF, 0, 2, None));
    assert!(matches!(
        &ev[0],
        Event::Command {
            command: Command::Execute {
                id: 3,
                param_types: None,
                ..
            },
            ..
        }
    ));
}

#[test]
fn a_binary_row_not_starting_with_zero_is_a_violation() {
    let mut t = Tracker::new(DEPRECATE);
    prepared(&mut t, 1, 0);
    client(&mut t, &execute(1, 0, 0, None));
    let e = server_err(&mut t, &[count(1), coldef(), vec![0x05, 1]]);
    assert!(e.contains("binary row"), "{e}");
}

#[test]
fn a_cursor_stays_open_until_the_last_row_is_sent() {
    for caps in [BASE, DEPRECATE] {
        let mut t = Tracker::new(caps);
        prepared(&mut t, 5, 0);
        client(&mut t, &execute(5, 1, 0, None));
        let end = |status| {
            if caps & CLIENT_DEPRECATE_EOF != 0 {
                ok_fe(status, caps)
            } else {
                eof(status)
            }
        };
        let ev = server(
            &mut t,
            &[count(1), coldef(), end(SERVER_STATUS_CURSOR_EXISTS)],
        );
        assert_eq!(done(&ev), Some(Outcome::Ok));
        assert_eq!(t.open_cursors().collect::<Vec<_>>(), vec![5]);
        assert!(!t.safe_point());
        client(&mut t, &stmt_cmd(COM_STMT_FETCH, 5, &2u32.to_le_bytes()));
        server(
            &mut t,
            &[vec![0, 0], vec![0, 0], end(SERVER_STATUS_CURSOR_EXISTS)],
        );
        assert!(t.is_idle());
        assert_eq!(t.open_cursors().count(), 1);
        client(&mut t, &stmt_cmd(COM_STMT_FETCH, 5, &2u32.to_le_bytes()));
        server(
            &mut t,
            &[
                vec![0, 0],
                end(SERVER_STATUS_CURSOR_EXISTS | SERVER_STATUS_LAST_ROW_SENT),
            ],
        );
        assert_eq!(t.open_cursors().count(), 0);
        assert!(t.safe_point());
    }
}

#[test]
fn reset_and_close_close_a_cursor() {
    let mut t = Tracker::new(DEPRECATE);
    prepared(&mut t, 5, 0);
    client(&mut t, &execute(5, 1, 0, None));
    server(
        &mut t,
        &[
            count(1),
            coldef(),
            ok_fe(SERVER_STATUS_CURSOR_EXISTS, DEPRECATE),
        ],
    );
    client(&mut t, &stmt_cmd(COM_STMT_RESET, 5, &[]));
    server(&mut t, &[ok(0, DEPRECATE)]);
    assert_eq!(t.open_cursors().count(), 0);
    client(&mut t, &execute(5, 1, 0, None));
    server(
        &mut t,
        &[
            count(1),
            coldef(),
            ok_fe(SERVER_STATUS_CURSOR_EXISTS, DEPRECATE),
        ],
    );
    let ev = client(&mut t, &stmt_cmd(COM_STMT_CLOSE, 5, &[]));
    assert_eq!(done(&ev), Some(Outcome::NoResponse));
    assert!(t.safe_point());
}

#[test]
fn long_data_is_pending_until_execute() {
    let mut t = Tracker::new(DEPRECATE);
    prepared(&mut t, 2, 1);
    let ev = client(
        &mut t,
        &stmt_cmd(COM_STMT_SEND_LONG_DATA, 2, b"\x00\x00blob"),
    );
    assert_eq!(done(&ev), Some(Outcome::NoResponse));
    assert!(t.is_idle());
    assert_eq!(t.long_data_pending().collect::<Vec<_>>(), vec![2]);
    assert!(!t.safe_point());
    client(&mut t, &execute(2, 0, 1, Some(&[0xfc])));
    server(&mut t, &[ok(0, DEPRECATE)]);
    assert!(t.safe_point());
}

#[test]
fn statistics_is_one_bare_string() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &[COM_STATISTICS]);
    let ev = server(&mut t, &[b"Uptime: 5  Threads: 1".to_vec()]);
    assert_eq!(done(&ev), Some(Outcome::Ok));
}

#[test]
fn field_list_is_definitions_then_a_terminator() {
    for caps in [BASE, DEPRECATE] {
        let mut t = Tracker::new(caps);
        client(&mut t, b"\x04t\x00");
        let end = if caps & CLIENT_DEPRECATE_EOF != 0 {
            ok_fe(0, caps)
        } else {
            eof(0)
        };
        let ev = server(&mut t, &[coldef(), coldef()]);
        assert_eq!(done(&ev), None);
        let ev = server(&mut t, &[end]);
        assert_eq!(done(&ev), Some(Outcome::Ok));
    }
}

#[test]
fn change_user_follows_the_auth_exchange_and_forgets_statements() {
    let mut t = Tracker::new(BASE);
    prepared(&mut t, 9, 0);
    client(&mut t, &[COM_CHANGE_USER, b'u', 0]);
    server(&mut t, &[b"\xfemysql_native_password\x00salt\x00".to_vec()]);
    assert!(!t.is_idle());
    // The client answers the switch (its sequence id is not 0).
    let mut reply = BytesMut::new();
    write_packet(&mut reply, 3, &[1; 20]);
    t.client_bytes(&reply).unwrap();
    let ev = server(&mut t, &[ok(0, BASE)]);
    assert_eq!(done(&ev), Some(Outcome::Ok));
    // Statement 9 is gone: its execute has no parameters to parse.
    let ev = client(&mut t, &execute(9, 0, 0, None));
    assert!(matches!(
        &ev[0],
        Event::Command {
            command: Command::Execute { id: 9, .. },
            ..
        }
    ));
}

#[test]
fn simple_commands_answer_ok_or_err() {
    for cmd in [
        vec![COM_PING],
        vec![COM_INIT_DB, b'd'],
        vec![COM_RESET_CONNECTION],
        vec![COM_PROCESS_KILL, 1, 0, 0, 0],
    ] {
        let mut t = Tracker::new(BASE);
        client(&mut t, &cmd);
        assert_eq!(done(&server(&mut t, &[ok(0, BASE)])), Some(Outcome::Ok));
        client(&mut t, &cmd);
        assert_eq!(done(&server(&mut t, &[err()])), Some(Outcome::Err));
    }
}

#[test]
fn set_option_may_be_answered_with_an_eof() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &[COM_SET_OPTION, 0, 0]);
    assert_eq!(done(&server(&mut t, &[eof(0)])), Some(Outcome::Ok));
}

#[test]
fn binlog_dump_is_never_a_safe_point_again() {
    let mut t = Tracker::new(BASE);
    let ev = client(&mut t, &[COM_BINLOG_DUMP, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert!(ev.contains(&Event::Replication));
    server(&mut t, &[vec![0, 1, 2, 3], vec![0xfe, 0, 0, 0, 0]]);
    assert!(t.is_replication());
    assert!(!t.safe_point());
}

#[test]
fn quit_has_no_response_and_nothing_may_follow() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &[COM_QUIT]);
    let mut out = BytesMut::new();
    write_packet(&mut out, 0, &[COM_PING]);
    assert!(t.client_bytes(&out).is_err());
}

#[test]
fn a_command_sent_before_the_previous_response_waits_its_turn() {
    // Pipelining (Connector/J's set-up, batches, MariaDB's PREPARE + direct EXECUTE).
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("SELECT SLEEP(1)"));
    let mut out = BytesMut::new();
    write_packet(&mut out, 0, &query("SET @a = 1"));
    write_packet(&mut out, 0, &[COM_PING]);
    t.client_bytes(&out).unwrap();
    let ev: Vec<Event> = std::iter::from_fn(|| t.poll_event()).collect();
    assert!(ev.is_empty(), "queued commands start only in turn: {ev:?}");
    assert!(!t.is_idle());
    let ev = server(&mut t, &[ok(0, BASE)]);
    let names: Vec<String> = ev
        .iter()
        .map(|e| match e {
            Event::Command { command, .. } => format!("command {:02x}", command.code()),
            Event::ResponseDone { .. } => "done".into(),
            _ => "other".into(),
        })
        .filter(|n| n != "other")
        .collect();
    assert_eq!(names, ["done", "command 03"], "{ev:?}");
    server(&mut t, &[ok(0, BASE)]);
    server(&mut t, &[ok(0, BASE)]);
    assert!(t.is_idle(), "both queued commands answered");
    // A response with nothing asked is still a violation.
    let e = server_err(&mut t, &[ok(0, BASE)]);
    assert!(e.contains("no command is outstanding"), "{e}");
}

#[test]
fn a_server_packet_while_idle_is_a_violation_but_an_err_is_not() {
    let mut t = Tracker::new(BASE);
    server(&mut t, &[err()]);
    let e = server_err(&mut t, &[ok(0, BASE)]);
    assert!(e.contains("no command is outstanding"), "{e}");
}

#[test]
fn ok_events_locate_the_packet_in_the_server_stream() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("SELECT 1"));
    let first = ok(0, BASE);
    let ev = server(&mut t, std::slice::from_ref(&first));
    match &ev[0] {
        Event::Ok { at, .. } => {
            assert_eq!(at.offset, 0);
            assert_eq!(at.len, 4 + first.len() as u64);
            assert_eq!(at.seq, 1);
        }
        other => panic!("{other:?}"),
    }
    client(&mut t, &query("SELECT 2"));
    let ev = server(&mut t, &[ok_with(42, 0, BASE)]);
    assert!(
        matches!(&ev[0], Event::Ok { at, ok, .. } if at.offset == 4 + first.len() as u64 && ok.last_insert_id == 42)
    );
}

#[test]
fn a_partial_ok_is_reported_as_being_collected() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("SELECT 1"));
    let mut out = BytesMut::new();
    write_packet(&mut out, 1, &ok(0, BASE));
    t.server_bytes(&out[..2]).unwrap();
    assert_eq!(t.server_collecting_from(), Some(0));
    t.server_bytes(&out[2..6]).unwrap();
    assert_eq!(t.server_collecting_from(), Some(0));
    t.server_bytes(&out[6..]).unwrap();
    assert_eq!(t.server_collecting_from(), None);
    assert!(t.is_idle());
}

#[test]
fn packets_of_16_mib_and_more_span_continuation_frames() {
    let mut t = Tracker::new(DEPRECATE);
    // A query longer than 16 MiB: only its first 64 KiB are kept.
    let mut sql = b"SELECT '".to_vec();
    sql.resize(0x100_0005, b'x');
    let ev = client(&mut t, &query(std::str::from_utf8(&sql).unwrap()));
    assert!(
        matches!(&ev[0], Event::Command { command: Command::Query(q), .. } if q.truncated && q.text.len() == 64 * 1024)
    );
    // A row of 16 MiB + 1 byte starting 0xFE (an 8-byte length) is a row, not an OK.
    let mut row = vec![0xFE];
    row.extend_from_slice(&(0x100_0000u64).to_le_bytes());
    row.resize(0x100_0001 + 9, b'y');
    let ev = server(&mut t, &[count(1), coldef(), row]);
    assert_eq!(done(&ev), None);
    let ev = server(&mut t, &[ok_fe(0, DEPRECATE)]);
    assert_eq!(done(&ev), Some(Outcome::Ok));
}

#[test]
fn a_replaced_server_starts_its_offsets_again_and_keeps_the_statements() {
    let mut t = Tracker::new(BASE);
    client(&mut t, &query_prepare("SELECT ?"));
    server(&mut t, &[prepare_ok(4, 0, 1), coldef(), eof(0)]);
    assert!(t.is_idle());
    t.server_replaced(DEPRECATE, Default::default());
    assert_eq!(t.server_offset(), 0);
    let ev = client(&mut t, &execute(4, 0, 1, Some(&[3])));
    assert!(
        matches!(&ev[0], Event::Command { command: Command::Execute { param_types: Some(ts), .. }, .. } if ts == &[3])
    );
    // The new capabilities apply: the result ends with an OK (0xFE), no EOF after the definitions.
    let ev = server(
        &mut t,
        &[count(1), coldef(), vec![0, 0, 1], ok_fe(0, DEPRECATE)],
    );
    assert!(matches!(&ev[0], Event::Ok { at, .. } if at.offset > 0));
    assert_eq!(done(&ev), Some(Outcome::Ok));
}

#[test]
fn a_stored_programs_cursor_flag_on_a_text_result_is_an_ordinary_result() {
    // MariaDB 10.11: `BEGIN NOT ATOMIC ... OPEN cur ... SELECT v; END` leaves
    // CURSOR_EXISTS on the metadata EOF of a plain text result, with more results behind it.
    let leaked =
        SERVER_STATUS_CURSOR_EXISTS | SERVER_MORE_RESULTS_EXISTS | SERVER_STATUS_AUTOCOMMIT;
    let mut t = Tracker::new(BASE);
    client(&mut t, &query("BEGIN NOT ATOMIC ... SELECT v; END"));
    let ev = server(
        &mut t,
        &[
            count(1),
            coldef(),
            eof(leaked),
            text_row(b"7"),
            eof(leaked),
            ok(SERVER_STATUS_AUTOCOMMIT, BASE),
        ],
    );
    assert_eq!(done(&ev), Some(Outcome::Ok));
    assert!(t.safe_point());
    // The same flag on an execute that asked for no cursor: rows follow.
    prepared(&mut t, 4, 0);
    client(&mut t, &execute(4, 0, 0, None));
    let ev = server(
        &mut t,
        &[
            count(1),
            coldef(),
            eof(SERVER_STATUS_CURSOR_EXISTS),
            vec![0, 0],
            eof(SERVER_STATUS_CURSOR_EXISTS),
        ],
    );
    assert_eq!(done(&ev), Some(Outcome::Ok));
    assert_eq!(t.open_cursors().count(), 0);
    // Asked for, on a CALL: MariaDB opens none and sends the rows, more results behind.
    client(&mut t, &execute(4, 1, 0, None));
    let ev = server(
        &mut t,
        &[
            count(1),
            coldef(),
            eof(leaked),
            vec![0, 0],
            eof(leaked),
            ok(SERVER_STATUS_AUTOCOMMIT, BASE),
        ],
    );
    assert_eq!(done(&ev), Some(Outcome::Ok));
    assert_eq!(t.open_cursors().count(), 0);
    assert!(t.safe_point());
}

#[test]
fn a_quit_sent_while_a_result_arrives_waits_for_its_end() {
    for caps in [BASE, DEPRECATE] {
        let mut t = Tracker::new(caps);
        client(&mut t, &query("SELECT seq FROM seq_1_to_1000000"));
        server(&mut t, &[count(1), coldef()]);
        client(&mut t, &[COM_QUIT]);
        assert!(!t.client_quit());
        let mut rows: Vec<Vec<u8>> = (0..50).map(|_| text_row(b"12345")).collect();
        rows.push(if caps & CLIENT_DEPRECATE_EOF != 0 {
            ok_fe(SERVER_STATUS_AUTOCOMMIT, caps)
        } else {
            eof(SERVER_STATUS_AUTOCOMMIT)
        });
        if caps & CLIENT_DEPRECATE_EOF == 0 {
            rows.insert(0, eof(SERVER_STATUS_AUTOCOMMIT));
        }
        let mut out = BytesMut::new();
        let mut seq = 3u8;
        for p in &rows {
            seq = write_packet(&mut out, seq, p);
        }
        t.server_bytes(&out)
            .expect("the rest of the result is no violation");
        assert!(t.client_quit());
    }
}

#[test]
fn the_last_prepared_id_resolves_in_every_statement_command() {
    const LAST: u32 = 0xFFFF_FFFF;
    let mut t = Tracker::new(DEPRECATE);
    prepared(&mut t, 9, 1);
    let ev = client(
        &mut t,
        &stmt_cmd(COM_STMT_SEND_LONG_DATA, LAST, b"\x00\x00ab"),
    );
    assert!(matches!(
        &ev[0],
        Event::Command {
            command: Command::SendLongData { id: 9, .. },
            ..
        }
    ));
    assert_eq!(t.long_data_pending().collect::<Vec<_>>(), vec![9]);
    let ev = client(&mut t, &stmt_cmd(COM_STMT_RESET, LAST, &[]));
    assert!(matches!(
        &ev[0],
        Event::Command {
            command: Command::Reset { id: 9 },
            ..
        }
    ));
    server(&mut t, &[ok(0, DEPRECATE)]);
    assert_eq!(t.long_data_pending().count(), 0);
    let ev = client(&mut t, &stmt_cmd(COM_STMT_FETCH, LAST, &1u32.to_le_bytes()));
    assert!(matches!(
        &ev[0],
        Event::Command {
            command: Command::Fetch { id: 9, .. },
            ..
        }
    ));
    server(&mut t, &[err()]);
    let ev = client(&mut t, &stmt_cmd(COM_STMT_CLOSE, LAST, &[]));
    assert!(matches!(
        &ev[0],
        Event::Command {
            command: Command::Close { id: 9 },
            ..
        }
    ));
    // Closed: "the last prepared" names nothing now, as in MariaDB.
    assert_eq!(t.last_prepared(), None);
    // A failed prepare leaves nothing to name either.
    prepared(&mut t, 10, 0);
    client(&mut t, &query_prepare("SELEC oops"));
    server(&mut t, &[err()]);
    assert_eq!(t.last_prepared(), None);
}

#[test]
fn prepare_execute_and_close_of_the_last_prepared_written_at_once() {
    const LAST: u32 = 0xFFFF_FFFF;
    let mut t = Tracker::new(DEPRECATE);
    let mut out = BytesMut::new();
    write_packet(&mut out, 0, &query_prepare("SELECT ? + 1"));
    write_packet(&mut out, 0, &execute(LAST, 0, 1, Some(&[3])));
    write_packet(&mut out, 0, &stmt_cmd(COM_STMT_CLOSE, LAST, &[]));
    write_packet(&mut out, 0, &query("SELECT 'after'"));
    t.client_bytes(&out).unwrap();
    drain(&mut t);
    server(&mut t, &[prepare_ok(7, 1, 1), coldef(), coldef()]);
    let ev = server(
        &mut t,
        &[count(1), coldef(), vec![0, 0, 1], ok_fe(0, DEPRECATE)],
    );
    let commands: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Command { command, .. } => Some(command.clone()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(&commands[..], [Command::Close { id: 7 }, Command::Query(_)]),
        "{commands:?}"
    );
    assert!(!t.is_idle());
    server(
        &mut t,
        &[count(1), coldef(), text_row(b"after"), ok_fe(0, DEPRECATE)],
    );
    assert!(t.safe_point());
    assert_eq!(t.last_prepared(), None);
}

#[test]
fn a_client_packet_over_the_limit_is_refused_from_its_header() {
    let mut t = Tracker::new(DEPRECATE);
    t.set_client_packet_limit(1000);
    // Exactly the limit passes.
    let mut out = BytesMut::new();
    let mut q = query("SELECT '");
    q.resize(1000, b'x');
    write_packet(&mut out, 0, &q);
    t.client_bytes(&out).unwrap();
    server(&mut t, &[ok(0, DEPRECATE)]);
    // One byte more, announced by a header alone: refused before any payload arrives.
    let e = t.client_bytes(&[0xe9, 0x03, 0x00, 0x00]).unwrap_err();
    assert_eq!(e.too_large, Some(1), "{e}");
    // Continuation frames count together.
    let mut t = Tracker::new(DEPRECATE).with_frame_limit(600);
    t.set_client_packet_limit(1000);
    let mut head = vec![0x58, 0x02, 0x00, 0x00, COM_QUERY];
    head.extend_from_slice(&[b'x'; 599]);
    t.client_bytes(&head).unwrap();
    let e = t.client_bytes(&[0x58, 0x02, 0x00, 0x01]).unwrap_err();
    assert_eq!(e.too_large, Some(2), "{e}");
}
