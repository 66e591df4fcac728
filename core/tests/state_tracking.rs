//! Specification of the session state: what a migration carries and what blocks it,
//! fed by a real tracker from packets.

use bytes::{BufMut, BytesMut};
use ferry_core::packets::codec::put_lenenc_bytes;
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::command::*;
use ferry_core::packets::flags::status::*;
use ferry_core::packets::OkPacket;
use ferry_core::state::{Blocker, SessionState};
use ferry_core::tracker::Tracker;
use ferry_core::wire::write_packet;

const CAPS: u32 = CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_MULTI_RESULTS
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF;

/// A tracker and a session state, fed together.
struct Session {
    tracker: Tracker,
    state: SessionState,
}

/// One server reply.
enum Reply {
    Ok(Vec<Track>),
    OkMore(Vec<Track>),
    OkId(u64),
    Err,
}

/// A session-state entry a reply carries.
enum Track {
    Var(&'static str, &'static str),
    Schema(&'static str),
    Changed,
}

fn ok_payload(status: u16, tracks: &[Track], last_insert_id: u64) -> Vec<u8> {
    let mut block = BytesMut::new();
    for t in tracks {
        let mut data = BytesMut::new();
        let kind = match t {
            Track::Var(n, v) => {
                put_lenenc_bytes(&mut data, n.as_bytes());
                put_lenenc_bytes(&mut data, v.as_bytes());
                0
            }
            Track::Schema(s) => {
                put_lenenc_bytes(&mut data, s.as_bytes());
                1
            }
            Track::Changed => {
                // Sent bare, as MariaDB does.
                data.put_u8(b'1');
                2
            }
        };
        block.put_u8(kind);
        put_lenenc_bytes(&mut block, &data);
    }
    let mut out = BytesMut::new();
    let tracked = !tracks.is_empty();
    OkPacket {
        last_insert_id,
        status: status
            | if tracked {
                SERVER_SESSION_STATE_CHANGED
            } else {
                0
            },
        session_state: tracked.then(|| block.to_vec()),
        ..OkPacket::default()
    }
    .write(&mut out, CAPS);
    out.to_vec()
}

impl Session {
    fn new() -> Self {
        Session {
            tracker: Tracker::new(CAPS),
            state: SessionState::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(e) = self.tracker.poll_event() {
            self.state.on_event(&e);
        }
    }

    fn send(&mut self, payload: &[u8]) {
        let mut out = BytesMut::new();
        write_packet(&mut out, 0, payload);
        self.tracker.client_bytes(&out).unwrap();
        self.drain();
    }

    fn reply(&mut self, replies: Vec<Reply>) {
        let mut out = BytesMut::new();
        let mut seq = 1;
        for r in replies {
            let p = match r {
                Reply::Ok(t) => ok_payload(SERVER_STATUS_AUTOCOMMIT, &t, 0),
                Reply::OkMore(t) => ok_payload(SERVER_MORE_RESULTS_EXISTS, &t, 0),
                Reply::OkId(id) => ok_payload(0, &[], id),
                Reply::Err => b"\xff\x28\x04#42000error".to_vec(),
            };
            seq = write_packet(&mut out, seq, &p);
        }
        self.tracker.server_bytes(&out).unwrap();
        self.drain();
        assert!(self.tracker.is_idle());
    }

    /// A COM_QUERY answered by `replies`.
    fn query(&mut self, sql: &str, replies: Vec<Reply>) {
        let mut p = vec![COM_QUERY];
        p.extend_from_slice(sql.as_bytes());
        self.send(&p);
        self.reply(replies);
    }

    /// A query every statement of which succeeds with a plain OK.
    fn ok(&mut self, sql: &str) {
        let n = sql.split(';').filter(|s| !s.trim().is_empty()).count();
        let mut replies: Vec<Reply> = (1..n).map(|_| Reply::OkMore(vec![])).collect();
        replies.push(Reply::Ok(vec![]));
        self.query(sql, replies);
    }

    fn blocked_by(&self) -> Vec<String> {
        self.state.blocked_by()
    }

    fn movable(&self) -> bool {
        self.tracker.safe_point() && self.state.blockers().is_empty()
    }
}

#[test]
fn current_database_follows_init_db_use_and_the_schema_tracker() {
    let mut s = Session::new();
    s.send(b"\x02shop");
    s.reply(vec![Reply::Ok(vec![])]);
    assert_eq!(s.state.database(), Some("shop"));
    s.ok("USE `inventory`");
    assert_eq!(s.state.database(), Some("inventory"));
    s.query("SELECT 1", vec![Reply::Ok(vec![Track::Schema("other")])]);
    assert_eq!(s.state.database(), Some("other"));
}

#[test]
fn a_failed_use_changes_nothing() {
    let mut s = Session::new();
    s.ok("USE a");
    s.query("USE missing", vec![Reply::Err]);
    assert_eq!(s.state.database(), Some("a"));
    s.send(b"\x02missing");
    s.reply(vec![Reply::Err]);
    assert_eq!(s.state.database(), Some("a"));
}

#[test]
fn system_variables_keep_the_latest_value_from_the_tracker() {
    let mut s = Session::new();
    s.query(
        "SET sql_mode='', autocommit=0",
        vec![Reply::Ok(vec![
            Track::Var("sql_mode", ""),
            Track::Var("autocommit", "OFF"),
        ])],
    );
    s.query(
        "SET autocommit=1",
        vec![Reply::Ok(vec![Track::Var("autocommit", "ON")])],
    );
    let vars: Vec<_> = s
        .state
        .variables()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(vars, vec![("autocommit", "ON"), ("sql_mode", "")]);
    assert!(s.movable());
}

#[test]
fn last_insert_id_comes_from_ok_packets() {
    let mut s = Session::new();
    s.query("INSERT INTO t VALUES ()", vec![Reply::OkId(17)]);
    s.query("UPDATE t SET a = 1", vec![Reply::OkId(0)]);
    assert_eq!(s.state.last_insert_id(), 17);
}

#[test]
fn user_variables_are_noticed_by_name() {
    let mut s = Session::new();
    s.ok("SET @a = 1, @B := 2");
    s.ok("SELECT x INTO @c, @d FROM t");
    s.ok("SELECT @e := 5, @not_assigned");
    let vars: Vec<_> = s.state.user_variables().iter().cloned().collect();
    assert_eq!(vars, vec!["a", "b", "c", "d", "e"]);
    assert!(s.movable(), "user variables move with the session");
}

#[test]
fn temporary_tables_block_until_dropped() {
    let mut s = Session::new();
    s.ok("USE app");
    s.ok("CREATE TEMPORARY TABLE IF NOT EXISTS tmp (a INT)");
    assert_eq!(
        s.state.blockers(),
        vec![Blocker::TemporaryTable {
            schema: Some("app".into()),
            table: "tmp".into()
        }]
    );
    assert_eq!(s.blocked_by(), vec!["temporary table `app`.`tmp` exists"]);
    assert!(!s.movable());
    // A table of the same name in another schema is another table.
    s.ok("DROP TABLE other.tmp");
    assert!(!s.movable());
    s.ok("DROP TEMPORARY TABLE IF EXISTS tmp");
    assert!(s.movable());
}

#[test]
fn a_failed_create_temporary_table_blocks_nothing() {
    let mut s = Session::new();
    s.query("CREATE TEMPORARY TABLE t (a INT)", vec![Reply::Err]);
    assert!(s.movable());
}

#[test]
fn temporary_tables_inside_multi_statements() {
    let mut s = Session::new();
    s.ok("SELECT 1; CREATE TEMPORARY TABLE t1 (a INT); /* ; */ SELECT ';'");
    assert_eq!(s.state.blockers().len(), 1);
    // The drop comes after a failing statement: it did not run.
    s.query(
        "SELECT 1; BAD SQL; DROP TABLE t1",
        vec![Reply::OkMore(vec![]), Reply::Err],
    );
    assert_eq!(s.state.blockers().len(), 1);
    s.ok("SELECT 1; DROP TABLE t1");
    assert!(s.movable());
}

#[test]
fn after_a_call_results_cannot_be_lined_up_so_releases_are_not_trusted() {
    let mut s = Session::new();
    s.ok("CREATE TEMPORARY TABLE t1 (a INT)");
    // CALL may return any number of results before the ERR: did the DROP run? Unknown.
    s.query(
        "CALL p(); DROP TABLE t1",
        vec![Reply::OkMore(vec![]), Reply::Err],
    );
    assert!(!s.movable());
    // But what a CALL-containing multi-statement may acquire is recorded even on error.
    let mut s = Session::new();
    s.query(
        "CALL p(); CREATE TEMPORARY TABLE t2 (a INT)",
        vec![Reply::OkMore(vec![]), Reply::Err],
    );
    assert!(!s.movable());
}

#[test]
fn named_locks_block_until_released() {
    let mut s = Session::new();
    s.ok("SELECT GET_LOCK('job', 10)");
    s.ok("SELECT GET_LOCK('job', 10)");
    assert_eq!(s.blocked_by(), vec!["named lock 'job' is held (GET_LOCK)"]);
    s.ok("SELECT RELEASE_LOCK('job')");
    assert!(
        !s.movable(),
        "MySQL named locks are re-entrant: one release is not enough"
    );
    s.ok("SELECT RELEASE_LOCK('job')");
    assert!(s.movable());
    s.ok("SELECT GET_LOCK(CONCAT('a', id), 1) FROM t");
    s.ok("SELECT GET_LOCK('b', 1)");
    assert_eq!(s.state.blockers().len(), 2);
    s.ok("DO RELEASE_ALL_LOCKS()");
    assert!(s.movable());
}

#[test]
fn table_locks_block_until_unlock_tables() {
    for lock in [
        "LOCK TABLES t READ",
        "lock table t write",
        "FLUSH TABLES WITH READ LOCK",
        "FLUSH TABLES t FOR EXPORT",
    ] {
        let mut s = Session::new();
        s.ok(lock);
        assert_eq!(s.state.blockers(), vec![Blocker::TableLocks], "{lock}");
        s.ok("UNLOCK TABLES");
        assert!(s.movable(), "{lock}");
    }
}

#[test]
fn set_transaction_is_pending_until_the_next_transaction() {
    let mut s = Session::new();
    s.ok("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
    assert_eq!(s.state.blockers(), vec![Blocker::SetTransaction]);
    s.ok("SET @@transaction_isolation = 'READ-COMMITTED'");
    assert_eq!(s.state.blockers(), vec![Blocker::SetTransaction]);
    s.ok("SELECT * FROM t");
    assert!(s.movable());
    // With a scope it is a session variable the tracker reports.
    s.ok("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
    s.ok("SET @@session.transaction_isolation = 'READ-COMMITTED'");
    assert!(s.movable());
}

#[test]
fn xa_blocks_until_commit_or_rollback() {
    let mut s = Session::new();
    s.ok("XA START 'x'");
    s.ok("XA END 'x'");
    s.ok("XA PREPARE 'x'");
    assert_eq!(s.state.blockers(), vec![Blocker::Xa]);
    s.ok("XA COMMIT 'x'");
    assert!(s.movable());
}

#[test]
fn sql_calc_found_rows_blocks_until_the_next_statement() {
    let mut s = Session::new();
    s.ok("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1");
    assert_eq!(s.state.blockers(), vec![Blocker::CalcFoundRows]);
    s.ok("SELECT FOUND_ROWS()");
    assert!(s.movable());
}

#[test]
fn an_unexplained_state_change_blocks() {
    let mut s = Session::new();
    s.query("SET @x = 1", vec![Reply::Ok(vec![Track::Changed])]);
    assert!(s.movable(), "a user variable explains the change");
    s.query("CALL setup()", vec![Reply::Ok(vec![Track::Changed])]);
    assert_eq!(
        s.blocked_by(),
        vec!["the server reported a session state change after: CALL setup()"]
    );
}

#[test]
fn keywords_in_comments_and_strings_mean_nothing() {
    let mut s = Session::new();
    s.ok("SELECT 'CREATE TEMPORARY TABLE t (a INT)', \"GET_LOCK('x', 1)\" -- LOCK TABLES t\n");
    s.ok("/* XA START 'x' */ SELECT `GET_LOCK`(1) # SQL_CALC_FOUND_ROWS");
    assert!(s.movable(), "{:?}", s.blocked_by());
    // Executable comments do run.
    s.ok("/*!40101 CREATE TEMPORARY TABLE t (a INT) */");
    assert!(!s.movable());
}

#[test]
fn prepared_statements_carry_text_ids_counts_and_last_types() {
    let mut s = Session::new();
    s.send(b"\x16INSERT INTO t VALUES (?, ?)");
    let mut prep = vec![0u8];
    prep.extend_from_slice(&4u32.to_le_bytes());
    prep.extend_from_slice(&0u16.to_le_bytes());
    prep.extend_from_slice(&2u16.to_le_bytes());
    prep.extend_from_slice(&[0, 0, 0]);
    let mut out = BytesMut::new();
    let mut seq = write_packet(&mut out, 1, &prep);
    for _ in 0..2 {
        seq = write_packet(
            &mut out,
            seq,
            b"\x03def\x00\x00\x00\x01?\x00\x0c\x3f\x00\x00\x00\x00\x00\xfd\x80\x00\x00\x00\x00",
        );
    }
    s.tracker.server_bytes(&out).unwrap();
    s.drain();
    let st: Vec<_> = s.state.prepared().collect();
    assert_eq!(st.len(), 1);
    assert_eq!((st[0].id, st[0].params, st[0].columns), (4, 2, 0));
    assert_eq!(st[0].sql, b"INSERT INTO t VALUES (?, ?)");
    assert_eq!(st[0].param_types, None);
    let mut exec = vec![COM_STMT_EXECUTE];
    exec.extend_from_slice(&4u32.to_le_bytes());
    exec.extend_from_slice(&[0, 1, 0, 0, 0, 0, 1, 8, 0, 0xfe, 0]);
    exec.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 1, b'x']);
    s.send(&exec);
    s.reply(vec![Reply::Ok(vec![])]);
    assert_eq!(
        s.state.prepared().next().unwrap().param_types,
        Some(vec![8, 0xfe])
    );
    s.send(&[COM_STMT_CLOSE, 4, 0, 0, 0]);
    assert_eq!(s.state.prepared().count(), 0);
}

#[test]
fn executing_a_prepared_create_temporary_table_blocks() {
    let mut s = Session::new();
    s.send(b"\x16CREATE TEMPORARY TABLE t (a INT)");
    let mut out = BytesMut::new();
    write_packet(&mut out, 1, &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    s.tracker.server_bytes(&out).unwrap();
    s.drain();
    assert!(s.movable(), "preparing is not running");
    s.send(&[COM_STMT_EXECUTE, 1, 0, 0, 0, 0, 1, 0, 0, 0]);
    s.reply(vec![Reply::Ok(vec![])]);
    assert!(!s.movable());
}

#[test]
fn text_prepare_and_deallocate() {
    let mut s = Session::new();
    s.ok("PREPARE Stmt1 FROM 'SELECT ?'");
    let named: Vec<_> = s
        .state
        .named_prepared()
        .map(|n| (n.name.clone(), n.sql.clone()))
        .collect();
    assert_eq!(
        named,
        vec![("stmt1".to_string(), Some(b"SELECT ?".to_vec()))]
    );
    s.ok("DEALLOCATE PREPARE stmt1");
    assert_eq!(s.state.named_prepared().count(), 0);
    s.ok("SET @q = 'SELECT 1'; PREPARE s2 FROM @q");
    assert_eq!(
        s.blocked_by(),
        vec!["prepared statement 's2' was prepared from a user variable"]
    );
    s.ok("DROP PREPARE s2");
    assert!(s.movable());
}

#[test]
fn reset_connection_and_change_user_clear_everything() {
    let mut s = Session::new();
    s.ok("USE app");
    s.ok("CREATE TEMPORARY TABLE t (a INT); SELECT GET_LOCK('l', 1); SET @v = 1");
    s.query(
        "SET sql_mode=''",
        vec![Reply::Ok(vec![Track::Var("sql_mode", "")])],
    );
    assert!(!s.movable());
    s.send(&[COM_RESET_CONNECTION]);
    s.reply(vec![Reply::Ok(vec![])]);
    assert!(s.movable(), "{:?}", s.blocked_by());
    assert!(s.state.user_variables().is_empty());
    assert!(s.state.variables().is_empty());
    assert_eq!(
        s.state.database(),
        Some("app"),
        "COM_RESET_CONNECTION keeps the database"
    );
    s.ok("LOCK TABLES t READ");
    s.send(b"\x11root\x00\x00");
    s.reply(vec![Reply::Err]);
    assert!(!s.movable(), "a failed change of user changes nothing");
    s.send(b"\x11root\x00\x00");
    s.reply(vec![Reply::Ok(vec![])]);
    assert!(s.movable());
    assert_eq!(s.state.database(), None);
    s.send(b"\x11root\x00\x00other\x00");
    s.reply(vec![Reply::Ok(vec![Track::Schema("other")])]);
    assert_eq!(
        s.state.database(),
        Some("other"),
        "the schema the new session reports counts"
    );
}

#[test]
fn a_query_too_long_to_classify_blocks() {
    let mut s = Session::new();
    let long = format!("INSERT INTO t VALUES ('{}')", "x".repeat(70_000));
    s.ok(&long);
    assert!(matches!(
        s.state.blockers()[..],
        [Blocker::UnclassifiedStatement { .. }]
    ));
}

#[test]
fn stored_program_bodies_are_one_statement() {
    let mut s = Session::new();
    s.ok("CREATE TEMPORARY TABLE t (a INT)");
    // Defining a procedure that drops `t` drops nothing.
    s.query(
        "CREATE PROCEDURE p() BEGIN DECLARE x INT; IF x THEN DROP TABLE t; END IF; \
         CASE x WHEN 1 THEN SELECT 2; END CASE; END",
        vec![Reply::Ok(vec![])],
    );
    assert!(!s.movable());
    s.query(
        "BEGIN NOT ATOMIC DECLARE x INT; SELECT 1; END; DROP TABLE t",
        vec![Reply::OkMore(vec![]), Reply::Ok(vec![])],
    );
    assert!(s.movable(), "{:?}", s.blocked_by());
}
