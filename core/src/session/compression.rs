//! The compressed protocol at the session's edges.
//!
//! Compression belongs to a connection, not to the conversation: inside the
//! session (tracker, moves, KILL, ferry's own commands) every byte is a plain
//! MySQL packet. [`Compression`] sits where bytes enter and leave: it
//! inflates what a compressed peer sends before the session sees it and
//! deflates what the session writes to a compressed peer, per connection.
//!
//! Compression starts right after the login OK (the OK itself is plain, as
//! from MariaDB). Outputs the session queued before that point leave plain:
//! each link counts them down as they are polled.
//!
//! Sequence ids of compressed frames are checked by MariaDB (out of order is
//! a fatal error), so they follow MariaDB's own rules:
//!
//! - towards a backend, a frame that starts a new command (a plain packet
//!   with sequence id 0) is numbered 0, as the server resets its count for
//!   every command; any other frame (a `LOAD DATA LOCAL` file, a long
//!   command's continuation) follows the last frame sent or received;
//! - towards a client, ferry numbers its frames on from the client's last
//!   frame, one per frame it sends: the frames of an answer are ferry's own,
//!   not the backend's. (A client that pipelines commands sees one run of
//!   numbers across their answers, where MariaDB would restart at each.)

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use super::{CloseReason, Input, Output, Session, SessionConfig};
use crate::cluster::BackendId;
use crate::compress::{CompressError, Deflater, Inflater, MAX_COMPRESSED_PAYLOAD};
use crate::errors;
use crate::login::err_frame;
use crate::migrate::BackendHandle;
use crate::wire::{PacketDecoder, HEADER_LEN};

impl SessionConfig {
    /// Whether a compressed client's connection to `backend` is compressed too.
    pub fn compresses_to(&self, backend: &BackendId) -> bool {
        !self.uncompressed_backends.contains(backend)
    }
}

impl Session {
    /// What a compressed peer sent, inflated; `None` when nothing is left for
    /// the session (an incomplete frame, or a bad one that closed the session).
    pub(super) fn inflate(&mut self, input: Input) -> Option<Input> {
        let (h, data) = match input {
            Input::ClientData(data) if self.compression.client_compressed() => (None, data),
            Input::BackendData(h, data) => (Some(h), data),
            other => return Some(other),
        };
        let plain = match h {
            None => self.compression.read_client(data),
            Some(h) => self.compression.read_backend(h, data),
        };
        match (h, plain) {
            (_, Ok(plain)) if plain.is_empty() => None,
            (None, Ok(plain)) => Some(Input::ClientData(plain)),
            (Some(h), Ok(plain)) => Some(Input::BackendData(h, plain)),
            (None, Err(e)) => {
                let err = errors::uncompress_failed();
                self.outputs.push_back(Output::ToClient(err_frame(&err, 1)));
                self.close(CloseReason::ProtocolError(e.to_string()));
                None
            }
            (Some(_), Err(e)) => {
                self.close(CloseReason::BackendProtocolError(e.to_string()));
                None
            }
        }
    }
}

/// One compressed connection: its two directions and its frame numbering.
#[derive(Debug)]
struct Link {
    inflater: Inflater,
    deflater: Deflater,
    /// The sequence id of ferry's next frame (unless it starts a command, towards a backend).
    next_seq: u8,
    /// Outputs queued before compression started: they still go out plain.
    plain_outputs: usize,
    /// Where ferry's plain stream to the peer stands (backend links: to spot commands).
    cursor: PlainCursor,
}

impl Link {
    fn new(max_frame: usize, plain_outputs: usize) -> Self {
        Link {
            inflater: Inflater::new(max_frame),
            deflater: Deflater::new(),
            next_seq: 0,
            plain_outputs,
            cursor: PlainCursor::default(),
        }
    }

    fn inflate(&mut self, data: Bytes) -> Result<Bytes, CompressError> {
        // The peer answered: what ferry writes next is no upload's continuation.
        self.cursor.last_seq = None;
        let plain = self.inflater.feed(data)?;
        if let Some(seq) = self.inflater.last_seq() {
            self.next_seq = seq.wrapping_add(1);
        }
        Ok(plain)
    }
}

/// Packet boundaries in a plain byte stream written in arbitrary slices.
#[derive(Debug, Default)]
struct PlainCursor {
    /// Payload bytes of the current plain frame still to come.
    left: usize,
    /// A header cut by the end of the last write (held back: its packet cannot be complete).
    held: Vec<u8>,
    /// The sequence id of the last frame header written since the peer last sent anything.
    last_seq: Option<u8>,
}

impl PlainCursor {
    /// Splits `data` (after any held header bytes) into runs that each start a
    /// new command or continue what came before: `(run, starts_command)`.
    fn split(&mut self, data: Bytes) -> Vec<(Bytes, bool)> {
        let data = if self.held.is_empty() {
            data
        } else {
            let mut joined = BytesMut::from(&self.held[..]);
            joined.extend_from_slice(&data);
            self.held.clear();
            joined.freeze()
        };
        let mut runs = Vec::new();
        let (mut start, mut at, mut starts_command) = (0, 0, false);
        while at < data.len() {
            if self.left > 0 {
                let n = self.left.min(data.len() - at);
                self.left -= n;
                at += n;
                continue;
            }
            if data.len() - at < HEADER_LEN {
                self.held.extend_from_slice(&data[at..]);
                break;
            }
            let h = &data[at..at + HEADER_LEN];
            let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
            // Sequence id 0 starts a command, unless it follows 255 with no
            // answer in between: then the ids wrapped in a long upload
            // (a `LOAD DATA LOCAL` file of more than 255 packets).
            let command = h[3] == 0 && self.last_seq != Some(255);
            if command && at > start {
                runs.push((data.slice(start..at), starts_command));
                start = at;
            }
            starts_command |= command;
            self.last_seq = Some(h[3]);
            self.left = len;
            at += HEADER_LEN;
        }
        let end = data.len() - self.held.len();
        if end > start {
            runs.push((data.slice(start..end), starts_command));
        }
        runs
    }
}

/// The compressed links of one session: the client's and each backend connection's.
#[derive(Debug)]
pub(crate) struct Compression {
    max_frame: usize,
    client: Option<Link>,
    backends: BTreeMap<BackendHandle, Link>,
}

impl Compression {
    /// No link compressed yet; a client's frames may announce at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Compression {
            max_frame,
            client: None,
            backends: BTreeMap::new(),
        }
    }

    /// The client link is compressed from now on; the `queued` outputs before this point are not.
    pub fn start_client(&mut self, queued: usize) {
        self.client
            .get_or_insert_with(|| Link::new(self.max_frame, queued));
    }

    /// Backend connection `h` is compressed from now on (no-op if it already is).
    /// What `rx` holds unread came after the login OK: it is inflated in place.
    pub fn start_backend(
        &mut self,
        h: BackendHandle,
        queued: usize,
        rx: &mut PacketDecoder,
    ) -> Result<(), CompressError> {
        if self.backends.contains_key(&h) {
            return Ok(());
        }
        let link = self
            .backends
            .entry(h)
            // max_packet_size limits clients; a backend's frames are as long as its packets.
            .or_insert_with(|| Link::new(MAX_COMPRESSED_PAYLOAD, queued));
        let unread = rx.take_remaining();
        if !unread.is_empty() {
            rx.extend(&link.inflate(unread.freeze())?);
        }
        Ok(())
    }

    /// True once the client link is compressed.
    pub fn client_compressed(&self) -> bool {
        self.client.is_some()
    }

    /// Bytes read from the client, as the plain stream.
    pub fn read_client(&mut self, data: Bytes) -> Result<Bytes, CompressError> {
        match self.client.as_mut() {
            Some(link) => link.inflate(data),
            None => Ok(data),
        }
    }

    /// Bytes read from backend connection `h`, as the plain stream.
    pub fn read_backend(&mut self, h: BackendHandle, data: Bytes) -> Result<Bytes, CompressError> {
        match self.backends.get_mut(&h) {
            Some(link) => link.inflate(data),
            None => Ok(data),
        }
    }

    /// The session's next output as it goes on the wire.
    pub fn output(&mut self, output: Output) -> Output {
        let plain = |link: &Link| link.plain_outputs > 0;
        let out = match output {
            Output::ToClient(data) => match self.client.as_mut() {
                Some(link) if !plain(link) => {
                    let mut out = BytesMut::new();
                    link.next_seq = link.deflater.write(&mut out, link.next_seq, &data);
                    Output::ToClient(out.freeze())
                }
                _ => Output::ToClient(data),
            },
            Output::ToBackend(h, data) => match self.backends.get_mut(&h) {
                Some(link) if !plain(link) => {
                    let mut out = BytesMut::new();
                    for (run, starts_command) in link.cursor.split(data) {
                        let seq = if starts_command { 0 } else { link.next_seq };
                        link.next_seq = link.deflater.write(&mut out, seq, &run);
                    }
                    Output::ToBackend(h, out.freeze())
                }
                _ => Output::ToBackend(h, data),
            },
            Output::CloseBackend(h) => {
                self.backends.remove(&h);
                Output::CloseBackend(h)
            }
            other => other,
        };
        for link in self.client.iter_mut().chain(self.backends.values_mut()) {
            link.plain_outputs = link.plain_outputs.saturating_sub(1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![
            payload.len() as u8,
            (payload.len() >> 8) as u8,
            (payload.len() >> 16) as u8,
            seq,
        ];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn runs_split_at_commands_even_across_writes() {
        let mut c = PlainCursor::default();
        let mut stream = packet(0, b"\x03SELECT 1");
        stream.extend(packet(2, b"file data"));
        stream.extend(packet(0, b"\x0e"));
        let (a, b) = stream.split_at(15);
        let mut runs = c.split(Bytes::copy_from_slice(a));
        // The second packet's header is cut at byte 15: only its first part may wait.
        runs.extend(c.split(Bytes::copy_from_slice(b)));
        let flags: Vec<bool> = runs.iter().map(|r| r.1).collect();
        let joined: Vec<u8> = runs.iter().flat_map(|r| r.0.to_vec()).collect();
        assert_eq!(joined, stream);
        assert_eq!(flags.first(), Some(&true));
        assert_eq!(flags.last(), Some(&true));
        assert_eq!(runs.last().unwrap().0.as_ref(), &packet(0, b"\x0e")[..]);
    }

    #[test]
    fn sequence_ids_that_wrap_in_an_upload_start_no_command() {
        let mut c = PlainCursor::default();
        let mut stream = Vec::new();
        for seq in 250..=255u8 {
            stream.extend(packet(seq, b"file"));
        }
        stream.extend(packet(0, b"still the file"));
        let runs = c.split(Bytes::from(stream));
        assert_eq!(runs.len(), 1);
        assert!(!runs[0].1);
        // After the server's answer, 0 is a command again.
        c.last_seq = None;
        let runs = c.split(Bytes::from(packet(0, b"\x0e")));
        assert!(runs[0].1);
    }

    #[test]
    fn a_continuation_is_no_new_command() {
        let mut c = PlainCursor::default();
        let runs = c.split(Bytes::from(packet(3, b"more of the file")));
        assert_eq!(runs.len(), 1);
        assert!(!runs[0].1);
    }
}
