//! The simulated backend, driven directly by the scripted client's connection.

use std::collections::{BTreeMap, BTreeSet};

use ferry_core::packets::flags::command::*;
use ferry_core::packets::flags::status::*;
use ferry_core::query::{QueryClient, QueryOutput};
use ferry_sim::backend::{self, BackendSpec, Greeting, Server};
use ferry_sim::client::{execute_payload, Answer, ClientSpec, Conn};
use ferry_sim::sql::Value;
use ferry_sim::store::{Store, Write};
use ferry_sim::trace::Trace;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn spec(id: &str) -> BackendSpec {
    BackendSpec {
        id: id.into(),
        users: BTreeMap::from([("app".to_string(), "pw".to_string())]),
        databases: BTreeSet::from(["test".to_string()]),
        greeting: Greeting::Normal,
        reply_delay_ms: 0,
        seed: 7,
    }
}

fn client(track: bool, deprecate_eof: bool) -> ClientSpec {
    ClientSpec {
        name: "c1".into(),
        id: 1,
        user: "app".into(),
        password: "pw".into(),
        database: Some("test".into()),
        attributes: Vec::new(),
        deprecate_eof,
        session_track: track,
        script: Vec::new(),
        quiet: false,
        stuck_ms: 10_000,
        check_after_sleep: false,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn connect(server: &std::sync::Arc<Server>) -> DuplexStream {
    let (a, b) = tokio::io::duplex(1 << 20);
    tokio::spawn(backend::serve(server.clone(), b));
    a
}

async fn query(c: &mut Conn<DuplexStream>, sql: &str) -> Answer {
    let mut p = vec![COM_QUERY];
    p.extend_from_slice(sql.as_bytes());
    c.command(&p, None).await.unwrap()
}

fn rows(a: &Answer) -> Vec<Vec<Option<String>>> {
    match a {
        Answer::Rows(_, r, _) => r.clone(),
        other => panic!("not rows: {other:?}"),
    }
}

fn cell(a: &Answer) -> String {
    rows(a)[0][0].clone().unwrap_or_else(|| "NULL".into())
}

#[test]
fn sessions_transactions_and_shared_storage() {
    rt().block_on(async {
        let store = Store::new();
        let cn1 = Server::new(spec("cn1"), store.clone(), Trace::new());
        let cn2 = Server::new(spec("cn2"), store.clone(), Trace::new());
        for (track, eof) in [(false, false), (true, true), (false, true), (true, false)] {
            let mut a = Conn::login(connect(&cn1), &client(track, eof))
                .await
                .unwrap()
                .unwrap();
            let mut b = Conn::login(connect(&cn2), &client(track, eof))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(cell(&query(&mut a, "SELECT @@hostname").await), "cn1");
            assert_eq!(
                cell(&query(&mut a, "SELECT CONNECTION_ID()").await),
                a.conn_id.to_string()
            );
            query(&mut a, "DELETE FROM t WHERE k = 1").await;
            query(&mut a, "BEGIN").await;
            assert_eq!(a.status & SERVER_STATUS_IN_TRANS, SERVER_STATUS_IN_TRANS);
            query(&mut a, "INSERT INTO t (k, v) VALUES (1, 'a')").await;
            // Not visible elsewhere before COMMIT, visible to the writer.
            assert_eq!(rows(&query(&mut b, "SELECT v FROM t WHERE k = 1").await).len(), 0);
            assert_eq!(cell(&query(&mut a, "SELECT v FROM t WHERE k = 1").await), "a");
            query(&mut a, "COMMIT").await;
            assert_eq!(a.status & SERVER_STATUS_IN_TRANS, 0);
            assert_eq!(cell(&query(&mut b, "SELECT v FROM t WHERE k = 1").await), "a");
            // Duplicate keys are refused.
            let Answer::Err(e) = query(&mut b, "INSERT INTO t (k, v) VALUES (1, 'b')").await else {
                panic!()
            };
            assert_eq!(e.code, 1062);
            // Autocommit updates commit at once; rollback discards.
            query(&mut b, "UPDATE t SET v = 'b' WHERE k = 1").await;
            query(&mut a, "START TRANSACTION").await;
            query(&mut a, "UPDATE t SET v = 'zz' WHERE k = 1").await;
            query(&mut a, "ROLLBACK").await;
            assert_eq!(cell(&query(&mut a, "SELECT v FROM t WHERE k = 1").await), "b");
            // Variables.
            query(&mut a, "SET @u = 5, SESSION time_zone = '+01:00'").await;
            query(&mut a, "SET NAMES latin1").await;
            assert_eq!(
                rows(&query(&mut a, "SELECT @u, @@time_zone, @@character_set_client, @@autocommit").await),
                vec![vec![Some("5".into()), Some("+01:00".into()), Some("latin1".into()), Some("1".into())]]
            );
            let uv = query(
                &mut a,
                "SELECT VARIABLE_NAME, VARIABLE_VALUE, VARIABLE_TYPE FROM information_schema.USER_VARIABLES",
            )
            .await;
            assert_eq!(rows(&uv), vec![vec![Some("u".into()), Some("5".into()), Some("INT".into())]]);
            // LAST_INSERT_ID.
            query(&mut a, "DO LAST_INSERT_ID(42)").await;
            assert_eq!(cell(&query(&mut a, "SELECT LAST_INSERT_ID()").await), "42");
            let Answer::Ok(ok) = query(&mut a, "INSERT INTO auto (v) VALUES ('x')").await else {
                panic!()
            };
            assert!(ok.last_insert_id > 0);
            // Prepared statements.
            let mut p = vec![COM_STMT_PREPARE];
            p.extend_from_slice(b"SELECT v FROM t WHERE k = ?");
            let Answer::Prepared(id, 1, 1) = a.command(&p, None).await.unwrap() else {
                panic!()
            };
            let r = a
                .command(&execute_payload(id, &[Value::Int(1)]), None)
                .await
                .unwrap();
            assert_eq!(rows(&r), vec![vec![Some("b".into())]]);
            let mut close = vec![COM_STMT_CLOSE];
            close.extend_from_slice(&id.to_le_bytes());
            assert_eq!(a.command(&close, None).await.unwrap(), Answer::None);
            let Answer::Err(e) = a
                .command(&execute_payload(id, &[Value::Int(1)]), None)
                .await
                .unwrap()
            else {
                panic!()
            };
            assert_eq!(e.code, 1243);
            // A big result.
            assert_eq!(rows(&query(&mut a, "SELECT seq FROM seq_1_to_5000").await).len(), 5000);
            // Errors.
            let Answer::Err(e) = query(&mut a, "SELECT @@nope").await else { panic!() };
            assert_eq!(e.code, 1193);
            let Answer::Err(e) = query(&mut a, "FROB").await else { panic!() };
            assert_eq!(e.code, 1064);
            a.quit().await;
            b.quit().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(cn1.live_connections(), 0);
        assert_eq!(cn2.live_connections(), 0);
        let log = store.log();
        assert!(log.iter().any(|c| c.writes
            == vec![Write {
                table: "test.t".into(),
                key: 1,
                value: Some("a".into())
            }]));
    });
}

#[test]
fn trackers_report_what_changed() {
    rt().block_on(async {
        let cn1 = Server::new(spec("cn1"), Store::new(), Trace::new());
        let mut a = Conn::login(connect(&cn1), &client(true, true))
            .await
            .unwrap()
            .unwrap();
        query(&mut a, ferry_core::login::backend::TRACKER_SETUP).await;
        let Answer::Ok(ok) = query(&mut a, "BEGIN").await else {
            panic!()
        };
        let items = ferry_core::packets::session_state::parse(ok.session_state.as_deref().unwrap())
            .unwrap();
        assert!(
            items.iter().any(|i| i.opens_transaction() == Some(true)),
            "{items:?}"
        );
        let Answer::Ok(ok) = query(&mut a, "COMMIT").await else {
            panic!()
        };
        let items = ferry_core::packets::session_state::parse(ok.session_state.as_deref().unwrap())
            .unwrap();
        assert!(
            items.iter().any(|i| i.opens_transaction() == Some(false)),
            "{items:?}"
        );
        let Answer::Ok(ok) = query(&mut a, "SET sql_mode = 'ANSI'").await else {
            panic!()
        };
        let items = ferry_core::packets::session_state::parse(ok.session_state.as_deref().unwrap())
            .unwrap();
        assert!(
            items.contains(&ferry_core::packets::TrackItem::SystemVariable {
                name: b"sql_mode".to_vec(),
                value: b"ANSI".to_vec()
            })
        );
        assert!(items.contains(&ferry_core::packets::TrackItem::StateChange(true)));
        let Answer::Ok(ok) = query(&mut a, "USE test").await else {
            panic!()
        };
        let items = ferry_core::packets::session_state::parse(ok.session_state.as_deref().unwrap())
            .unwrap();
        assert!(items.contains(&ferry_core::packets::TrackItem::Schema(b"test".to_vec())));
    });
}

#[test]
fn ferrys_own_login_and_settings_query_work() {
    rt().block_on(async {
        let cn1 = Server::new(spec("cn1"), Store::new(), Trace::new());
        let mut stream = connect(&cn1);
        let mut qc = QueryClient::new("app", "pw");
        let mut buf = [0u8; 4096];
        let mut answers = Vec::new();
        let mut queried = false;
        while answers.is_empty() {
            let n = stream.read(&mut buf).await.unwrap();
            qc.handle(&buf[..n]);
            while let Some(o) = qc.poll_output() {
                match o {
                    QueryOutput::Send(b) => stream.write_all(&b).await.unwrap(),
                    QueryOutput::Ready if !queried => {
                        queried = true;
                        qc.query(ferry_core::client_trackers::SETTINGS_QUERY);
                    }
                    QueryOutput::Answer(a) => answers.push(a),
                    QueryOutput::Failed(why) => panic!("{why}"),
                    QueryOutput::Ready => {}
                    QueryOutput::StartTls => panic!("no TLS in the simulator"),
                }
            }
        }
        let rs = answers.pop().unwrap().unwrap();
        assert_eq!(rs.rows[0][1].as_deref(), Some("1"));
        assert_eq!(rs.rows[0][3].as_deref(), Some("OFF"));
    });
}

#[test]
fn kill_sleep_and_locks() {
    rt().block_on(async {
        let cn1 = Server::new(spec("cn1"), Store::new(), Trace::new());
        let mut a = Conn::login(connect(&cn1), &client(false, true))
            .await
            .unwrap()
            .unwrap();
        let mut b = Conn::login(connect(&cn1), &client(false, true))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cell(&query(&mut a, "SELECT GET_LOCK('x', 0)").await), "1");
        assert_eq!(cell(&query(&mut b, "SELECT GET_LOCK('x', 0.1)").await), "0");
        let a_id = a.conn_id;
        let sleeper = tokio::spawn(async move {
            let answer = query(&mut a, "SELECT SLEEP(100)").await;
            (a, answer)
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        query(&mut b, &format!("KILL QUERY {a_id}")).await;
        let (mut a, answer) = sleeper.await.unwrap();
        assert_eq!(cell(&answer), "1");
        let Answer::Ok(_) = query(&mut b, &format!("KILL {a_id}")).await else {
            panic!()
        };
        let mut p = vec![COM_QUERY];
        p.extend_from_slice(b"SELECT 1");
        assert!(a.command(&p, None).await.is_err());
        // The lock went with its connection.
        assert_eq!(cell(&query(&mut b, "SELECT GET_LOCK('x', 0)").await), "1");
        let Answer::Err(e) = query(&mut b, "KILL 999999").await else {
            panic!()
        };
        assert_eq!(e.code, 1094);
    });
}

#[test]
fn what_a_migration_runs_to_read_and_restore_user_variables() {
    rt().block_on(async {
        let cn1 = Server::new(spec("cn1"), Store::new(), Trace::new());
        let mut a = Conn::login(connect(&cn1), &client(false, true))
            .await
            .unwrap()
            .unwrap();
        let Answer::Ok(_) = query(
            &mut a,
            "SET @`s` = _utf8mb4 X'6162' COLLATE utf8mb4_general_ci, @`n` = CAST(NULL AS SIGNED), \
             @`d` = 1.5e0, @`e` = CONVERT('' USING utf8mb4) COLLATE utf8mb4_general_ci, \
             @`x` = CAST(3 AS DECIMAL(65,0)), @`i` = -4",
        )
        .await
        else {
            panic!()
        };
        let types = query(
            &mut a,
            "SELECT VARIABLE_NAME, VARIABLE_TYPE, CHARACTER_SET_NAME FROM information_schema.USER_VARIABLES ORDER BY VARIABLE_NAME",
        )
        .await;
        let got: Vec<(String, String)> = rows(&types)
            .into_iter()
            .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
            .collect();
        let want: Vec<(String, String)> = [
            ("d", "DOUBLE"),
            ("e", "VARCHAR"),
            ("i", "INT"),
            ("n", "INT"),
            ("s", "VARCHAR"),
            ("x", "DECIMAL"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
        let values = query(
            &mut a,
            "SELECT HEX(@`s`), COLLATION(@`s`), @`s` IS NULL, @`d`, @`n`, @`i`, HEX(@`e`), @`e` IS NULL",
        )
        .await;
        assert_eq!(
            rows(&values),
            vec![vec![
                Some("6162".into()),
                Some("utf8mb4_general_ci".into()),
                Some("0".into()),
                Some("1.5".into()),
                None,
                Some("-4".into()),
                Some("".into()),
                Some("0".into()),
            ]]
        );
        let Answer::Ok(_) = query(&mut a, "SET SESSION character_set_results = NULL").await else {
            panic!()
        };
        let Answer::Ok(_) = query(&mut a, "SET SESSION sql_mode = DEFAULT").await else {
            panic!()
        };
    });
}
