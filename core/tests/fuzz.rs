//! Fuzzing on stable Rust, in `cargo test`: every parser and machine that
//! reads bytes from a peer (or text from an operator) gets inputs mutated
//! from valid examples and plain random bytes from a seeded generator.
//!
//! Invariants: nothing panics; where a writer exists, what it writes parses
//! back to the same value. Each target runs `FERRY_FUZZ_ITERS` inputs
//! (default 20,000) or, with `FERRY_FUZZ_SECS`, as many as fit in that time;
//! `FERRY_FUZZ_SEED` changes the sequence. A failure prints the input and the
//! command that reproduces it; every crash found becomes a named test in the
//! `regressions` module at the bottom.

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_core::cluster::{BackendId, NoBackend};
use ferry_core::config::Config;
use ferry_core::labels::{glob_match, parse_login_name};
use ferry_core::login::UsersRead;
use ferry_core::migrate::{MoveRequest, Trigger};
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::ChangeUser;
use ferry_core::packets::{Handshake, HandshakeResponse};
use ferry_core::proxy_header::{self, HeaderSniffer, Parsed, ProxyHeaderError, Sniffed};
use ferry_core::session::{BackendHandle, Control, Input, Output, Session};
use ferry_core::tracker::Tracker;
use ferry_core::wire::{write_packet_chunked, PacketDecoder};
use ferry_core::Timestamp;
use support::*;

/// SplitMix64, seeded per target so targets do not disturb each other's sequence.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n.max(1) as u128) >> 64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Bytes that make parsers take their unusual branches.
const INTERESTING: &[u8] = &[
    0, 1, 0x7F, 0x80, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF, b':', b'?',
];

/// Changes `input` in one to eight random ways (bit flips, special bytes,
/// big lengths, inserts, deletes, copies, splices with another seed).
fn mutate(g: &mut Gen, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..1 + g.below(8) {
        let len = input.len();
        let at = g.below(len + 1);
        match g.below(9) {
            0 if len > 0 => input[at.min(len - 1)] ^= 1 << g.below(8),
            1 if len > 0 => input[at.min(len - 1)] = INTERESTING[g.below(INTERESTING.len())],
            2 if len > 0 => input[at.min(len - 1)] = g.byte(),
            3 => {
                let n = 1 + g.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| g.byte()).collect();
                input.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let n = 1 + g.below((len - at.min(len - 1)).min(32));
                input.drain(at.min(len - 1)..(at.min(len - 1) + n).min(len));
            }
            5 if len > 0 => {
                // Copy a range elsewhere (repeats a packet, a field, a length).
                let from = g.below(len);
                let n = 1 + g.below((len - from).min(64));
                let chunk = input[from..from + n].to_vec();
                input.splice(at..at, chunk);
            }
            6 => {
                // A big number where a length may be: 0xFF.., 0xFE + 8 bytes, a 3-byte frame length.
                let big: &[u8] = match g.below(4) {
                    0 => &[0xFF, 0xFF, 0xFF],
                    1 => &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
                    2 => &[0xFC, 0xFF, 0xFF],
                    _ => &[0, 0, 0],
                };
                let end = (at + big.len()).min(len);
                input.splice(at..end, big.iter().copied());
            }
            7 if !seeds.is_empty() => {
                let other = &seeds[g.below(seeds.len())];
                let from = g.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ => input.truncate(at),
        }
    }
    input.truncate(64 * 1024);
}

/// How many inputs, or for how long, each target runs.
fn budget() -> (u64, Option<Duration>) {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    match env("FERRY_FUZZ_SECS") {
        Some(secs) => (u64::MAX, Some(Duration::from_secs(secs))),
        None => (env("FERRY_FUZZ_ITERS").unwrap_or(20_000), None),
    }
}

fn seed_for(target: &str) -> u64 {
    let base = std::env::var("FERRY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0x00F0_0D5E_ED00);
    target
        .bytes()
        .fold(base, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}

/// Runs `check` on mutated seeds and random bytes; panics with a reproducer on the first failure.
fn fuzz(target: &str, seeds: &[Vec<u8>], check: impl Fn(&[u8])) {
    let (count, time) = budget();
    let mut g = Gen(seed_for(target));
    let started = Instant::now();
    let mut ran = 0u64;
    // Seeds first, unchanged: they must pass too.
    let mut inputs = seeds.iter().cloned();
    while ran < count {
        if time.is_some_and(|t| ran.is_multiple_of(256) && started.elapsed() >= t) {
            break;
        }
        let input = inputs.next().unwrap_or_else(|| {
            if seeds.is_empty() || g.below(10) == 0 {
                (0..g.below(300)).map(|_| g.byte()).collect()
            } else {
                let mut input = seeds[g.below(seeds.len())].clone();
                mutate(&mut g, &mut input, seeds);
                input
            }
        });
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "fuzz target {target} failed on input #{ran} ({what}):\n{input:02x?}\n\
                 turn it into a test in `regressions`; the run repeats with \
                 FERRY_FUZZ_SEED={:?} (same ITERS)",
                std::env::var("FERRY_FUZZ_SEED").unwrap_or_default()
            );
        }
        ran += 1;
    }
    eprintln!(
        "fuzz {target}: {ran} inputs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn bytes_of(b: &Bytes) -> Vec<u8> {
    b.to_vec()
}

// ---- targets -------------------------------------------------------------

fn check_framing(input: &[u8]) {
    // The first byte picks the frame size limit and the chunking of reads.
    let Some((&knobs, data)) = input.split_first() else {
        return;
    };
    let frame = [0xFF_FFFF, 4, 7, 64][knobs as usize % 4];
    let max = [1 << 16, 100, 16, 1 << 24][(knobs as usize >> 2) % 4];
    let step = 1 + (knobs as usize >> 4);
    let mut d = PacketDecoder::new(max).with_frame_limit(frame);
    let mut payload_bytes = 0;
    'read: for chunk in data.chunks(step) {
        d.extend(chunk);
        loop {
            match d.decode() {
                Ok(Some(p)) => {
                    assert!(p.payload.len() <= max);
                    payload_bytes += p.payload.len();
                }
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
    }
    assert!(payload_bytes <= data.len());

    // Write-then-parse: the input cut into payloads comes back as written.
    let payloads: Vec<&[u8]> = data.split(|b| *b == 0xAA).collect();
    let mut out = BytesMut::new();
    let mut seq = knobs;
    for p in &payloads {
        seq = write_packet_chunked(&mut out, seq, p, frame);
    }
    let mut d = PacketDecoder::new(1 << 24).with_frame_limit(frame);
    d.extend(&out);
    let mut seq = knobs;
    for p in &payloads {
        let got = d.decode().expect("own framing").expect("a whole packet");
        assert_eq!(got.seq, seq);
        assert_eq!(&got.payload[..], *p);
        seq = got.next_seq;
    }
    assert_eq!(d.decode(), Ok(None));
    assert_eq!(d.buffered(), 0);
}

#[test]
fn fuzz_framing() {
    let mut seeds = Vec::new();
    for p in [
        client_response(
            "acc1:app?region=eu",
            "secret",
            &FERRY_SALT,
            "mysql_native_password",
        ),
        backend_handshake(),
        backend_tracker_setup(),
    ] {
        let mut s = vec![0x10];
        s.extend_from_slice(&p);
        seeds.push(s);
    }
    seeds.push(vec![
        0x01, 4, 0, 0, 0, 1, 2, 3, 4, 4, 0, 0, 1, 5, 6, 7, 8, 0, 0, 0, 2,
    ]);
    fuzz("framing", &seeds, check_framing);
}

fn check_handshake_response(input: &[u8]) {
    if let Ok(r) = HandshakeResponse::parse(input) {
        let mut out = BytesMut::new();
        r.write(&mut out);
        let again = HandshakeResponse::parse(&out).expect("what ferry writes parses");
        assert_eq!(again, r, "write then parse");
    }
    if let Ok(h) = Handshake::parse(input) {
        // Any backend handshake must parse without panic; ferry's writer only
        // writes its own greeting's shape (a 20-byte salt and a plugin name), so
        // the round trip is checked on that shape.
        let ours = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
        let plugin_ok = h
            .auth_plugin
            .as_deref()
            .is_some_and(|p| !p.is_empty() && !p.contains('\0'));
        if h.capabilities & ours == ours
            && h.auth_data.len() == 20
            && !h.auth_data.contains(&0)
            && plugin_ok
        {
            let mut out = BytesMut::new();
            h.write(&mut out);
            assert_eq!(Handshake::parse(&out).expect("own handshake"), h);
        }
    }
}

fn payload_of(packet: &Bytes) -> Vec<u8> {
    packet[4..].to_vec()
}

#[test]
fn fuzz_handshake_response() {
    let seeds = vec![
        payload_of(&client_response(
            "acc1:app?region=eu",
            "secret",
            &FERRY_SALT,
            "mysql_native_password",
        )),
        payload_of(&client_response(
            "root",
            "",
            &FERRY_SALT,
            "caching_sha2_password",
        )),
        payload_of(&backend_handshake()),
    ];
    fuzz("handshake_response", &seeds, check_handshake_response);
}

const CHANGE_USER_CAPS: [u32; 3] = [
    CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_ATTRS,
    CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION,
    CLIENT_PROTOCOL_41,
];

fn check_change_user(input: &[u8]) {
    for caps in CHANGE_USER_CAPS {
        if let Ok(c) = ChangeUser::parse(input, caps) {
            let mut out = BytesMut::new();
            c.write(&mut out, caps);
            let again = ChangeUser::parse(&out, caps).expect("own COM_CHANGE_USER parses");
            assert_eq!(again, c, "write then parse, caps {caps:#x}");
        }
    }
}

#[test]
fn fuzz_change_user() {
    let mut seeds = Vec::new();
    for caps in CHANGE_USER_CAPS {
        let mut out = BytesMut::new();
        ChangeUser {
            user: "acc1:app".into(),
            auth_response: vec![7; 20],
            database: "test".into(),
            collation: Some(45),
            auth_plugin: Some("mysql_native_password".into()),
            attributes: Some(b"\x04_pid\x0212".to_vec()),
        }
        .write(&mut out, caps);
        seeds.push(out.to_vec());
    }
    fuzz("change_user", &seeds, check_change_user);
}

/// Feeds the tracker segments of `input`: each starts with a control byte
/// (high bit: which side; the rest: how many bytes follow).
fn check_tracker(input: &[u8]) {
    let Some((&caps_pick, mut rest)) = input.split_first() else {
        return;
    };
    let caps = [
        CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK | CLIENT_DEPRECATE_EOF | CLIENT_MULTI_RESULTS,
        CLIENT_PROTOCOL_41,
        CLIENT_PROTOCOL_41 | CLIENT_SESSION_TRACK | CLIENT_MULTI_STATEMENTS,
        0,
    ][caps_pick as usize % 4];
    let mut t = Tracker::new(caps);
    if caps_pick & 4 != 0 {
        t = t.with_frame_limit(8);
    }
    while let Some((&ctl, tail)) = rest.split_first() {
        let n = ((ctl & 0x7F) as usize).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        let fed = if ctl & 0x80 == 0 {
            t.client_bytes(chunk)
        } else {
            t.server_bytes(chunk)
        };
        while t.poll_event().is_some() {}
        let _ = (t.safe_point(), t.not_safe_because(), t.in_transaction());
        if fed.is_err() {
            return;
        }
    }
}

/// A tracker input: the client sends `client`, the server answers `server`.
fn exchange(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut s = vec![0];
    for (client, server) in pairs {
        for (side, bytes) in [(0u8, *client), (0x80, *server)] {
            for chunk in bytes.chunks(0x7F) {
                s.push(side | chunk.len() as u8);
                s.extend_from_slice(chunk);
            }
        }
    }
    s
}

#[test]
fn fuzz_tracker_from_both_sides() {
    let query = frame(0, |b| b.extend_from_slice(b"\x03BEGIN"));
    let ok_in_txn = frame(1, |b| b.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0]));
    let select = frame(0, |b| b.extend_from_slice(b"\x03SELECT 1"));
    let mut result = BytesMut::new();
    result.extend_from_slice(&frame(1, |b| b.extend_from_slice(&[1])));
    result.extend_from_slice(&frame(2, |b| {
        b.extend_from_slice(b"\x03def\0\0\0\x011\0\x0c\x3f\0\x01\0\0\0\x08\x81\0\0\0\0")
    }));
    result.extend_from_slice(&frame(3, |b| b.extend_from_slice(b"\x011")));
    result.extend_from_slice(&frame(4, |b| {
        b.extend_from_slice(&[0xFE, 0, 0, 2, 0, 0, 0])
    }));
    let prepare = frame(0, |b| b.extend_from_slice(b"\x16SELECT ?"));
    let prepare_ok = frame(1, |b| {
        b.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    });
    let param = frame(2, |b| {
        b.extend_from_slice(b"\x03def\0\0\0\x01?\0\x0c\x3f\0\0\0\0\0\x06\x80\0\0\0\0")
    });
    let execute = frame(0, |b| {
        b.extend_from_slice(&[
            0x17, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        ])
    });
    let infile = frame(0, |b| {
        b.extend_from_slice(b"\x03LOAD DATA LOCAL INFILE 'x' INTO TABLE t")
    });
    let infile_req = frame(1, |b| b.extend_from_slice(b"\xFBx"));
    let infile_end = [
        &frame(2, |b| b.extend_from_slice(b"1\n"))[..],
        &frame(3, |_| {}),
    ]
    .concat();
    let ok = frame(4, |b| b.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0]));
    let err = frame(1, |b| b.extend_from_slice(b"\xFF\x28\x04#42000oops"));
    let seeds = vec![
        exchange(&[(&query, &ok_in_txn), (&select, &result)]),
        exchange(&[
            (&prepare, &[&prepare_ok[..], &param].concat()),
            (&execute, &result),
        ]),
        exchange(&[(&infile, &infile_req), (&infile_end, &ok)]),
        exchange(&[(&select, &err), (&query, &ok_in_txn)]),
    ];
    fuzz("tracker", &seeds, check_tracker);
}

fn check_login_name(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    if let Ok(name) = parse_login_name(&text) {
        assert!(!name.user.is_empty());
        assert!(name.tenant.as_deref() != Some(""));
        let _ = name.routing_labels();
    }
    let (pattern, value) = text.split_at(text.find('|').unwrap_or(text.len()));
    let _ = glob_match(pattern, value);
}

#[test]
fn fuzz_login_names_and_globs() {
    let seeds: Vec<Vec<u8>> = [
        "acc1:app?region=eu-west,tier=gold",
        "acc1#app?region%3Aeu",
        "app?account=acc2, zone : b",
        "a:b:c?x=1,y=2",
        "eu-*|eu-west",
        "*a*b?c*|xaxxbyc",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("login_name", &seeds, check_login_name);
}

const CONFIG: &str = r#"(
    listen: "127.0.0.1:6009",
    admin_listen: "127.0.0.1:6010",
    users: [
        (user: "root", password: "111"),
        (tenant: "acc1", user: "app", password_hash: "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"),
    ],
    backends: [
        (id: "cn1", addr: "127.0.0.1:3307"),
        (id: "cn2", addr: "127.0.0.1:3308", labels: {"account": "acc1"}),
        (id: "cn3", addr: "[::1]:3309", labels: {"account": "acc1", "region": "eu-*"}, state: Draining),
    ],
    health: (interval_ms: 2000, fall: 3),
    rebalance: (tolerance: 0.3, moves_per_second: 50),
    user_source: (backend: "cn1", user: "ferry", password: "x"),
    max_packet_size: 1048576,
)
"#;

fn check_config(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let again = Config::parse(&config.to_ron()).expect("what to_ron writes parses");
        assert_eq!(again, config, "to_ron then parse");
    }
}

#[test]
fn fuzz_config_loader() {
    fuzz("config", &[CONFIG.as_bytes().to_vec()], check_config);
}

fn check_proxy_header(input: &[u8]) {
    let sniffed = HeaderSniffer::default().feed(input);
    match proxy_header::parse(input) {
        Ok(Parsed::Header(h, len)) => {
            assert!(len <= input.len() && len <= proxy_header::MAX_HEADER_LEN);
            assert_eq!(sniffed, Sniffed::Header { v1: false });
            let mut out = Vec::new();
            proxy_header::write(&h, &mut out);
            assert_eq!(proxy_header::parse(&out), Ok(Parsed::Header(h, out.len())));
        }
        Ok(Parsed::Incomplete(n)) => {
            assert!(n > input.len() && n <= proxy_header::MAX_HEADER_LEN);
            assert_ne!(sniffed, Sniffed::NoHeader);
        }
        Err(ProxyHeaderError::NotAHeader { v1: false }) => {
            assert_ne!(sniffed, Sniffed::Header { v1: false })
        }
        Err(_) => {}
    }
}

#[test]
fn fuzz_proxy_header() {
    let mut seeds = Vec::new();
    for h in [
        "PROXY 10.1.2.3:4000 127.0.0.1:6009",
        "PROXY [2001:db8::1]:5 [::1]:6009",
        "LOCAL",
    ] {
        let header = match h.split_once(' ') {
            Some((_, addrs)) => {
                let (s, d) = addrs.split_once(' ').unwrap();
                proxy_header::ProxyHeader::Proxy(Some(proxy_header::Addresses {
                    source: s.parse().unwrap(),
                    destination: d.parse().unwrap(),
                }))
            }
            None => proxy_header::ProxyHeader::Local,
        };
        let mut out = Vec::new();
        proxy_header::write(&header, &mut out);
        seeds.push(out);
    }
    // With a TLV (skipped) and a UNIX family header.
    let mut tlv = seeds[0].clone();
    tlv[15] += 5;
    tlv.extend_from_slice(&[0x02, 0, 2, b'h', b'i']);
    seeds.push(tlv);
    seeds.push(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec());
    fuzz("proxy_header", &seeds, check_proxy_header);
}

/// One whole session in memory: a real login (or garbage instead of one),
/// then garbage and fragments of real traffic from both sides, backends that
/// close and connect, timers, moves and closes asked for, in the order
/// `input` says. Every output the session asks for is answered as the pump would.
fn check_session(input: &[u8]) {
    let mut h = Harness::new();
    let mut rest = input;
    let logged_in = input.first().is_some_and(|b| b & 1 == 1);
    if logged_in {
        h.client_logs_in("acc1:app?region=eu", "secret");
        h.backend_greets("cn2");
        h.backend_accepts(2);
        rest = &input[1..];
    }
    let s: &mut Session = &mut h.session;
    let mut now = h.now;
    let mut connected = vec![BackendHandle(0)];
    let mut pending: Vec<Input> = Vec::new();
    let mut written = 0usize;
    let mut closed = h.closed.is_some();
    while let Some((&op, tail)) = rest.split_first() {
        if closed {
            return;
        }
        let n = (op as usize >> 3).min(tail.len());
        let (data, tail) = tail.split_at(n);
        rest = tail;
        let backend = *connected.last().unwrap_or(&BackendHandle(0));
        let input = match op & 7 {
            0..=2 => Input::ClientData(Bytes::copy_from_slice(data)),
            3 | 4 => Input::BackendData(backend, Bytes::copy_from_slice(data)),
            5 => {
                now = now + Duration::from_millis(op as u64 * 97);
                Input::Timeout
            }
            6 => match data.first().map(|b| b % 4) {
                Some(0) => Input::BackendClosed(backend),
                Some(1) => Input::Control(Control::Migrate(MoveRequest {
                    trigger: Trigger::Admin,
                    to: None,
                })),
                Some(2) => Input::Control(Control::Close("fuzz".into())),
                _ => Input::ClientClosed,
            },
            _ => Input::Shutdown,
        };
        pending.push(input);
        while let Some(input) = pending.pop() {
            s.handle(now, input);
            while let Some(out) = s.poll_output() {
                match out {
                    Output::ToClient(b) | Output::ToBackend(_, b) => written += b.len(),
                    Output::Route(_) => pending.push(Input::RouteFailed(NoBackend {
                        tenant: None,
                        labels: Default::default(),
                    })),
                    Output::Connect(handle, _) => {
                        connected.push(handle);
                        pending.push(Input::BackendConnected(handle));
                    }
                    Output::Transfer(t) => {
                        let mut to = t.from.clone();
                        to.backend = BackendId("cn3".into());
                        pending.push(Input::Transferred(Ok(to)));
                    }
                    Output::RunElsewhere(_) => {
                        pending.push(Input::RanElsewhere(Err("not here".into())))
                    }
                    Output::Locate => pending.push(Input::Located(Vec::new())),
                    Output::ReadUsers(_) => pending.push(Input::UsersRead(UsersRead::NoSource)),
                    Output::CloseBackend(handle) => connected.retain(|c| *c != handle),
                    Output::Close(_) => closed = true,
                    // No answer is due; the next bytes are taken as decrypted.
                    Output::StartTls(_) | Output::BackendTls(_) => {}
                    Output::TransferBack { .. }
                    | Output::CloseSession { .. }
                    | Output::Event(_) => {}
                }
            }
            if let Some(t) = s.poll_timeout() {
                assert!(t >= Timestamp::ZERO);
            }
        }
    }
    // What ferry wrote is bounded by what it was given plus its own small packets.
    assert!(
        written <= 64 * input.len() + 64 * 1024,
        "{written} bytes written"
    );
}

#[test]
fn fuzz_whole_session_with_garbage_from_both_sides() {
    let query = bytes_of(&frame(0, |b| b.extend_from_slice(b"\x03SET @x = 1")));
    let ok = bytes_of(&frame(1, |b| b.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0])));
    let begin = bytes_of(&frame(0, |b| b.extend_from_slice(b"\x03BEGIN")));
    let ping = bytes_of(&frame(0, |b| b.extend_from_slice(&[0x0E])));
    let op = |kind: u8, data: &[u8]| {
        let mut v = vec![kind | ((data.len() as u8) << 3)];
        v.extend_from_slice(data);
        v
    };
    let mut session = vec![1];
    for (kind, data) in [
        (0, &query[..]),
        (3, &ok[..]),
        (0, &ping[..]),
        (5, &[][..]),
        (0, &begin[..]),
        (3, &ok[..]),
        (6, &[1][..]),
        (6, &[0][..]),
    ] {
        session.extend(op(kind, data));
    }
    let login = client_response("root", "111", &FERRY_SALT, "mysql_native_password");
    let mut garbage_login = vec![0];
    for chunk in login.chunks(31) {
        garbage_login.extend(op(0, chunk));
    }
    fuzz("session", &[session, garbage_login], |input: &[u8]| {
        check_session(input)
    });
}

/// Inputs that once broke a target, kept as tests.
mod regressions {
    use super::*;

    /// A handshake response with `CLIENT_PLUGIN_AUTH` that ends before the
    /// plugin name: written back with an empty name, it read as `Some("")`
    /// (and a client naming the empty plugin was switched to native password).
    #[test]
    fn a_handshake_response_without_its_plugin_name_round_trips() {
        check_handshake_response(&[
            0xdf, 0xf7, 0xbf, 0x01, 0x00, 0xfa, 0xfc, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, b'r', b'o', b'o', b't', 0, 0, b't',
        ]);
    }

    /// COM_CHANGE_USER with a character set but no plugin name: same as above.
    #[test]
    fn a_change_user_without_its_plugin_name_round_trips() {
        let mut input = b"\x11acc1:app\0\x14".to_vec();
        input.extend_from_slice(&[7; 20]);
        input.extend_from_slice(b"test\0\x2d\x00");
        check_change_user(&input);
    }

    /// COM_CHANGE_USER whose one byte after the database was read as a plugin
    /// name although no character set came before it.
    #[test]
    fn one_byte_after_the_database_is_no_plugin_name() {
        check_change_user(&[
            0x11, b'a', b'c', b'c', 0x11, 0, 0, 7, 7, 7, 7, 7, 7, 7, 7, 7, b'e', b's', b't', 0,
            b'-',
        ]);
    }
}
