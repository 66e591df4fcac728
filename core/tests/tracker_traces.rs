//! Byte streams recorded from a real MariaDB (`tests/data/*.trace`, made by
//! `tests/data/record.py`) replayed through the tracker and the session state,
//! chunk by chunk as they were read; the decoded trace is an insta snapshot.

use std::fmt::Write as _;
use std::path::Path;

use ferry_core::packets::flags::caps::MARIADB_CLIENT_CACHE_METADATA;
use ferry_core::state::SessionState;
use ferry_core::tracker::{command_name, Command, Event, TrackItem, Tracker};

/// One recorded chunk.
enum Chunk {
    Client(Vec<u8>),
    Server(Vec<u8>),
}

fn load(name: &str) -> (u32, u32, Vec<Chunk>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("{name}.trace"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut caps = None;
    let mut mariadb = 0;
    let mut chunks = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (tag, rest) = line.split_once(' ').expect("tagged line");
        let hex = || -> Vec<u8> {
            (0..rest.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&rest[i..i + 2], 16).expect("hex"))
                .collect()
        };
        match tag {
            "caps" => caps = Some(u32::from_str_radix(rest.trim_start_matches("0x"), 16).unwrap()),
            "mariadb" => mariadb = u32::from_str_radix(rest.trim_start_matches("0x"), 16).unwrap(),
            "C" => chunks.push(Chunk::Client(hex())),
            "S" => chunks.push(Chunk::Server(hex())),
            other => panic!("unknown tag {other}"),
        }
    }
    (caps.expect("caps line"), mariadb, chunks)
}

fn text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.chars().count() > 70 {
        format!("{}...", s.chars().take(70).collect::<String>())
    } else {
        s.into_owned()
    }
}

fn describe(e: &Event) -> String {
    match e {
        Event::Command { command, offset } => {
            let what = match command {
                Command::Query(q) | Command::Prepare(q) => {
                    format!("{} {:?}", command_name(command.code()), text(&q.text))
                }
                Command::Execute {
                    id,
                    flags,
                    param_types,
                } => {
                    format!("COM_STMT_EXECUTE id={id} flags={flags} types={param_types:?}")
                }
                other => format!("{other:?}"),
            };
            format!("C@{offset} {what}")
        }
        Event::Ok { ok, trackers, at } => format!(
            "S@{}+{} seq={} OK(0x{:02x}) status=0x{:04x} affected={} insert_id={}{}",
            at.offset,
            at.len,
            at.seq,
            ok.header,
            ok.status,
            ok.affected_rows,
            ok.last_insert_id,
            trackers.iter().map(tracker).collect::<String>()
        ),
        Event::Err { err, at } => format!(
            "S@{}+{} seq={} ERR {} {} {:?}",
            at.offset,
            at.len,
            at.seq,
            err.code,
            err.sql_state_str(),
            err.message
        ),
        Event::Eof { eof, at } => format!(
            "S@{}+{} seq={} EOF status=0x{:04x}",
            at.offset, at.len, at.seq, eof.status
        ),
        other => format!("  {other:?}"),
    }
}

fn tracker(t: &TrackItem) -> String {
    match t {
        TrackItem::SystemVariable { name, value } => format!(" var:{}={}", text(name), text(value)),
        TrackItem::Schema(s) => format!(" schema:{}", text(s)),
        TrackItem::StateChange(c) => format!(" state_changed:{c}"),
        TrackItem::TransactionState(s) => format!(" trx:{}", text(s)),
        TrackItem::TransactionCharacteristics(s) => format!(" trx_chars:{:?}", text(s)),
        TrackItem::Other(k, d) => format!(" tracker{k}:{d:?}"),
    }
}

fn replay(name: &str) -> String {
    let (caps, mariadb, chunks) = load(name);
    let mut tracker = Tracker::new(caps);
    let cache = mariadb & MARIADB_CLIENT_CACHE_METADATA != 0;
    tracker.set_metadata_cache(cache, cache);
    let mut state = SessionState::new();
    let mut out = String::new();
    for chunk in &chunks {
        let r = match chunk {
            Chunk::Client(b) => tracker.client_bytes(b),
            Chunk::Server(b) => tracker.server_bytes(b),
        };
        if let Err(e) = r {
            panic!("{name}: {e}\n{out}");
        }
        while let Some(e) = tracker.poll_event() {
            state.on_event(&e);
            writeln!(out, "{}", describe(&e)).unwrap();
            if matches!(e, Event::ResponseDone { .. }) {
                writeln!(
                    out,
                    "    -> idle={} in_transaction={} cursors={:?} long_data={:?} safe_point={} blocked_by={:?}",
                    tracker.is_idle(),
                    tracker.in_transaction(),
                    tracker.open_cursors().collect::<Vec<_>>(),
                    tracker.long_data_pending().collect::<Vec<_>>(),
                    tracker.safe_point(),
                    state.blocked_by(),
                )
                .unwrap();
            }
        }
    }
    writeln!(
        out,
        "end: database={:?} user_variables={:?} variables={:?} prepared={}",
        state.database(),
        state.user_variables(),
        state.variables().keys().collect::<Vec<_>>(),
        state.prepared().count()
    )
    .unwrap();
    out
}

macro_rules! trace_test {
    ($test:ident, $name:literal) => {
        #[test]
        fn $test() {
            insta::assert_snapshot!($name, replay($name));
        }
    };
}

trace_test!(
    multi_statement_with_an_error_in_the_middle,
    "multi_statement_error"
);
trace_test!(
    multi_statement_with_an_error_in_the_middle_eof,
    "multi_statement_error-eof"
);
trace_test!(
    stored_procedure_with_two_result_sets,
    "procedure_two_results"
);
trace_test!(
    stored_procedure_with_two_result_sets_eof,
    "procedure_two_results-eof"
);
trace_test!(cursor_fetch, "cursor_fetch");
trace_test!(cursor_fetch_eof, "cursor_fetch-eof");
trace_test!(local_infile, "local_infile");
trace_test!(local_infile_eof, "local_infile-eof");
trace_test!(send_long_data, "send_long_data");
trace_test!(send_long_data_eof, "send_long_data-eof");
trace_test!(long_result_wraps_sequence_ids, "long_result");
trace_test!(long_result_wraps_sequence_ids_eof, "long_result-eof");
trace_test!(field_list_set_option_and_change_user, "other_commands");
trace_test!(
    field_list_set_option_and_change_user_eof,
    "other_commands-eof"
);
trace_test!(session_state_items, "state_items");
trace_test!(
    sysbench_read_only_with_ranges_that_wrap_sequence_ids,
    "sysbench_read_only"
);
trace_test!(session_state_items_eof, "state_items-eof");
trace_test!(
    a_block_whose_own_cursor_leaks_its_status_onto_a_text_result,
    "stored_block_cursor"
);
trace_test!(
    a_block_whose_own_cursor_leaks_its_status_onto_a_text_result_eof,
    "stored_block_cursor-eof"
);
trace_test!(
    a_procedure_whose_own_cursor_leaks_its_status_text_and_prepared,
    "stored_procedure_cursor"
);
trace_test!(
    a_procedure_whose_own_cursor_leaks_its_status_text_and_prepared_eof,
    "stored_procedure_cursor-eof"
);
trace_test!(
    a_cursor_for_loop_running_execute_immediate,
    "cursor_for_loop"
);
trace_test!(
    a_cursor_for_loop_running_execute_immediate_eof,
    "cursor_for_loop-eof"
);
trace_test!(
    signal_inside_a_procedure_text_and_prepared,
    "signal_in_procedure"
);
trace_test!(
    signal_inside_a_procedure_text_and_prepared_eof,
    "signal_in_procedure-eof"
);
trace_test!(a_prepared_call_with_out_parameters, "prepared_call_out");
trace_test!(
    a_prepared_call_with_out_parameters_eof,
    "prepared_call_out-eof"
);
trace_test!(
    pipelined_direct_execute_of_the_last_prepared_statement,
    "pipelined_direct_execute"
);
trace_test!(
    pipelined_direct_execute_of_the_last_prepared_statement_eof,
    "pipelined_direct_execute-eof"
);

trace_test!(
    metadata_cache_text_prepared_cursor_and_procedure_results,
    "cache_metadata"
);
trace_test!(
    metadata_cache_text_prepared_cursor_and_procedure_results_eof,
    "cache_metadata-eof"
);

#[test]
fn every_recorded_chunking_also_replays_one_byte_at_a_time() {
    for name in [
        "sysbench_read_only",
        "long_result",
        "cursor_fetch-eof",
        "local_infile",
        "send_long_data-eof",
        "stored_procedure_cursor-eof",
        "pipelined_direct_execute",
        "cache_metadata",
        "cache_metadata-eof",
    ] {
        let (caps, mariadb, chunks) = load(name);
        let cache = mariadb & MARIADB_CLIENT_CACHE_METADATA != 0;
        let mut whole = Tracker::new(caps);
        let mut bytewise = Tracker::new(caps);
        whole.set_metadata_cache(cache, cache);
        bytewise.set_metadata_cache(cache, cache);
        for chunk in &chunks {
            let (b, client) = match chunk {
                Chunk::Client(b) => (b, true),
                Chunk::Server(b) => (b, false),
            };
            let feed = |t: &mut Tracker, b: &[u8]| {
                if client {
                    t.client_bytes(b)
                } else {
                    t.server_bytes(b)
                }
            };
            feed(&mut whole, b).unwrap();
            for byte in b.chunks(1) {
                feed(&mut bytewise, byte).unwrap();
            }
            let a: Vec<_> = std::iter::from_fn(|| whole.poll_event()).collect();
            let b: Vec<_> = std::iter::from_fn(|| bytewise.poll_event()).collect();
            assert_eq!(a, b, "{name}");
        }
    }
}
