//! MySQL packet framing: a 4-byte header (3-byte little-endian payload length,
//! 1-byte sequence id) before each frame; payloads of 16 MiB − 1 or more are
//! split across continuation frames.
//!
//! [`PacketDecoder`] turns a byte stream into logical packets as zero-copy
//! [`Bytes`] slices of what was read; [`write_packet`] does the reverse.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of a frame header.
pub const HEADER_LEN: usize = 4;
/// Largest payload of one frame; a frame this long is followed by a continuation.
pub const MAX_FRAME_PAYLOAD: usize = 0xFF_FFFF;

/// One logical packet: the payload with continuation frames joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of the first frame.
    pub seq: u8,
    /// The sequence id the peer's next frame must carry.
    pub next_seq: u8,
    /// The payload, without headers.
    pub payload: Bytes,
}

/// Why a byte stream could not be framed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The peer announced a packet larger than we accept.
    TooLarge {
        /// Bytes announced so far (including earlier continuation frames).
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A continuation frame carried the wrong sequence id.
    BadSequence {
        /// The id we expected.
        expected: u8,
        /// The id we got.
        got: u8,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "packet of {len} bytes exceeds the maximum of {max} bytes"
                )
            }
            FrameError::BadSequence { expected, got } => {
                write!(
                    f,
                    "continuation frame has sequence id {got}, expected {expected}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Reads the header of the frame at the start of `buf`, if complete: (payload length, sequence id).
pub fn frame_header(buf: &[u8]) -> Option<(usize, u8)> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let len = buf[0] as usize | (buf[1] as usize) << 8 | (buf[2] as usize) << 16;
    Some((len, buf[3]))
}

/// Incremental decoder of logical packets from a byte stream.
#[derive(Debug)]
pub struct PacketDecoder {
    buf: BytesMut,
    max_payload: usize,
    frame_limit: usize,
    /// A packet being joined from continuation frames: (first seq, payload so far).
    partial: Option<(u8, BytesMut)>,
}

impl PacketDecoder {
    /// A decoder that refuses logical packets longer than `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        PacketDecoder {
            buf: BytesMut::new(),
            max_payload,
            frame_limit: MAX_FRAME_PAYLOAD,
            partial: None,
        }
    }

    /// Uses frames of at most `limit` bytes instead of 16 MiB − 1 (for tests of continuation frames).
    pub fn with_frame_limit(mut self, limit: usize) -> Self {
        assert!(limit > 0 && limit <= MAX_FRAME_PAYLOAD);
        self.frame_limit = limit;
        self
    }

    /// Appends bytes read from the peer.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as packets.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.partial.as_ref().map_or(0, |(_, p)| p.len())
    }

    /// Takes out all buffered bytes not yet framed (used when switching to pass-through).
    pub fn take_remaining(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// The next complete logical packet, `Ok(None)` if more bytes are needed.
    ///
    /// A packet that fits one frame is a zero-copy slice of the read buffer;
    /// only packets of 16 MiB and more are joined by copying.
    pub fn decode(&mut self) -> Result<Option<Packet>, FrameError> {
        loop {
            let Some((len, seq)) = frame_header(&self.buf) else {
                return Ok(None);
            };
            let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len());
            if so_far + len > self.max_payload {
                return Err(FrameError::TooLarge {
                    len: so_far + len,
                    max: self.max_payload,
                });
            }
            if let Some((first, partial)) = &self.partial {
                let expected = first.wrapping_add((partial.len() / self.frame_limit) as u8);
                if seq != expected {
                    return Err(FrameError::BadSequence { expected, got: seq });
                }
            }
            if self.buf.len() < HEADER_LEN + len {
                self.buf.reserve(HEADER_LEN + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(HEADER_LEN);
            let frame = self.buf.split_to(len);
            let last = len < self.frame_limit;
            match (self.partial.take(), last) {
                (None, true) => {
                    return Ok(Some(Packet {
                        seq,
                        next_seq: seq.wrapping_add(1),
                        payload: frame.freeze(),
                    }))
                }
                (None, false) => self.partial = Some((seq, frame)),
                (Some((first, mut joined)), last) => {
                    joined.unsplit(frame);
                    if last {
                        return Ok(Some(Packet {
                            seq: first,
                            next_seq: seq.wrapping_add(1),
                            payload: joined.freeze(),
                        }));
                    }
                    self.partial = Some((first, joined));
                }
            }
        }
    }
}

/// Appends `payload` as a packet starting at sequence id `seq`; returns the next sequence id.
pub fn write_packet(out: &mut BytesMut, seq: u8, payload: &[u8]) -> u8 {
    write_packet_chunked(out, seq, payload, MAX_FRAME_PAYLOAD)
}

/// Like [`write_packet`] but with frames of at most `chunk` bytes (tests use small chunks).
///
/// A payload that is an exact multiple of `chunk` ends with an empty frame, so
/// the reader knows the packet is complete.
pub fn write_packet_chunked(out: &mut BytesMut, mut seq: u8, payload: &[u8], chunk: usize) -> u8 {
    assert!(chunk > 0 && chunk <= MAX_FRAME_PAYLOAD);
    out.reserve(payload.len() + HEADER_LEN * (payload.len() / chunk + 1));
    let mut rest = payload;
    loop {
        let n = rest.len().min(chunk);
        out.put_uint_le(n as u64, 3);
        out.put_u8(seq);
        out.put_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < chunk {
            return seq;
        }
    }
}
