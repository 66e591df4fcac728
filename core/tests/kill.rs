//! KILL as a specification: which session a number names ([`resolve`]), and
//! what a session does with a KILL or COM_CHANGE_USER that arrives behind
//! other commands or cut across reads: it waits until everything before it
//! is answered, is handled alone, and never reaches the backend as written.

mod support;

use bytes::Bytes;
use ferry_core::cluster::BackendId;
use ferry_core::kill::{resolve, Asker, Peer, Resolution};
use ferry_core::packets::flags::command::*;
use ferry_core::packets::ErrPacket;
use ferry_core::session::{CloseReason, Control, Input, Output};
use support::*;

fn cn(n: u8) -> BackendId {
    BackendId(format!("cn{n}"))
}

fn peer(id: u32, tenant: Option<&str>, backend: u8, thread: u32) -> Peer {
    Peer {
        id,
        tenant: tenant.map(str::to_string),
        user: "app".into(),
        backend: cn(backend),
        addr: Some("127.0.0.1:3308".parse().unwrap()),
        thread,
        earlier: Vec::new(),
    }
}

const FERRY: u32 = 1 << 30;

fn asker(tenant: Option<&str>) -> Asker<'_> {
    static CN1: std::sync::OnceLock<BackendId> = std::sync::OnceLock::new();
    Asker {
        id: FERRY,
        tenant,
        backend: CN1.get_or_init(|| cn(1)),
    }
}

fn found(r: Resolution) -> u32 {
    match r {
        Resolution::Session(p) => p.id,
        other => panic!("no session: {other:?}"),
    }
}

// ------------------------------------------------------------------ resolve

#[test]
fn a_handshake_id_names_its_session_wherever_it_runs() {
    let peers = [
        peer(FERRY, Some("a"), 1, 10),
        peer(FERRY + 1, Some("a"), 2, 10),
    ];
    assert_eq!(
        found(resolve(FERRY + 1, &asker(Some("a")), &peers)),
        FERRY + 1
    );
}

#[test]
fn a_thread_on_the_askers_backend_comes_before_one_elsewhere() {
    let peers = [
        peer(FERRY, Some("a"), 1, 5),
        peer(FERRY + 1, Some("a"), 1, 10),
        peer(FERRY + 2, Some("a"), 2, 10),
    ];
    assert_eq!(found(resolve(10, &asker(Some("a")), &peers)), FERRY + 1);
    // Elsewhere only: the tenant's session there.
    assert_eq!(
        found(resolve(10, &asker(Some("a")), &peers[1..2])),
        FERRY + 1
    );
    assert_eq!(
        found(resolve(10, &asker(Some("a")), &peers[2..])),
        FERRY + 2
    );
}

#[test]
fn an_id_read_before_a_move_still_names_the_session() {
    let mut moved = peer(FERRY + 1, Some("a"), 3, 30);
    moved.earlier = vec![(cn(2), 20), (cn(1), 10)];
    let peers = [peer(FERRY, Some("a"), 1, 5), moved];
    for id in [10, 20, 30, FERRY + 1] {
        assert_eq!(
            found(resolve(id, &asker(Some("a")), &peers)),
            FERRY + 1,
            "{id}"
        );
    }
}

#[test]
fn two_sessions_that_fit_are_ambiguous_and_nothing_is_killed() {
    // Thread 20 on cn2 and on cn3: both elsewhere, both the tenant's.
    let peers = [
        peer(FERRY, Some("a"), 1, 5),
        peer(FERRY + 1, Some("a"), 2, 20),
        peer(FERRY + 2, Some("a"), 3, 20),
    ];
    assert_eq!(
        resolve(20, &asker(Some("a")), &peers),
        Resolution::Ambiguous
    );
    // A thread on the asker's backend that another session ran as before it moved.
    let mut old = peer(FERRY + 1, Some("a"), 2, 21);
    old.earlier = vec![(cn(1), 7)];
    let peers = [
        peer(FERRY, Some("a"), 1, 5),
        old,
        peer(FERRY + 2, Some("a"), 1, 7),
    ];
    assert_eq!(resolve(7, &asker(Some("a")), &peers), Resolution::Ambiguous);
}

#[test]
fn another_tenants_session_is_not_the_askers_to_kill() {
    let peers = [
        peer(FERRY, Some("a"), 1, 5),
        peer(FERRY + 1, Some("b"), 1, 10),
        peer(FERRY + 2, Some("b"), 2, 20),
        peer(FERRY + 3, None, 2, 30),
    ];
    for id in [FERRY + 1, 10, FERRY + 2, 20, 30] {
        assert_eq!(
            resolve(id, &asker(Some("a")), &peers),
            Resolution::NotOwner,
            "{id}"
        );
    }
}

#[test]
fn a_thread_no_session_runs_as_is_left_to_the_backend() {
    let peers = [
        peer(FERRY, Some("a"), 1, 5),
        peer(FERRY + 1, Some("a"), 2, 10),
    ];
    assert_eq!(resolve(99, &asker(Some("a")), &peers), Resolution::Unowned);
    assert_eq!(
        resolve(FERRY + 9, &asker(Some("a")), &peers),
        Resolution::Unowned
    );
}

// ------------------------------------------------------------------ a session

/// The session under test: root (no tenant) on cn1, thread 501, ferry id 7.
fn logged_in() -> Harness {
    let mut h = Harness::with(test_config(), TraceStyle::Handles);
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    h.backend_accepts(2);
    assert!(h.session.is_forwarding(), "{}", h.trace);
    h.to_backend.clear();
    h.to_client.clear();
    h
}

fn query(sql: &str) -> Bytes {
    frame(0, |b| {
        b.extend_from_slice(&[COM_QUERY]);
        b.extend_from_slice(sql.as_bytes());
    })
}

fn sent_to_backend(h: &Harness) -> Vec<u8> {
    h.to_backend.iter().flat_map(|b| b.to_vec()).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn locates(h: &Harness) -> usize {
    h.outputs
        .iter()
        .filter(|o| matches!(o, Output::Locate))
        .count()
}

/// The live sessions: the one under test and a victim (ferry id FERRY + 9,
/// thread 77 on `backend`) of `tenant`.
fn peers(backend: u8, tenant: Option<&str>) -> Vec<Peer> {
    vec![peer(7, None, 1, 501), peer(FERRY + 9, tenant, backend, 77)]
}

fn last_err(h: &Harness) -> ErrPacket {
    let last = h.to_client.last().expect("an answer");
    ErrPacket::parse(&last[4..]).expect("an ERR")
}

#[test]
fn a_kill_pipelined_behind_a_query_waits_for_its_answer_and_is_done_alone() {
    let mut h = logged_in();
    let both = [query("DO SLEEP(1)"), query("KILL 77")].concat();
    h.feed(Input::ClientData(Bytes::from(both)));
    assert_eq!(
        sent_to_backend(&h),
        query("DO SLEEP(1)").to_vec(),
        "{}",
        h.trace
    );
    assert_eq!(locates(&h), 0, "the KILL waits for the answer before it");
    h.feed(Input::BackendData(B0, backend_ok(1)));
    assert_eq!(locates(&h), 1, "{}", h.trace);
    h.feed(Input::Located(peers(1, None)));
    // The whole connection: run as the client where the victim lives, then ferry closes it.
    let run = h.outputs.iter().find_map(|o| match o {
        Output::RunElsewhere(r) => Some(r.sql.clone()),
        _ => None,
    });
    assert_eq!(run.as_deref(), Some("KILL CONNECTION 77"), "{}", h.trace);
    h.feed(Input::RanElsewhere(Ok(Ok(()))));
    assert!(
        h.outputs
            .iter()
            .any(|o| matches!(o, Output::CloseSession { id, .. } if *id == FERRY + 9)),
        "{}",
        h.trace
    );
    assert_eq!(h.to_client.last().unwrap()[4], 0x00, "OK to the killer");
    assert!(!contains(&sent_to_backend(&h), b"KILL"), "{}", h.trace);
}

#[test]
fn a_kill_cut_by_reads_is_whole_before_it_is_looked_at() {
    let name = format!("kill query {}", FERRY + 9);
    let packet = query(&name);
    for cuts in [vec![2], vec![4], vec![5, 9], vec![6, 7, 8]] {
        let mut h = logged_in();
        let mut from = 0;
        for cut in cuts.iter().copied().chain([packet.len()]) {
            h.feed(Input::ClientData(packet.slice(from..cut)));
            from = cut;
            if cut < packet.len() {
                assert!(h.to_backend.is_empty(), "cut at {cuts:?}: {}", h.trace);
                assert_eq!(locates(&h), 0);
            }
        }
        assert_eq!(locates(&h), 1, "{}", h.trace);
        h.feed(Input::Located(peers(1, None)));
        // On the same backend: translated and passed on.
        assert_eq!(
            sent_to_backend(&h),
            query("KILL QUERY 77").to_vec(),
            "{}",
            h.trace
        );
    }
}

#[test]
fn another_tenants_session_is_refused_with_1095() {
    let mut h = logged_in();
    h.feed(Input::ClientData(query("KILL 77")));
    h.feed(Input::Located(peers(1, Some("acc2"))));
    let err = last_err(&h);
    assert_eq!(
        (err.code, err.message.as_str()),
        (1095, "You are not owner of thread 77")
    );
    assert!(h.to_backend.is_empty(), "{}", h.trace);
    // COM_PROCESS_KILL too.
    let id = (FERRY + 9).to_le_bytes();
    h.feed(Input::ClientData(frame(0, |b| {
        b.extend_from_slice(&[COM_PROCESS_KILL]);
        b.extend_from_slice(&id);
    })));
    h.feed(Input::Located(peers(2, Some("acc2"))));
    assert_eq!(last_err(&h).code, 1095);
    assert!(h.to_backend.is_empty(), "{}", h.trace);
}

#[test]
fn kills_ferry_does_not_translate_go_only_to_an_unshared_backend() {
    for sql in [
        "KILL USER app",
        "/*!KILL 77*/",
        "SELECT 1; KILL 77",
        "kill query id 3",
    ] {
        let mut h = logged_in();
        h.feed(Input::ClientData(query(sql)));
        h.feed(Input::Located(peers(1, Some("acc2"))));
        assert_eq!(last_err(&h).code, 1235, "{sql}: {}", h.trace);
        assert!(h.to_backend.is_empty(), "{sql}: {}", h.trace);

        let mut h = logged_in();
        h.feed(Input::ClientData(query(sql)));
        h.feed(Input::Located(peers(2, Some("acc2"))));
        assert_eq!(
            sent_to_backend(&h),
            query(sql).to_vec(),
            "{sql}: {}",
            h.trace
        );
    }
}

#[test]
fn a_thread_no_session_runs_as_goes_to_the_own_backend_as_written() {
    let mut h = logged_in();
    h.feed(Input::ClientData(query("KILL 12345")));
    h.feed(Input::Located(peers(1, None)));
    assert_eq!(sent_to_backend(&h), query("KILL 12345").to_vec());
}

#[test]
fn commands_behind_a_held_kill_wait_and_then_follow_in_order() {
    let mut h = logged_in();
    let all = [query("DO 1"), query("KILL QUERY 77"), query("DO 2")].concat();
    h.feed(Input::ClientData(Bytes::from(all)));
    assert_eq!(sent_to_backend(&h), query("DO 1").to_vec());
    h.feed(Input::BackendData(B0, backend_ok(1)));
    h.feed(Input::Located(peers(1, None)));
    let expected = [query("DO 1"), query("KILL QUERY 77"), query("DO 2")].concat();
    assert_eq!(sent_to_backend(&h), expected, "{}", h.trace);
}

#[test]
fn change_user_pipelined_behind_a_query_waits_and_is_translated() {
    let change = |password: &str| {
        let scramble = ferry_core::auth::scramble_native(&FERRY_SALT, password.as_bytes());
        frame(0, |b| {
            b.extend_from_slice(&[COM_CHANGE_USER]);
            b.extend_from_slice(b"root\0");
            b.extend_from_slice(&[scramble.len() as u8]);
            b.extend_from_slice(&scramble);
            b.extend_from_slice(b"test\0");
            b.extend_from_slice(&45u16.to_le_bytes());
            b.extend_from_slice(b"mysql_native_password\0");
        })
    };
    for (password, ok) in [("111", true), ("wrong", false)] {
        let mut h = logged_in();
        let client = change(password);
        let both = [query("DO 1"), client.clone()].concat();
        h.feed(Input::ClientData(Bytes::from(both)));
        assert_eq!(sent_to_backend(&h), query("DO 1").to_vec(), "{}", h.trace);
        h.feed(Input::BackendData(B0, backend_ok(1)));
        let sent = sent_to_backend(&h);
        assert!(
            !contains(&sent, &client),
            "passed on as written: {}",
            h.trace
        );
        if ok {
            // Scrambled anew for the backend's salt.
            let theirs = ferry_core::auth::scramble_native(BACKEND_SALT, b"111");
            assert!(contains(&sent, &theirs), "{}", h.trace);
        } else {
            assert!(!contains(&sent, b"root\0"), "{}", h.trace);
            assert!(
                matches!(h.closed, Some(CloseReason::LoginRefused(_))),
                "{}",
                h.trace
            );
        }
    }
}

#[test]
fn load_data_content_that_looks_like_a_kill_passes() {
    let mut h = logged_in();
    h.feed(Input::ClientData(query("DO 1")));
    // Not a command: sequence id 2 (as LOCAL INFILE data would be, were it asked for).
    let data = frame(2, |b| b.extend_from_slice(b"\x03KILL 77"));
    h.feed(Input::ClientData(data.clone()));
    assert!(contains(&sent_to_backend(&h), &data), "{}", h.trace);
    assert_eq!(locates(&h), 0);
}

// ---------------------------------------------------------- the killed side

fn killed_err() -> Bytes {
    frame(1, |b| {
        ErrPacket::new(1927, "70100", "Connection was killed").write(b);
    })
}

fn closed(h: &Harness) -> bool {
    matches!(&h.closed, Some(CloseReason::Closed(why)) if why.contains("killed by"))
}

#[test]
fn a_session_killed_mid_command_passes_its_backends_error_on_then_closes() {
    let mut h = logged_in();
    h.feed(Input::ClientData(query("SELECT SLEEP(5)")));
    h.outputs.clear();
    h.feed(Input::Control(Control::Kill(
        "killed by connection 9".into(),
    )));
    assert!(
        !closed(&h),
        "the backend's answer is still to come: {}",
        h.trace
    );
    h.feed(Input::BackendData(B0, killed_err()));
    h.feed(Input::BackendClosed(B0));
    assert_eq!(last_err(&h).code, 1927, "{}", h.trace);
    assert!(closed(&h), "{}", h.trace);
    assert!(
        !h.outputs.iter().any(|o| matches!(o, Output::Route(_))),
        "a killed session does not fail over: {}",
        h.trace
    );
}

#[test]
fn a_session_killed_mid_command_closes_when_its_backend_never_answers() {
    let mut h = logged_in();
    h.feed(Input::ClientData(query("SELECT SLEEP(5)")));
    h.feed(Input::Control(Control::Kill(
        "killed by connection 9".into(),
    )));
    assert!(!closed(&h), "{}", h.trace);
    h.advance(std::time::Duration::from_secs(3));
    assert!(closed(&h), "{}", h.trace);
}

#[test]
fn an_idle_session_killed_closes_at_once() {
    let mut h = logged_in();
    h.feed(Input::Control(Control::Kill(
        "killed by connection 9".into(),
    )));
    assert!(closed(&h), "{}", h.trace);
}
