//! The tracker against a reference model.
//!
//! A generator plays client and server: random commands with well-formed
//! responses of every shape (random status flags, multiple results, cursors,
//! long data, LOCAL INFILE, change-user exchanges, result sets long enough to
//! wrap sequence ids), serialised to bytes, sometimes with tiny frames so every
//! packet spans continuation frames, fed in random chunk sizes in the order a
//! real exchange would. The model knows what the tracker must report at every
//! command boundary; the tracker must agree. Batches of commands are also
//! pipelined (written ahead of their responses, in every interleaving a
//! client may produce), with MariaDB's "last prepared" id standing in for the
//! statement prepared last. Arbitrary bytes must never panic.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, BytesMut};
use ferry_core::packets::codec::{put_lenenc_bytes, put_lenenc_int};
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::flags::command::*;
use ferry_core::packets::flags::status::*;
use ferry_core::packets::{EofPacket, OkPacket};
use ferry_core::tracker::{Tracker, LAST_PREPARED};
use ferry_core::wire::{write_packet_chunked, MAX_FRAME_PAYLOAD};
use quickcheck::{QuickCheck, TestResult};

/// A tiny deterministic generator (quickcheck supplies the seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Client,
    Server,
}

/// What the tracker must report once a step is over.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    idle: bool,
    in_transaction: bool,
    cursors: Vec<u32>,
    long_data: Vec<u32>,
    safe_point: bool,
    last_prepared: Option<u32>,
}

/// One command and its response, as byte segments in exchange order.
struct Step {
    name: String,
    segments: Vec<(Dir, Vec<u8>)>,
    /// After the first (client) segment the tracker must be busy.
    busy_after_command: bool,
}

struct Model {
    rng: Rng,
    caps: u32,
    frame: usize,
    params: BTreeMap<u32, u16>,
    next_id: u32,
    in_transaction: bool,
    cursors: BTreeSet<u32>,
    long_data: BTreeSet<u32>,
    /// The statement MariaDB's "last prepared" id names (none after a failed prepare or its close).
    last_prepared: Option<u32>,
    /// Generating a pipelined batch: no command whose response needs the client mid-way.
    pipelining: bool,
    seq: u8,
    segments: Vec<(Dir, Vec<u8>)>,
}

impl Model {
    fn deprecate(&self) -> bool {
        self.caps & CLIENT_DEPRECATE_EOF != 0
    }

    fn expected(&self) -> Expected {
        Expected {
            idle: true,
            in_transaction: self.in_transaction,
            cursors: self.cursors.iter().copied().collect(),
            long_data: self.long_data.iter().copied().collect(),
            safe_point: !self.in_transaction
                && self.cursors.is_empty()
                && self.long_data.is_empty(),
            last_prepared: self.last_prepared,
        }
    }

    fn put(&mut self, dir: Dir, payload: &[u8]) {
        let mut out = BytesMut::new();
        self.seq = write_packet_chunked(&mut out, self.seq, payload, self.frame);
        match self.segments.last_mut() {
            Some((d, bytes)) if *d == dir => bytes.extend_from_slice(&out),
            _ => self.segments.push((dir, out.to_vec())),
        }
    }

    fn command(&mut self, payload: &[u8]) {
        self.seq = 0;
        self.put(Dir::Client, payload);
    }

    fn status(&mut self, extra: u16) -> u16 {
        let mut s = extra;
        if self.rng.chance(50) {
            s |= SERVER_STATUS_AUTOCOMMIT;
        }
        match self.rng.below(10) {
            0..=2 => s |= SERVER_STATUS_IN_TRANS,
            3 => s |= SERVER_STATUS_IN_TRANS_READONLY | SERVER_STATUS_IN_TRANS,
            _ => {}
        }
        if self.rng.chance(20) {
            s |= SERVER_QUERY_NO_INDEX_USED;
        }
        self.in_transaction = s & SERVER_STATUS_IN_TRANS != 0;
        s
    }

    fn ok(&mut self, extra: u16) {
        let status = self.status(extra);
        let mut out = BytesMut::new();
        OkPacket {
            affected_rows: self.rng.below(1000),
            last_insert_id: self.rng.below(3) * 70_000,
            status,
            info: if self.rng.chance(20) {
                b"Rows matched: 1".to_vec()
            } else {
                Vec::new()
            },
            ..OkPacket::default()
        }
        .write(&mut out, self.caps);
        self.put(Dir::Server, &out);
    }

    fn eof(&mut self, extra: u16) {
        let status = self.status(extra);
        let mut out = BytesMut::new();
        EofPacket {
            warnings: 1,
            status,
        }
        .write(&mut out);
        self.put(Dir::Server, &out);
    }

    /// The end of a result set: EOF, or OK with header 0xFE under `CLIENT_DEPRECATE_EOF`.
    fn terminator(&mut self, extra: u16) {
        if self.deprecate() {
            let status = self.status(extra);
            let mut out = BytesMut::new();
            OkPacket {
                header: 0xFE,
                status,
                warnings: 2,
                ..OkPacket::default()
            }
            .write(&mut out, self.caps);
            self.put(Dir::Server, &out);
        } else {
            self.eof(extra);
        }
    }

    fn err(&mut self) {
        self.put(Dir::Server, b"\xff\x7a\x04#42S02Table 'x' doesn't exist");
    }

    fn defs(&mut self, n: u64) {
        for i in 0..n {
            let mut out = BytesMut::new();
            for s in ["def", "db", "t", "t", "col", "col"] {
                put_lenenc_bytes(&mut out, s.as_bytes());
            }
            out.put_u8(0x0c);
            out.put_slice(&[0x21, 0, i as u8, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
            self.put(Dir::Server, &out);
        }
    }

    fn rows(&mut self, binary: bool) {
        let n = match self.rng.below(10) {
            0 => 300 + self.rng.below(300),
            1..=3 => 0,
            _ => self.rng.below(6),
        };
        for _ in 0..n {
            let mut out = BytesMut::new();
            if binary {
                out.put_u8(0);
                out.put_u8(0);
            }
            // Values that start with every tricky byte: 0x00 (empty), 0xFB (NULL), 0xFC (long).
            match self.rng.below(4) {
                0 => put_lenenc_bytes(&mut out, b""),
                1 if !binary => out.put_u8(0xfb),
                2 => put_lenenc_bytes(&mut out, &vec![b'v'; 251 + self.rng.below(400) as usize]),
                _ => put_lenenc_bytes(&mut out, b"value"),
            }
            self.put(Dir::Server, &out);
        }
    }

    /// One result set; returns false if it was a cursor (no rows follow).
    fn result_set(&mut self, binary: bool, more: u16, cursor: bool) {
        let n = 1 + self.rng.below(3);
        let mut out = BytesMut::new();
        put_lenenc_int(&mut out, n);
        self.put(Dir::Server, &out);
        self.defs(n);
        if cursor {
            self.terminator(SERVER_STATUS_CURSOR_EXISTS);
            return;
        }
        // A stored program's own cursor leaks its flag onto the results of a
        // CALL or compound statement (which always have more results behind them).
        let leak = if more != 0 && self.rng.chance(30) {
            SERVER_STATUS_CURSOR_EXISTS
        } else {
            0
        };
        if !self.deprecate() {
            // The status after the definitions already says whether more results follow.
            self.eof(more | leak);
        }
        self.rows(binary);
        self.terminator(more | leak);
    }

    /// Results of a query or execute: some results, maybe ending with an ERR.
    fn results(&mut self, binary: bool, stmt: Option<(u32, bool)>) {
        let count = 1 + self.rng.below(3);
        for i in 0..count {
            let last = i + 1 == count;
            let more = if last { 0 } else { SERVER_MORE_RESULTS_EXISTS };
            match self.rng.below(if binary { 3 } else { 4 }) {
                _ if last && self.rng.chance(15) => {
                    self.err();
                    return;
                }
                0 => self.ok(more),
                1 | 2 => {
                    let cursor = matches!(stmt, Some((_, true))) && count == 1;
                    self.result_set(binary, more, cursor);
                    if cursor {
                        self.cursors.insert(stmt.unwrap().0);
                    }
                }
                _ if self.pipelining => self.ok(more),
                _ => {
                    self.put(Dir::Server, b"\xfb/tmp/data.csv");
                    for _ in 0..self.rng.below(3) {
                        self.put(Dir::Client, b"1,2,3\n4,5,6\n");
                    }
                    self.put(Dir::Client, b"");
                    if self.rng.chance(20) {
                        self.err();
                        return;
                    }
                    self.ok(more);
                }
            }
        }
    }

    fn forget_statements(&mut self) {
        self.last_prepared = None;
        self.params.clear();
        self.cursors.clear();
        self.long_data.clear();
    }

    fn any_stmt(&mut self) -> Option<u32> {
        let ids: Vec<u32> = self.params.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[self.rng.below(ids.len() as u64) as usize])
    }

    /// The id the client writes for `id`: sometimes "last prepared" when that is what it names.
    fn wire_id(&mut self, id: u32) -> u32 {
        if self.last_prepared == Some(id) && self.rng.chance(50) {
            LAST_PREPARED
        } else {
            id
        }
    }

    fn stmt_payload(&mut self, code: u8, id: u32, extra: &[u8]) -> Vec<u8> {
        let mut p = vec![code];
        p.extend_from_slice(&self.wire_id(id).to_le_bytes());
        p.extend_from_slice(extra);
        p
    }

    fn step(&mut self) -> Step {
        self.segments.clear();
        let mut busy = true;
        let name;
        match self.rng.below(17) {
            0..=3 => {
                name = "query".into();
                self.command(b"\x03SELECT 1; INSERT INTO t VALUES (1)");
                self.results(false, None);
            }
            4 => {
                name = "prepare".into();
                self.command(b"\x16SELECT * FROM t WHERE a = ?");
                if self.rng.chance(15) {
                    self.err();
                    self.last_prepared = None;
                } else {
                    let id = self.next_id;
                    self.next_id += 1;
                    let params = self.rng.below(4) as u16;
                    let columns = self.rng.below(4) as u16;
                    let mut p = vec![0];
                    p.extend_from_slice(&id.to_le_bytes());
                    p.extend_from_slice(&columns.to_le_bytes());
                    p.extend_from_slice(&params.to_le_bytes());
                    p.extend_from_slice(&[0, 0, 0]);
                    self.put(Dir::Server, &p);
                    for n in [params, columns] {
                        if n > 0 {
                            self.defs(n as u64);
                            if !self.deprecate() {
                                self.eof(0);
                            }
                        }
                    }
                    self.params.insert(id, params);
                    self.last_prepared = Some(id);
                }
            }
            5..=6 => {
                let Some(id) = self.any_stmt() else {
                    return self.step();
                };
                name = format!("execute {id}");
                let cursor = self.rng.chance(40);
                let n = self.params[&id] as usize;
                let mut extra = vec![cursor as u8, 1, 0, 0, 0];
                if n > 0 {
                    extra.extend(std::iter::repeat_n(0, n.div_ceil(8)));
                    extra.push(1);
                    for _ in 0..n {
                        extra.extend_from_slice(&[0x08, 0x00]);
                    }
                    for _ in 0..n {
                        extra.extend_from_slice(&7u64.to_le_bytes());
                    }
                }
                let payload = self.stmt_payload(COM_STMT_EXECUTE, id, &extra);
                self.command(&payload);
                self.cursors.remove(&id);
                self.long_data.remove(&id);
                self.results(true, Some((id, cursor)));
            }
            7 => {
                let Some(&id) = self.cursors.iter().next() else {
                    return self.step();
                };
                name = format!("fetch {id}");
                let payload = self.stmt_payload(COM_STMT_FETCH, id, &5u32.to_le_bytes());
                self.command(&payload);
                if self.rng.chance(10) {
                    self.err();
                } else {
                    self.rows(true);
                    let last = self.rng.chance(50);
                    let flags = SERVER_STATUS_CURSOR_EXISTS
                        | if last { SERVER_STATUS_LAST_ROW_SENT } else { 0 };
                    self.terminator(flags);
                    if last {
                        self.cursors.remove(&id);
                    }
                }
            }
            8 => {
                let id = self.any_stmt().unwrap_or(99);
                name = format!("close {id}");
                busy = false;
                let payload = self.stmt_payload(COM_STMT_CLOSE, id, &[]);
                self.command(&payload);
                if self.last_prepared == Some(id) {
                    self.last_prepared = None;
                }
                self.params.remove(&id);
                self.cursors.remove(&id);
                self.long_data.remove(&id);
            }
            9 => {
                let id = self.any_stmt().unwrap_or(99);
                name = format!("long data {id}");
                busy = false;
                let payload = self.stmt_payload(COM_STMT_SEND_LONG_DATA, id, b"\x00\x00chunk");
                self.command(&payload);
                // The server ignores long data for a statement it does not have.
                if self.params.contains_key(&id) {
                    self.long_data.insert(id);
                }
            }
            10 => {
                let id = self.any_stmt().unwrap_or(99);
                name = format!("reset {id}");
                let payload = self.stmt_payload(COM_STMT_RESET, id, &[]);
                self.command(&payload);
                self.cursors.remove(&id);
                self.long_data.remove(&id);
                self.ok(0);
            }
            11 => {
                name = "ping / init db / kill".into();
                let cmd: &[u8] = match self.rng.below(3) {
                    0 => &[COM_PING],
                    1 => b"\x02db",
                    _ => &[COM_PROCESS_KILL, 7, 0, 0, 0],
                };
                self.command(cmd);
                if self.rng.chance(20) {
                    self.err()
                } else {
                    self.ok(0)
                }
            }
            12 => {
                name = "statistics / set option".into();
                if self.rng.chance(50) {
                    self.command(&[COM_STATISTICS]);
                    self.put(Dir::Server, b"Uptime: 1  Threads: 2  Questions: 3");
                } else {
                    self.command(&[COM_SET_OPTION, 1, 0]);
                    if self.rng.chance(50) {
                        self.eof(0)
                    } else {
                        self.ok(0)
                    }
                }
            }
            13 => {
                name = "field list".into();
                self.command(b"\x04t\x00");
                if self.rng.chance(20) {
                    self.err();
                } else {
                    let n = self.rng.below(4);
                    self.defs(n);
                    self.terminator(0);
                }
            }
            14 if self.pipelining => return self.step(),
            14 => {
                name = "change user".into();
                self.command(b"\x11app\x00\x14aaaaaaaaaaaaaaaaaaaa\x00");
                if self.rng.chance(50) {
                    self.put(
                        Dir::Server,
                        b"\xfemysql_native_password\x00abcdefghijabcdefghij\x00",
                    );
                    self.put(Dir::Client, &[7; 20]);
                }
                if self.rng.chance(30) {
                    self.put(Dir::Server, b"\x01\x04");
                    self.put(Dir::Client, b"secret\x00");
                }
                if self.rng.chance(15) {
                    self.err();
                } else {
                    self.ok(0);
                    self.forget_statements();
                }
            }
            16 => {
                let Some(id) = self.any_stmt() else {
                    return self.step();
                };
                name = format!("bulk execute {id}");
                // MariaDB's bulk execute: types (sometimes), then rows of indicator + value.
                let n = self.params[&id] as usize;
                let types = self.rng.chance(50);
                let flags: u16 = if types { 128 } else { 0 };
                let mut extra = flags.to_le_bytes().to_vec();
                if types {
                    extra.extend(std::iter::repeat_n([0x08, 0x00], n).flatten());
                }
                for _ in 0..self.rng.below(4) {
                    for _ in 0..n {
                        extra.push(0);
                        extra.extend_from_slice(&7u64.to_le_bytes());
                    }
                }
                let payload = self.stmt_payload(COM_STMT_BULK_EXECUTE, id, &extra);
                self.command(&payload);
                self.cursors.remove(&id);
                self.long_data.remove(&id);
                // An OK, or results (RETURNING, unit results) as for an execute.
                self.results(true, None);
            }
            _ => {
                name = "reset connection".into();
                self.command(&[COM_RESET_CONNECTION]);
                self.ok(0);
                self.forget_statements();
            }
        }
        Step {
            name,
            segments: std::mem::take(&mut self.segments),
            busy_after_command: busy,
        }
    }
}

fn observed(t: &Tracker) -> Expected {
    Expected {
        idle: t.is_idle(),
        in_transaction: t.in_transaction(),
        cursors: t.open_cursors().collect(),
        long_data: t.long_data_pending().collect(),
        safe_point: t.safe_point(),
        last_prepared: t.last_prepared(),
    }
}

/// Feeds `bytes` in random chunk sizes, draining events after each chunk.
fn feed(t: &mut Tracker, rng: &mut Rng, dir: Dir, bytes: &[u8]) -> Result<(), String> {
    let max = match rng.below(4) {
        0 => 1,
        1 => 7,
        2 => 300,
        _ => 1 << 16,
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (1 + rng.below(max) as usize).min(rest.len());
        let r = match dir {
            Dir::Client => t.client_bytes(&rest[..n]),
            Dir::Server => t.server_bytes(&rest[..n]),
        };
        r.map_err(|e| e.to_string())?;
        while t.poll_event().is_some() {}
        rest = &rest[n..];
    }
    Ok(())
}

fn run(seed: u64, deprecate: bool, small_frames: bool, steps: u8) -> TestResult {
    let mut rng = Rng(seed | 1);
    let caps = CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_MULTI_RESULTS
        | CLIENT_PS_MULTI_RESULTS
        | CLIENT_SESSION_TRACK
        | if deprecate { CLIENT_DEPRECATE_EOF } else { 0 };
    let frame = if small_frames {
        2 + rng.below(14) as usize
    } else {
        MAX_FRAME_PAYLOAD
    };
    let mut tracker = Tracker::new(caps).with_frame_limit(frame);
    let mut model = Model {
        rng: Rng(rng.next() | 1),
        caps,
        frame,
        params: BTreeMap::new(),
        next_id: 1,
        in_transaction: false,
        cursors: BTreeSet::new(),
        long_data: BTreeSet::new(),
        last_prepared: None,
        pipelining: false,
        seq: 0,
        segments: Vec::new(),
    };
    let mut history = Vec::new();
    let mut done = 0;
    while done < steps as usize {
        done += 1;
        if rng.chance(30) {
            match pipelined_batch(&mut tracker, &mut model, &mut rng, &mut history) {
                Ok(k) => done += k - 1,
                Err(e) => {
                    return TestResult::error(format!("{e} after {history:?} (frame {frame})"))
                }
            }
            let (want, got) = (model.expected(), observed(&tracker));
            if want != got {
                return TestResult::error(format!(
                    "after {history:?} (frame {frame}): model {want:?}, tracker {got:?}"
                ));
            }
            continue;
        }
        let step = model.step();
        history.push(step.name.clone());
        for (i, (dir, bytes)) in step.segments.iter().enumerate() {
            if let Err(e) = feed(&mut tracker, &mut rng, *dir, bytes) {
                return TestResult::error(format!("{e} after {history:?} (frame {frame})"));
            }
            if i == 0 && step.busy_after_command && tracker.is_idle() {
                return TestResult::error(format!("idle right after the command: {history:?}"));
            }
        }
        let (want, got) = (model.expected(), observed(&tracker));
        if want != got {
            return TestResult::error(format!(
                "after {history:?} (frame {frame}): model {want:?}, tracker {got:?}"
            ));
        }
    }
    TestResult::passed()
}

/// A few commands written ahead of their responses: each command reaches the
/// tracker before its response, in any interleaving with the earlier
/// responses; adjacent pieces of one direction may arrive in one read.
fn pipelined_batch(
    t: &mut Tracker,
    model: &mut Model,
    rng: &mut Rng,
    history: &mut Vec<String>,
) -> Result<usize, String> {
    model.pipelining = true;
    let k = 2 + rng.below(5) as usize;
    let mut commands = Vec::new();
    let mut responses = Vec::new();
    for _ in 0..k {
        let step = model.step();
        history.push(format!("pipelined {}", step.name));
        let mut segments = step.segments.into_iter();
        let (dir, command) = segments.next().expect("a command");
        assert_eq!(dir, Dir::Client, "a pipelined step starts with its command");
        let response: Vec<u8> = segments
            .inspect(|(d, _)| assert_eq!(*d, Dir::Server, "no client turn mid-response"))
            .flat_map(|(_, b)| b)
            .collect();
        commands.push(command);
        responses.push(response);
    }
    model.pipelining = false;
    let (mut c, mut s) = (0, 0);
    let mut pieces: Vec<(Dir, Vec<u8>)> = Vec::new();
    while s < k {
        // A response may come once its command was sent; a command any time.
        let dir = if c < k && (s == c || rng.chance(50)) {
            c += 1;
            (Dir::Client, &commands[c - 1])
        } else {
            s += 1;
            (Dir::Server, &responses[s - 1])
        };
        match pieces.last_mut() {
            Some((d, bytes)) if *d == dir.0 => bytes.extend_from_slice(dir.1),
            _ => pieces.push((dir.0, dir.1.clone())),
        }
    }
    for (dir, bytes) in pieces {
        feed(t, rng, dir, &bytes)?;
    }
    Ok(k)
}

#[test]
fn tracker_agrees_with_the_model_at_every_command_boundary() {
    QuickCheck::new()
        .tests(300)
        .quickcheck(run as fn(u64, bool, bool, u8) -> TestResult);
}

#[test]
fn arbitrary_bytes_never_panic_in_either_direction() {
    fn prop(chunks: Vec<(bool, Vec<u8>)>, deprecate: bool) -> bool {
        let caps = CLIENT_PROTOCOL_41 | if deprecate { CLIENT_DEPRECATE_EOF } else { 0 };
        let mut t = Tracker::new(caps);
        for (client, bytes) in chunks {
            let _ = if client {
                t.client_bytes(&bytes)
            } else {
                t.server_bytes(&bytes)
            };
            while t.poll_event().is_some() {}
        }
        true
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(Vec<(bool, Vec<u8>)>, bool) -> bool);
}

#[test]
fn arbitrary_bytes_after_a_valid_command_never_panic() {
    fn prop(command: u8, body: Vec<u8>, reply: Vec<Vec<u8>>) -> bool {
        let mut t = Tracker::new(CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK | CLIENT_DEPRECATE_EOF);
        let mut out = BytesMut::new();
        let mut p = vec![command % 0x20];
        p.extend_from_slice(&body);
        write_packet_chunked(&mut out, 0, &p, MAX_FRAME_PAYLOAD);
        let _ = t.client_bytes(&out);
        for r in reply {
            let mut out = BytesMut::new();
            write_packet_chunked(&mut out, 1, &r, MAX_FRAME_PAYLOAD);
            let _ = t.server_bytes(&out);
            while t.poll_event().is_some() {}
        }
        true
    }
    QuickCheck::new()
        .tests(3000)
        .quickcheck(prop as fn(u8, Vec<u8>, Vec<Vec<u8>>) -> bool);
}

#[test]
fn a_huge_announced_length_allocates_nothing_up_front() {
    // 16 MiB − 1 announced, then a continuation announcing another; only 4 + 2 bytes arrive.
    let mut t = Tracker::new(CLIENT_PROTOCOL_41);
    t.client_bytes(b"\x02\x00\x00\x00\x03x").unwrap();
    t.server_bytes(&[0xff, 0xff, 0xff, 1, 0x01]).unwrap();
    // The tracker holds a few header bytes and the collected prefix, not 16 MiB.
    assert!(!t.is_idle());
    assert_eq!(t.server_offset(), 5);
    let mut collected = 0;
    for _ in 0..1000 {
        t.server_bytes(&[0u8; 1000]).unwrap();
        collected += 1000;
    }
    assert_eq!(t.server_offset(), 5 + collected);
}
