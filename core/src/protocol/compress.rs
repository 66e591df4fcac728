//! The compressed protocol (`CLIENT_COMPRESS`, zlib): framing only, no I/O.
//!
//! After login, each side of a compressed connection sends *compressed
//! frames* instead of plain packets. A frame is a 7-byte header — 3-byte
//! little-endian compressed length, 1-byte compressed sequence id, 3-byte
//! uncompressed length — and a payload: the zlib stream of a run of plain
//! packet bytes, or those bytes as they are when the uncompressed length is 0.
//! A frame's bytes are any slice of the plain packet stream: one frame may
//! hold several packets or part of one.
//!
//! [`Inflater`] turns compressed frames read in chunks of any size back into
//! the plain byte stream; [`Deflater`] does the reverse. Neither knows about
//! commands: the sequence ids are the caller's (see `session::compression`).

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Size of a compressed frame's header.
pub const COMPRESSED_HEADER_LEN: usize = 7;
/// Largest payload (compressed or not) of one frame: the length fields have 3 bytes.
pub const MAX_COMPRESSED_PAYLOAD: usize = 0xFF_FFFF;
/// Payloads shorter than this go out stored, as MariaDB's `my_compress` does:
/// zlib would make them longer.
pub const MIN_COMPRESS_LENGTH: usize = 50;

/// Why a compressed stream could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompressError {
    /// A frame announces more bytes than the peer may send in one frame.
    TooLarge {
        /// The announced length (compressed or uncompressed, whichever is larger).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The zlib data is not valid, or does not inflate to exactly the announced length.
    Corrupt(String),
}

impl fmt::Display for CompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompressError::TooLarge { len, max } => write!(
                f,
                "compressed frame of {len} bytes exceeds the maximum of {max} bytes"
            ),
            CompressError::Corrupt(why) => write!(f, "bad compressed frame: {why}"),
        }
    }
}

impl std::error::Error for CompressError {}

/// One frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes on the wire.
    pub compressed_len: usize,
    /// The compressed sequence id.
    pub seq: u8,
    /// Bytes the payload inflates to; 0 = the payload is stored uncompressed.
    pub uncompressed_len: usize,
}

impl FrameHeader {
    /// Reads a header from the start of `buf`, if complete.
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        if buf.len() < COMPRESSED_HEADER_LEN {
            return None;
        }
        let u24 = |b: &[u8]| b[0] as usize | (b[1] as usize) << 8 | (b[2] as usize) << 16;
        Some(FrameHeader {
            compressed_len: u24(&buf[0..3]),
            seq: buf[3],
            uncompressed_len: u24(&buf[4..7]),
        })
    }

    /// The plain bytes this frame carries.
    pub fn plain_len(&self) -> usize {
        if self.uncompressed_len == 0 {
            self.compressed_len
        } else {
            self.uncompressed_len
        }
    }
}

/// Reads compressed frames from a byte stream and yields the plain bytes.
///
/// At most one frame is buffered (at most 16 MiB compressed, and no more
/// than `max_frame`), and a frame never inflates past the length it
/// announces: a zip bomb costs at most that much memory, then an error.
pub struct Inflater {
    buf: BytesMut,
    max_frame: usize,
    zlib: Decompress,
    last_seq: Option<u8>,
}

impl fmt::Debug for Inflater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inflater")
            .field("buffered", &self.buf.len())
            .field("max_frame", &self.max_frame)
            .field("last_seq", &self.last_seq)
            .finish()
    }
}

impl Inflater {
    /// An inflater that refuses frames announcing more than `max_frame` bytes
    /// (MariaDB refuses a frame longer than `max_allowed_packet` the same way).
    pub fn new(max_frame: usize) -> Self {
        Inflater {
            buf: BytesMut::new(),
            max_frame: max_frame.clamp(1, MAX_COMPRESSED_PAYLOAD),
            zlib: Decompress::new(true),
            last_seq: None,
        }
    }

    /// The sequence id of the last complete frame read, if any.
    pub fn last_seq(&self) -> Option<u8> {
        self.last_seq
    }

    /// Bytes buffered: at most one incomplete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes read from the peer; returns the plain bytes of every frame
    /// completed so far (empty if none is complete yet).
    pub fn feed(&mut self, data: Bytes) -> Result<Bytes, CompressError> {
        if self.buf.is_empty() {
            // The common case: whole frames in one read; stored frames are sliced, not copied.
            return self.drain(data);
        }
        self.buf.extend_from_slice(&data);
        if let Some(h) = FrameHeader::parse(&self.buf) {
            let whole = COMPRESSED_HEADER_LEN + h.compressed_len;
            if self.buf.len() < whole && h.compressed_len.max(h.uncompressed_len) <= self.max_frame
            {
                // A long frame arriving in many reads: gather it in place, once.
                self.buf.reserve(whole - self.buf.len());
                return Ok(Bytes::new());
            }
        } else {
            return Ok(Bytes::new());
        }
        let data = std::mem::take(&mut self.buf).freeze();
        self.drain(data)
    }

    fn drain(&mut self, mut data: Bytes) -> Result<Bytes, CompressError> {
        let mut out = BytesMut::new();
        let mut single: Option<Bytes> = None;
        while let Some(h) = FrameHeader::parse(&data) {
            let len = h.compressed_len.max(h.uncompressed_len);
            if len > self.max_frame {
                return Err(CompressError::TooLarge {
                    len,
                    max: self.max_frame,
                });
            }
            if data.len() < COMPRESSED_HEADER_LEN + h.compressed_len {
                break;
            }
            data.advance(COMPRESSED_HEADER_LEN);
            let payload = data.split_to(h.compressed_len);
            let plain = if h.uncompressed_len == 0 {
                payload
            } else {
                self.inflate(&payload, h.uncompressed_len)?
            };
            self.last_seq = Some(h.seq);
            match single.take() {
                None if out.is_empty() => single = Some(plain),
                None => out.extend_from_slice(&plain),
                Some(first) => {
                    out.extend_from_slice(&first);
                    out.extend_from_slice(&plain);
                }
            }
        }
        if !data.is_empty() {
            self.buf.reserve(data.len());
            self.buf.extend_from_slice(&data);
        }
        Ok(match single {
            Some(b) => b,
            None => out.freeze(),
        })
    }

    fn inflate(&mut self, payload: &[u8], len: usize) -> Result<Bytes, CompressError> {
        self.zlib.reset(true);
        // One byte of room past the announced length tells "inflates beyond it".
        let mut out = vec![0u8; len + 1];
        let status = self
            .zlib
            .decompress(payload, &mut out, FlushDecompress::Finish)
            .map_err(|e| CompressError::Corrupt(e.to_string()))?;
        let produced = self.zlib.total_out() as usize;
        let consumed = self.zlib.total_in() as usize;
        if produced > len {
            return Err(CompressError::Corrupt(format!(
                "inflates to more than the {len} bytes it announces"
            )));
        }
        if status != Status::StreamEnd || produced != len || consumed != payload.len() {
            return Err(CompressError::Corrupt(format!(
                "inflates to {produced} bytes, {len} announced"
            )));
        }
        out.truncate(len);
        Ok(Bytes::from(out))
    }
}

/// Writes plain bytes as compressed frames.
pub struct Deflater {
    zlib: Compress,
    scratch: Vec<u8>,
}

impl fmt::Debug for Deflater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    /// A deflater at zlib's default level (what MariaDB's `compress()` uses).
    pub fn new() -> Self {
        Deflater {
            zlib: Compress::new(Compression::default(), true),
            scratch: Vec::new(),
        }
    }

    /// Appends `plain` to `out` as frames of at most 16 MiB − 1 plain bytes,
    /// numbered from `seq`; returns the sequence id of the next frame.
    pub fn write(&mut self, out: &mut BytesMut, mut seq: u8, plain: &[u8]) -> u8 {
        for chunk in plain.chunks(MAX_COMPRESSED_PAYLOAD) {
            self.write_frame(out, seq, chunk);
            seq = seq.wrapping_add(1);
        }
        seq
    }

    /// One frame: compressed when that makes it shorter, stored otherwise.
    fn write_frame(&mut self, out: &mut BytesMut, seq: u8, plain: &[u8]) {
        if plain.len() >= MIN_COMPRESS_LENGTH && self.deflate(plain) {
            out.reserve(COMPRESSED_HEADER_LEN + self.scratch.len());
            out.put_uint_le(self.scratch.len() as u64, 3);
            out.put_u8(seq);
            out.put_uint_le(plain.len() as u64, 3);
            out.put_slice(&self.scratch);
        } else {
            out.reserve(COMPRESSED_HEADER_LEN + plain.len());
            out.put_uint_le(plain.len() as u64, 3);
            out.put_u8(seq);
            out.put_uint_le(0, 3);
            out.put_slice(plain);
        }
    }

    /// Deflates `plain` into the scratch buffer; false if that is not shorter.
    fn deflate(&mut self, plain: &[u8]) -> bool {
        self.zlib.reset();
        self.scratch.clear();
        // Never larger than the input: a longer result is sent stored anyway.
        self.scratch.reserve(plain.len());
        match self
            .zlib
            .compress_vec(plain, &mut self.scratch, FlushCompress::Finish)
        {
            Ok(Status::StreamEnd) => self.scratch.len() < plain.len(),
            _ => false,
        }
    }
}

/// Compresses `plain` into frames numbered from `seq` (for tests and one-off frames).
pub fn compress_frames(plain: &[u8], seq: u8) -> Bytes {
    let mut out = BytesMut::new();
    Deflater::new().write(&mut out, seq, plain);
    out.freeze()
}
