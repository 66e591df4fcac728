//! Framing: packets survive any chunking of the byte stream, continuation
//! frames join correctly, and oversized lengths are refused without allocating.

use bytes::BytesMut;
use ferry_core::wire::{write_packet, write_packet_chunked, FrameError, PacketDecoder};
use quickcheck::{Arbitrary, Gen};
use quickcheck_macros::quickcheck;

/// A few payloads, a frame size limit, and the chunk sizes the stream is fed in.
#[derive(Clone, Debug)]
struct Stream {
    payloads: Vec<Vec<u8>>,
    frame_limit: usize,
    chunks: Vec<usize>,
}

impl Arbitrary for Stream {
    fn arbitrary(g: &mut Gen) -> Self {
        let frame_limit = *g.choose(&[1usize, 2, 3, 7, 16, 255]).unwrap();
        let n = usize::arbitrary(g) % 6;
        let payloads = (0..n)
            .map(|_| {
                // Lengths around multiples of the frame limit are the interesting ones.
                let len = match u8::arbitrary(g) % 3 {
                    0 => frame_limit * (usize::arbitrary(g) % 4),
                    1 => usize::arbitrary(g) % (frame_limit * 5 + 2),
                    _ => usize::arbitrary(g) % 64,
                };
                (0..len).map(|_| u8::arbitrary(g)).collect()
            })
            .collect();
        let chunks = (0..8).map(|_| 1 + usize::arbitrary(g) % 9).collect();
        Stream {
            payloads,
            frame_limit,
            chunks,
        }
    }
}

#[quickcheck]
fn packets_round_trip_through_any_chunking(s: Stream) -> bool {
    let mut wire = BytesMut::new();
    let mut seq = 0u8;
    let mut expected_seqs = Vec::new();
    for p in &s.payloads {
        expected_seqs.push(seq);
        seq = write_packet_chunked(&mut wire, seq, p, s.frame_limit);
    }
    let mut decoder = PacketDecoder::new(1 << 20).with_frame_limit(s.frame_limit);
    let mut got = Vec::new();
    let mut rest = &wire[..];
    let mut i = 0;
    while !rest.is_empty() {
        let n = s.chunks[i % s.chunks.len()].min(rest.len());
        i += 1;
        decoder.extend(&rest[..n]);
        rest = &rest[n..];
        while let Some(p) = decoder.decode().expect("well-formed stream") {
            got.push(p);
        }
    }
    got.len() == s.payloads.len()
        && got
            .iter()
            .zip(&s.payloads)
            .zip(&expected_seqs)
            .all(|((g, p), seq)| g.payload[..] == p[..] && g.seq == *seq)
        && got.last().is_none_or(|g| g.next_seq == seq)
        && decoder.buffered() == 0
}

#[test]
fn a_payload_of_exactly_one_full_frame_needs_a_trailing_empty_frame() {
    let mut wire = BytesMut::new();
    let next = write_packet_chunked(&mut wire, 5, b"abcd", 4);
    assert_eq!(&wire[..], b"\x04\x00\x00\x05abcd\x00\x00\x00\x06");
    assert_eq!(next, 7);
    let mut d = PacketDecoder::new(100).with_frame_limit(4);
    d.extend(&wire[..8]);
    assert_eq!(d.decode(), Ok(None), "a full frame alone is not a packet");
    d.extend(&wire[8..]);
    let p = d.decode().unwrap().unwrap();
    assert_eq!((&p.payload[..], p.seq, p.next_seq), (&b"abcd"[..], 5, 7));
}

#[test]
fn sixteen_mebibyte_payloads_split_at_the_real_frame_limit() {
    let payload = vec![7u8; 0xFF_FFFF + 10];
    let mut wire = BytesMut::new();
    let next = write_packet(&mut wire, 254, &payload);
    assert_eq!(next, 0, "two frames: 254 and 255, wrapping to 0");
    assert_eq!(&wire[..4], &[0xFF, 0xFF, 0xFF, 254]);
    let mut d = PacketDecoder::new(32 << 20);
    d.extend(&wire);
    let p = d.decode().unwrap().unwrap();
    assert_eq!(p.payload.len(), payload.len());
    assert_eq!((p.seq, p.next_seq), (254, 0));
}

#[test]
fn sequence_ids_wrap_at_256() {
    let mut wire = BytesMut::new();
    assert_eq!(write_packet(&mut wire, 255, b"x"), 0);
    let mut d = PacketDecoder::new(10);
    d.extend(&wire);
    let p = d.decode().unwrap().unwrap();
    assert_eq!((p.seq, p.next_seq), (255, 0));
}

#[test]
fn an_oversized_length_is_an_error_before_any_payload_arrives() {
    let mut d = PacketDecoder::new(1024);
    d.extend(&[0xFF, 0xFF, 0xFF, 0]);
    assert_eq!(
        d.decode(),
        Err(FrameError::TooLarge {
            len: 0xFF_FFFF,
            max: 1024
        })
    );
    assert!(
        d.buffered() < 64,
        "nothing was allocated for the announced length"
    );
}

#[test]
fn continuation_frames_count_toward_the_limit() {
    let mut wire = BytesMut::new();
    write_packet_chunked(&mut wire, 0, &[1u8; 10], 4);
    let mut d = PacketDecoder::new(9).with_frame_limit(4);
    d.extend(&wire);
    assert!(matches!(
        d.decode(),
        Err(FrameError::TooLarge { len: 10, .. })
    ));
}

#[test]
fn a_continuation_frame_with_the_wrong_sequence_id_is_an_error() {
    let mut d = PacketDecoder::new(100).with_frame_limit(2);
    d.extend(b"\x02\x00\x00\x00ab\x01\x00\x00\x05c");
    assert_eq!(
        d.decode(),
        Err(FrameError::BadSequence {
            expected: 1,
            got: 5
        })
    );
}

#[quickcheck]
fn arbitrary_bytes_never_panic_and_stay_bounded(data: Vec<u8>) -> bool {
    let mut d = PacketDecoder::new(4096).with_frame_limit(16);
    d.extend(&data);
    let mut steps = 0;
    while let Ok(Some(_)) = d.decode() {
        steps += 1;
    }
    steps <= data.len() && d.buffered() <= data.len()
}
