//! Walking the frames of one direction of a byte stream without buffering it.
//!
//! [`Frames`] reads 4-byte frame headers out of chunks of any size, joins
//! continuation frames into logical packets and copies out only the prefix of
//! each packet that its [`Reader`] asks for. Everything else (rows, column
//! definitions, file data) is skipped in place.

use crate::wire::{HEADER_LEN, MAX_FRAME_PAYLOAD};

use super::TrackError;

/// One complete logical packet as the tracker sees it.
#[derive(Debug)]
pub(crate) struct Packet<'a> {
    /// Offset of the first header byte in this direction's stream.
    pub offset: u64,
    /// Bytes the packet occupies in the stream, headers included.
    pub len: u64,
    /// Sequence id of the first frame.
    pub seq: u8,
    /// True when the payload is 16 MiB − 1 bytes or longer (so spans continuation frames).
    pub multi_frame: bool,
    /// Payload length, continuation frames joined.
    pub payload_len: u64,
    /// The payload prefix the reader asked for.
    pub head: &'a [u8],
    /// True when the payload is longer than `head`.
    pub truncated: bool,
}

/// The consumer of one direction's packets.
pub(crate) trait Reader {
    /// How many payload bytes to collect of a packet whose first `head.len()` bytes
    /// are `head` (at least one); `multi_frame` tells whether it spans continuation frames.
    ///
    /// Called again each time the collected prefix reaches the last answer while
    /// payload remains; answering `head.len()` stops collecting.
    /// `offset` is where the packet starts in the stream.
    /// `offset` is where the packet starts in the stream, `payload_len` its
    /// payload length as far as its frame headers have told.
    fn want(
        &mut self,
        offset: u64,
        payload_len: u64,
        head: &[u8],
        multi_frame: bool,
    ) -> Result<usize, TrackError>;

    /// A logical packet is complete.
    fn packet(&mut self, packet: Packet<'_>) -> Result<(), TrackError>;

    /// A frame header was read: the frame starts at `offset` with sequence id `seq`
    /// (called before any of its payload is looked at).
    fn frame_header(&mut self, _offset: u64, _seq: u8) {}
}

/// Frame walker state for one direction.
#[derive(Debug)]
pub(crate) struct Frames {
    /// Payload length of a full frame (one that a continuation follows).
    frame_limit: usize,
    /// Largest logical packet allowed, known from frame headers alone.
    packet_limit: Option<u64>,
    /// Bytes of this direction consumed so far.
    offset: u64,
    /// A header split across chunks.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current frame not yet seen.
    left: usize,
    /// The current frame is full, so a continuation frame follows.
    continued: bool,
    /// The logical packet in progress, if any.
    current: Option<Progress>,
    /// The collected prefix of the packet in progress (reused: no allocation per row).
    head: Vec<u8>,
}

#[derive(Debug)]
struct Progress {
    offset: u64,
    seq: u8,
    multi_frame: bool,
    payload_len: u64,
    want: usize,
}

impl Frames {
    /// A walker for frames of at most `frame_limit` payload bytes.
    pub fn new(frame_limit: usize) -> Self {
        Frames {
            frame_limit,
            packet_limit: None,
            offset: 0,
            header: [0; HEADER_LEN],
            header_len: 0,
            left: 0,
            continued: false,
            current: None,
            head: Vec::new(),
        }
    }

    /// Refuses packets whose payload (continuation frames joined) exceeds `limit`.
    pub fn set_packet_limit(&mut self, limit: u64) {
        self.packet_limit = Some(limit);
    }

    /// The frame size this walker expects.
    pub fn frame_limit(&self) -> usize {
        self.frame_limit
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Start offset of a packet that is incomplete and either being collected or not yet classified.
    pub fn collecting_from(&self) -> Option<u64> {
        if self.header_len > 0 && self.current.is_none() {
            return Some(self.offset - self.header_len as u64);
        }
        let p = self.current.as_ref()?;
        (self.head.len() < p.want).then_some(p.offset)
    }

    /// Walks `data`, handing complete packets to `reader`.
    pub fn feed(&mut self, mut data: &[u8], reader: &mut impl Reader) -> Result<(), TrackError> {
        while !data.is_empty() {
            if self.left == 0 {
                let n = (HEADER_LEN - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                self.offset += n as u64;
                data = &data[n..];
                if self.header_len == HEADER_LEN {
                    self.header_len = 0;
                    self.start_frame(reader)?;
                }
                continue;
            }
            let n = self.left.min(data.len());
            self.payload(&data[..n], reader)?;
            self.left -= n;
            self.offset += n as u64;
            data = &data[n..];
            if self.left == 0 {
                self.end_frame(reader)?;
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, reader: &mut impl Reader) -> Result<(), TrackError> {
        let h = self.header;
        let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
        let start = self.offset - HEADER_LEN as u64;
        reader.frame_header(start, h[3]);
        if self.current.is_none() {
            self.head.clear();
        }
        let p = self.current.get_or_insert_with(|| Progress {
            offset: start,
            seq: h[3],
            // What matters is the protocol's 16 MiB rule, not the (test) frame size.
            multi_frame: len >= MAX_FRAME_PAYLOAD,
            payload_len: 0,
            want: 1,
        });
        p.payload_len += len as u64;
        if let Some(limit) = self.packet_limit.filter(|l| p.payload_len > *l) {
            // Decided from the header: nothing of the frame has been looked at (or passed on).
            return Err(TrackError {
                direction: super::Direction::Client,
                offset: p.offset,
                reason: format!("a packet of more than {limit} bytes (max_packet_size)"),
                too_large: Some(h[3].wrapping_add(1)),
            });
        }
        self.left = len;
        self.continued = len == self.frame_limit;
        if len == 0 {
            self.end_frame(reader)?;
        }
        Ok(())
    }

    fn payload(&mut self, mut data: &[u8], reader: &mut impl Reader) -> Result<(), TrackError> {
        let p = self.current.as_mut().expect("payload belongs to a packet");
        let head = &mut self.head;
        // Payload of this packet still to come after `data`.
        let later = self.left - data.len();
        while !data.is_empty() && head.len() < p.want {
            let n = (p.want - head.len()).min(data.len());
            head.extend_from_slice(&data[..n]);
            data = &data[n..];
            let more = !data.is_empty() || later > 0 || self.continued;
            if head.len() == p.want && more {
                let want = reader.want(p.offset, p.payload_len, head, p.multi_frame)?;
                // Never shrink: what was collected stays collected.
                p.want = want.max(head.len());
            }
        }
        Ok(())
    }

    fn end_frame(&mut self, reader: &mut impl Reader) -> Result<(), TrackError> {
        if self.continued {
            return Ok(());
        }
        let p = self.current.take().expect("frame belongs to a packet");
        let frames = p.payload_len / self.frame_limit as u64 + 1;
        reader.packet(Packet {
            offset: p.offset,
            len: p.payload_len + frames * HEADER_LEN as u64,
            seq: p.seq,
            payload_len: p.payload_len,
            multi_frame: p.multi_frame,
            truncated: (self.head.len() as u64) < p.payload_len,
            head: &self.head,
        })
    }
}
