//! The compressed protocol: the codec on its own (round trips in arbitrary
//! chunks, garbage, zip bombs) and a session driven with compressed frames
//! from both ends.

mod support;

use bytes::{Bytes, BytesMut};
use ferry_core::compress::{
    compress_frames, CompressError, Deflater, FrameHeader, Inflater, COMPRESSED_HEADER_LEN,
    MAX_COMPRESSED_PAYLOAD,
};
use ferry_core::login::client::Greeting;
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::{Handshake, HandshakeResponse};
use ferry_core::session::{CloseReason, Input, Output, Session, SessionConfig};
use ferry_core::wire::{write_packet, PacketDecoder};
use ferry_core::Timestamp;
use quickcheck::TestResult;
use quickcheck_macros::quickcheck;

use support::*;

/// Cuts `data` at the given (wrapped) lengths; the rest is the last piece.
fn pieces(data: &[u8], cuts: &[u16]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = data;
    for &c in cuts {
        if rest.is_empty() {
            break;
        }
        let n = (c as usize % 97 + 1).min(rest.len());
        out.push(Bytes::copy_from_slice(&rest[..n]));
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        out.push(Bytes::copy_from_slice(rest));
    }
    out
}

/// Plain packets as a client or server writes them: several, of mixed sizes and contents.
fn plain_stream(packets: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (seq, body) in packets {
        // Repeat each body so that some are long and compressible.
        let body: Vec<u8> = body.iter().cycle().take(body.len() * 7).copied().collect();
        write_packet(&mut out, *seq, &body);
    }
    out.to_vec()
}

fn inflate_all(chunks: &[Bytes], max: usize) -> Result<Vec<u8>, CompressError> {
    let mut inf = Inflater::new(max);
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&inf.feed(c.clone())?);
    }
    assert_eq!(inf.buffered(), 0, "every frame was complete");
    Ok(out)
}

#[quickcheck]
fn deflate_then_inflate_in_any_chunks_gives_the_input(
    packets: Vec<(u8, Vec<u8>)>,
    writes: Vec<u16>,
    reads: Vec<u16>,
) -> TestResult {
    let plain = plain_stream(&packets);
    // The writer frames the stream as it is written: frames hold several
    // packets or parts of one, as MariaDB's do.
    let mut wire = BytesMut::new();
    let mut d = Deflater::new();
    let mut seq = 0u8;
    for piece in pieces(&plain, &writes) {
        seq = d.write(&mut wire, seq, &piece);
    }
    let read = pieces(&wire, &reads);
    match inflate_all(&read, MAX_COMPRESSED_PAYLOAD) {
        Ok(out) => TestResult::from_bool(out == plain),
        Err(e) => TestResult::error(e.to_string()),
    }
}

#[test]
fn frames_are_numbered_on_and_small_ones_are_stored() {
    let mut wire = BytesMut::new();
    let mut d = Deflater::new();
    assert_eq!(d.write(&mut wire, 254, b"short"), 255);
    let long = vec![b'x'; 4000];
    assert_eq!(d.write(&mut wire, 255, &long), 0);
    let first = FrameHeader::parse(&wire).unwrap();
    assert_eq!(
        (first.seq, first.uncompressed_len, first.compressed_len),
        (254, 0, 5)
    );
    let second = FrameHeader::parse(&wire[COMPRESSED_HEADER_LEN + 5..]).unwrap();
    assert_eq!((second.seq, second.uncompressed_len), (255, 4000));
    assert!(
        second.compressed_len < 100,
        "4000 equal bytes compress well"
    );
}

#[test]
fn a_packet_larger_than_16_mib_is_split_into_frames_and_joined_again() {
    // 17 MiB payload: two plain frames (16 MiB − 1 and the rest), and more
    // than one compressed frame, since a frame carries at most 16 MiB − 1.
    let body: Vec<u8> = (0..17u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut plain = BytesMut::new();
    write_packet(&mut plain, 0, &body);
    let wire = compress_frames(&plain, 0);
    let mut seqs = Vec::new();
    let mut at = 0;
    while let Some(h) = FrameHeader::parse(&wire[at..]) {
        assert!(h.plain_len() <= MAX_COMPRESSED_PAYLOAD);
        seqs.push(h.seq);
        at += COMPRESSED_HEADER_LEN + h.compressed_len;
    }
    assert_eq!(seqs, vec![0, 1]);
    let out = inflate_all(&pieces(&wire, &[60_000; 400]), MAX_COMPRESSED_PAYLOAD).unwrap();
    let mut d = PacketDecoder::new(32 << 20);
    d.extend(&out);
    assert_eq!(d.decode().unwrap().unwrap().payload, body);
}

/// A frame header followed by `payload`, announcing `uncompressed` bytes.
fn raw_frame(seq: u8, uncompressed: usize, payload: &[u8]) -> Bytes {
    let mut f = Vec::new();
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes()[..3]);
    f.push(seq);
    f.extend_from_slice(&(uncompressed as u32).to_le_bytes()[..3]);
    f.extend_from_slice(payload);
    Bytes::from(f)
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn garbage_is_an_error() {
    let err = inflate_all(&[raw_frame(0, 1000, b"this is not zlib at all")], 1 << 20);
    assert!(matches!(err, Err(CompressError::Corrupt(_))), "{err:?}");
}

#[test]
fn a_truncated_stream_is_an_error() {
    let z = zlib(&[7u8; 5000]);
    let err = inflate_all(&[raw_frame(0, 5000, &z[..z.len() / 2])], 1 << 20);
    assert!(matches!(err, Err(CompressError::Corrupt(_))), "{err:?}");
}

#[test]
fn a_zip_bomb_stops_at_the_length_it_announces() {
    // 16 MiB of zeros compress to a few KiB; the frame claims 100 bytes.
    let z = zlib(&vec![0u8; 16 << 20]);
    assert!(z.len() < 100_000);
    let err = inflate_all(&[raw_frame(0, 100, &z)], MAX_COMPRESSED_PAYLOAD);
    assert!(
        matches!(&err, Err(CompressError::Corrupt(why)) if why.contains("more than")),
        "{err:?}"
    );
}

#[test]
fn a_frame_announcing_more_than_allowed_is_refused_before_it_is_read() {
    let mut inf = Inflater::new(1 << 20);
    // Only the header: the refusal must not wait for (or buffer) the payload.
    let header = raw_frame(0, 2 << 20, b"");
    let mut h = header.to_vec();
    h[0..3].copy_from_slice(&[0xff, 0xff, 0x00]);
    let err = inf.feed(Bytes::from(h));
    assert!(
        matches!(err, Err(CompressError::TooLarge { len, max }) if len == 2 << 20 && max == 1 << 20),
        "{err:?}"
    );
}

#[test]
fn a_frame_that_inflates_to_less_than_announced_is_an_error() {
    let z = zlib(b"hello hello hello hello hello hello hello hello hello");
    let err = inflate_all(&[raw_frame(0, 4000, &z)], 1 << 20);
    assert!(matches!(err, Err(CompressError::Corrupt(_))), "{err:?}");
}

// ---- a session with compressed frames on both sides ----

/// Drives a session whose client asked for compression; keeps what crossed it.
struct Compressed {
    session: Session,
    to_client: Vec<Bytes>,
    to_backend: Vec<Bytes>,
    closed: Option<CloseReason>,
}

impl Compressed {
    fn new(config: SessionConfig) -> Self {
        let greeting = Greeting {
            server_version: "5.5.5-10.11.6-MariaDB".into(),
            connection_id: 7,
            salt: FERRY_SALT,
            collation: 45,
            capabilities: FERRY_SUPPORTED | FERRY_COMPRESSION,
            mariadb_capabilities: 0,
            tls: TlsOffer::Off,
        };
        let session = Session::new(
            Timestamp::ZERO,
            config,
            greeting,
            users(),
            "127.0.0.1".into(),
        );
        let mut c = Compressed {
            session,
            to_client: Vec::new(),
            to_backend: Vec::new(),
            closed: None,
        };
        c.drain();
        c
    }

    fn feed(&mut self, input: Input) {
        self.session.handle(Timestamp::ZERO, input);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(out) = self.session.poll_output() {
            match out {
                Output::ToClient(b) => self.to_client.push(b),
                Output::ToBackend(_, b) => self.to_backend.push(b),
                Output::Close(r) => self.closed = Some(r),
                _ => {}
            }
        }
    }

    /// Logs in: plain until each side's login OK, as with MariaDB.
    fn log_in(&mut self) {
        let mut d = PacketDecoder::new(1 << 20);
        d.extend(&self.to_client[0]);
        let salt = Handshake::parse(&d.decode().unwrap().unwrap().payload)
            .unwrap()
            .auth_data;
        let response = client_response("root", "111", &salt, "mysql_native_password");
        let mut r = HandshakeResponse::parse(&response[4..]).unwrap();
        r.capabilities |= CLIENT_COMPRESS;
        self.feed(Input::ClientData(frame(1, |b| r.write(b))));
        route_to_b0(self);
        self.feed(Input::BackendData(B0, backend_handshake()));
    }

    /// Everything ferry sent the backend since `from`, inflated.
    fn backend_plain(&self, from: usize) -> Vec<u8> {
        inflate_all(&self.to_backend[from..], 1 << 24).unwrap()
    }
}

fn route_to_b0(c: &mut Compressed) {
    c.feed(Input::Routed(route("cn1")));
    c.feed(Input::BackendConnected(B0));
}

/// The plain packets in `bytes`: (sequence id, payload).
fn packets(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut d = PacketDecoder::new(1 << 24);
    d.extend(bytes);
    let mut out = Vec::new();
    while let Some(p) = d.decode().unwrap() {
        out.push((p.seq, p.payload.to_vec()));
    }
    assert_eq!(d.buffered(), 0);
    out
}

/// The sequence ids of the compressed frames in `wire`.
fn frame_seqs(wire: &[u8]) -> Vec<u8> {
    let mut seqs = Vec::new();
    let mut at = 0;
    while let Some(h) = FrameHeader::parse(&wire[at..]) {
        seqs.push(h.seq);
        at += COMPRESSED_HEADER_LEN + h.compressed_len;
    }
    assert_eq!(at, wire.len());
    seqs
}

fn result_set(rows: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_packet(&mut out, 1, &[1]);
    let mut col = BytesMut::new();
    for s in ["def", "", "", "", "v", ""] {
        ferry_core::packets::codec::put_lenenc_bytes(&mut col, s.as_bytes());
    }
    col.extend_from_slice(&[0x0c, 33, 0, 0, 0, 0, 0, 253, 0, 0, 0, 0, 0]);
    write_packet(&mut out, 2, &col);
    let mut seq = 3u8;
    for i in 0..rows {
        let mut row = BytesMut::new();
        ferry_core::packets::codec::put_lenenc_bytes(
            &mut row,
            format!("row number {i} of the result").as_bytes(),
        );
        seq = write_packet(&mut out, seq, &row);
    }
    // The end of the result set (DEPRECATE_EOF: an OK with 0xFE), autocommit status.
    write_packet(&mut out, seq, &[0xFE, 0, 0, 2, 0, 0, 0]);
    out.to_vec()
}

#[test]
fn a_session_runs_on_compressed_frames_from_both_ends() {
    let mut c = Compressed::new(test_config());
    c.log_in();
    let sent = &c.to_backend[0];
    let response = HandshakeResponse::parse(&sent[4..]).unwrap();
    assert_ne!(
        response.capabilities & CLIENT_COMPRESS,
        0,
        "the backend link is compressed too"
    );

    // The backend's login OK is plain; ferry's tracker set-up after it is
    // compressed: two commands, so two frames each numbered 0.
    let before = c.to_backend.len();
    c.feed(Input::BackendData(B0, backend_ok(2)));
    let setup = c.to_backend[before..].concat();
    assert_eq!(frame_seqs(&setup), vec![0, 0]);
    let queries = packets(&c.backend_plain(before));
    assert_eq!(queries.len(), 2);
    assert!(queries.iter().all(|(seq, p)| *seq == 0 && p[0] == 0x03));

    // The backend answers in compressed frames cut anywhere; the client then
    // gets its login OK, plain.
    let answers = backend_tracker_setup();
    let split = answers.len() - 11; // the SET's OK is the last 11 bytes
    let mut wire = compress_frames(&answers[..split], 1).to_vec();
    wire.extend_from_slice(&compress_frames(&answers[split..], 1));
    for piece in pieces(&wire, &[3, 5, 1, 40, 2]) {
        c.feed(Input::BackendData(B0, piece));
    }
    assert_eq!(c.to_client.len(), 2, "handshake and login OK");
    let ok = packets(&c.to_client[1]);
    assert_eq!(ok.len(), 1);
    assert_eq!((ok[0].0, ok[0].1[0]), (2, 0x00), "the login OK is plain");

    // A query in one compressed frame, fed byte by byte.
    let mut query = BytesMut::new();
    write_packet(&mut query, 0, b"\x03SELECT v FROM t");
    let before = c.to_backend.len();
    for b in compress_frames(&query, 0).iter() {
        c.feed(Input::ClientData(Bytes::copy_from_slice(&[*b])));
    }
    assert_eq!(c.backend_plain(before), query.to_vec());
    assert_eq!(frame_seqs(&c.to_backend[before..].concat()), vec![0]);

    // A result set of 2000 rows in three frames, one cutting a row in two.
    let rows = result_set(2000);
    let (a, rest) = rows.split_at(20_000);
    let (b, tail) = rest.split_at(20_003);
    let mut wire = BytesMut::new();
    let mut d = Deflater::new();
    let mut seq = d.write(&mut wire, 1, a);
    seq = d.write(&mut wire, seq, b);
    d.write(&mut wire, seq, tail);
    let before = c.to_client.len();
    for piece in pieces(&wire, &[1000; 200]) {
        c.feed(Input::BackendData(B0, piece));
    }
    let out = c.to_client[before..].concat();
    assert_eq!(
        inflate_all(&[Bytes::from(out.clone())], 1 << 24).unwrap(),
        rows
    );
    let seqs = frame_seqs(&out);
    let expected: Vec<u8> = (1..=seqs.len() as u8).collect();
    assert_eq!(
        seqs, expected,
        "ferry numbers its frames on from the client's 0"
    );
    let status = c.session.status().unwrap();
    assert!(status.safe && !status.in_txn, "{status:?}");

    // The next command starts at 0 again on both sides.
    let mut ping = BytesMut::new();
    write_packet(&mut ping, 0, &[0x0e]);
    let before = c.to_backend.len();
    c.feed(Input::ClientData(compress_frames(&ping, 0)));
    assert_eq!(frame_seqs(&c.to_backend[before..].concat()), vec![0]);
    let before = c.to_client.len();
    let mut ok = BytesMut::new();
    write_packet(&mut ok, 1, &[0, 0, 0, 2, 0, 0, 0]);
    c.feed(Input::BackendData(B0, compress_frames(&ok, 1)));
    assert_eq!(frame_seqs(&c.to_client[before..].concat()), vec![1]);

    // A corrupt frame from the client: ERR 1157, compressed, then the close.
    let before = c.to_client.len();
    c.feed(Input::ClientData(raw_frame(
        0,
        500,
        b"not zlib, not at all, never",
    )));
    let err = inflate_all(&c.to_client[before..], 1 << 24).unwrap();
    let err = packets(&err);
    assert_eq!(err[0].1[0], 0xFF);
    assert_eq!(u16::from_le_bytes([err[0].1[1], err[0].1[2]]), 1157);
    assert!(
        matches!(c.closed, Some(CloseReason::ProtocolError(_))),
        "{:?}",
        c.closed
    );
}

#[test]
fn a_load_data_local_file_continues_the_frame_numbers() {
    let mut c = Compressed::new(test_config());
    c.log_in();
    c.feed(Input::BackendData(B0, backend_ok(2)));
    let answers = backend_tracker_setup();
    c.feed(Input::BackendData(B0, compress_frames(&answers, 1)));
    let mut query = BytesMut::new();
    write_packet(
        &mut query,
        0,
        b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t",
    );
    c.feed(Input::ClientData(compress_frames(&query, 0)));
    // The server asks for the file in its frame 1.
    let mut ask = BytesMut::new();
    write_packet(&mut ask, 1, b"\xfbf");
    c.feed(Input::BackendData(B0, compress_frames(&ask, 1)));
    // The client sends the file (frames 2 and 3) and the empty packet (frame 4).
    let mut file = BytesMut::new();
    let seq = write_packet(&mut file, 2, &[b'a'; 3000]);
    write_packet(&mut file, seq, &[]);
    let (x, y) = file.split_at(1500);
    let before = c.to_backend.len();
    let mut wire = BytesMut::new();
    let mut d = Deflater::new();
    let s = d.write(&mut wire, 2, x);
    d.write(&mut wire, s, y);
    let wire = wire.freeze();
    let half = wire.len() / 2;
    c.feed(Input::ClientData(wire.slice(..half)));
    c.feed(Input::ClientData(wire.slice(half..)));
    let sent = c.to_backend[before..].concat();
    let seqs = frame_seqs(&sent);
    let expected: Vec<u8> = (2..2 + seqs.len() as u8).collect();
    assert_eq!(
        seqs, expected,
        "the file continues the server's numbering, not a new command"
    );
    assert_eq!(c.backend_plain(before), file.to_vec());
}

#[test]
fn a_backend_set_to_stay_uncompressed_is_logged_in_without_compression() {
    let mut config = test_config();
    config
        .uncompressed_backends
        .insert(ferry_core::cluster::BackendId("cn1".into()));
    let mut c = Compressed::new(config);
    c.log_in();
    let response = HandshakeResponse::parse(&c.to_backend[0][4..]).unwrap();
    assert_eq!(response.capabilities & CLIENT_COMPRESS, 0);
    c.feed(Input::BackendData(B0, backend_ok(2)));
    c.feed(Input::BackendData(B0, backend_tracker_setup()));
    // Plain towards the backend, compressed towards the client.
    let mut query = BytesMut::new();
    write_packet(&mut query, 0, b"\x03SELECT 1");
    let before = c.to_backend.len();
    c.feed(Input::ClientData(compress_frames(&query, 0)));
    assert_eq!(c.to_backend[before..].concat(), query.to_vec());
    let rows = result_set(3);
    let before = c.to_client.len();
    c.feed(Input::BackendData(B0, Bytes::from(rows.clone())));
    assert_eq!(inflate_all(&c.to_client[before..], 1 << 24).unwrap(), rows);
}

#[test]
fn a_client_that_did_not_ask_stays_uncompressed() {
    let mut h = Harness::new();
    h.client_logs_in("root", "111");
    h.backend_greets("cn1");
    let response = HandshakeResponse::parse(&h.to_backend[0][4..]).unwrap();
    assert_eq!(response.capabilities & CLIENT_COMPRESS, 0);
}

/// A logged-in compressed session, tracker set-up answered.
fn logged_in(config: SessionConfig) -> Compressed {
    let mut c = Compressed::new(config);
    c.log_in();
    c.feed(Input::BackendData(B0, backend_ok(2)));
    c.feed(Input::BackendData(
        B0,
        compress_frames(&backend_tracker_setup(), 1),
    ));
    assert!(c.session.is_forwarding());
    c
}

fn assert_uncompress_error(c: &Compressed, from: usize) {
    let err = packets(&inflate_all(&c.to_client[from..], 1 << 24).unwrap());
    assert_eq!(err.len(), 1, "{err:?}");
    assert_eq!(err[0].1[0], 0xFF);
    assert_eq!(u16::from_le_bytes([err[0].1[1], err[0].1[2]]), 1157);
    assert!(
        matches!(c.closed, Some(CloseReason::ProtocolError(_))),
        "{:?}",
        c.closed
    );
}

#[test]
fn a_zip_bomb_from_a_client_gets_1157_and_a_close() {
    let mut c = logged_in(test_config());
    let (before, sent) = (c.to_client.len(), c.to_backend.len());
    let z = zlib(&vec![0u8; 8 << 20]);
    c.feed(Input::ClientData(raw_frame(0, 64, &z)));
    assert_uncompress_error(&c, before);
    assert_eq!(
        c.to_backend.len(),
        sent,
        "nothing of it reached the backend"
    );
}

#[test]
fn a_frame_over_max_packet_size_from_a_client_gets_1157_before_its_payload() {
    // test_config allows 1 MiB packets; the frame claims 2 MiB.
    let mut c = logged_in(test_config());
    let before = c.to_client.len();
    let mut header = raw_frame(0, 2 << 20, b"").to_vec();
    header[0..3].copy_from_slice(&[0x00, 0x00, 0x10]);
    c.feed(Input::ClientData(Bytes::from(header)));
    assert_uncompress_error(&c, before);
}
