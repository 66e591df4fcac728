//! Every recording under `scenarios/recorded/` replays through ferry with
//! the recorded responses; an altered response or a damaged file is caught.

use std::path::PathBuf;

use ferry_shell::record::Recording;
use ferry_sim::replay::{self, Alteration, Faults};

fn recorded_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/recorded")
}

fn recordings() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(recorded_dir())
        .expect("scenarios/recorded")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ferryrec"))
        .collect();
    files.sort();
    files
}

fn load(name: &str) -> Recording {
    let text = std::fs::read_to_string(recorded_dir().join(name)).expect("recording");
    Recording::parse(&text).expect("a valid recording")
}

#[test]
fn every_recording_replays() {
    let files = recordings();
    assert!(
        files.len() >= 3,
        "expected the checked-in recordings, found {files:?}"
    );
    for f in &files {
        if let Err(diff) = replay::replay_file(f, 1, &Faults::default()) {
            panic!("{}: {diff}", f.display());
        }
    }
}

#[test]
fn every_recording_replays_with_latency() {
    let faults = Faults::parse("latency=1..15").expect("faults");
    for f in &recordings() {
        for seed in [2, 3] {
            if let Err(diff) = replay::replay_file(f, seed, &faults) {
                panic!("{} seed {seed}: {diff}", f.display());
            }
        }
    }
}

#[test]
fn an_altered_response_is_caught() {
    let rec = load("mariadb-cli.ferryrec");
    let exchanges = replay::exchanges(&rec).expect("exchanges");
    // The SELECT * FROM rec.t: its last row packet.
    let (i, ex) = exchanges
        .iter()
        .enumerate()
        .find(|(_, e)| {
            e.client
                .first()
                .is_some_and(|p| p.payload.starts_with(b"\x03SELECT * FROM rec.t"))
        })
        .expect("the SELECT in the recording");
    let packet = ex.backend.len() - 2;
    let alteration = Alteration {
        exchange: i,
        packet,
        byte: ex.backend[packet].payload.len() - 1,
    };
    let err = replay::replay_altered(&rec, 1, &Faults::default(), Some(alteration))
        .expect_err("an altered row must be reported");
    assert!(err.contains("differs"), "{err}");
    assert!(err.contains("COM_QUERY SELECT * FROM rec.t"), "{err}");
}

#[test]
fn a_damaged_recording_is_caught() {
    let text = std::fs::read_to_string(recorded_dir().join("pymysql-transaction.ferryrec"))
        .expect("recording");
    // A response cut short: the recording ends inside a packet.
    let mut cut = text.trim_end().to_string();
    let last_b = cut.rfind(" B ").expect("a backend line");
    let line_end = cut[last_b..].find('\n').map_or(cut.len(), |n| last_b + n);
    cut.replace_range(line_end - 4..line_end, "");
    let rec = Recording::parse(&cut).expect("still parses");
    let err = replay::replay(&rec, 1, &Faults::default()).expect_err("must fail");
    assert!(!err.is_empty());
    // Bad hex is refused with its line.
    let bad = text.replacen(" C 1200", " C 12zz", 1);
    assert!(Recording::parse(&bad).unwrap_err().contains("bad hex"));
}

/// ferry's recording of a replayed session holds the same traffic as the original.
#[test]
fn recording_a_replay_gives_back_the_same_traffic() {
    let rec = load("pymysql-transaction.ferryrec");
    let dir = std::env::temp_dir().join(format!("ferry-replay-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    replay::replay_recorded(&rec, 1, &Faults::default(), &dir).expect("replays");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(files.len(), 1, "one session, one file: {files:?}");
    let text = std::fs::read_to_string(&files[0]).expect("recording");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !text.contains("replay"),
        "no password in a recording:\n{text}"
    );
    let again = Recording::parse(&text).expect("parses");
    for key in ["user", "client_user", "database", "capabilities"] {
        assert_eq!(again.get(key), rec.get(key), "{key}");
    }
    let bytes = |r: &Recording, dir| -> Vec<u8> {
        r.chunks
            .iter()
            .filter(|c| c.dir == dir)
            .flat_map(|c| c.bytes.iter().copied())
            .collect()
    };
    use ferry_shell::record::Direction;
    assert_eq!(
        bytes(&again, Direction::Client),
        bytes(&rec, Direction::Client)
    );
    assert_eq!(
        bytes(&again, Direction::Backend),
        bytes(&rec, Direction::Backend)
    );
}
