//! Commands ferry itself sends on a backend connection (restore statements,
//! the user-variable read, re-prepares), never interleaved with the client's.
//!
//! They are written pipelined (the server answers in order) and their
//! responses are read here, not passed to the client. Memory is bounded by
//! the packet limit and [`ROWS_LIMIT`].

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::packets::codec::Reader;
use crate::packets::flags::caps::CLIENT_DEPRECATE_EOF;
use crate::packets::flags::command::{COM_INIT_DB, COM_QUERY, COM_STMT_PREPARE};
use crate::packets::flags::status::SERVER_MORE_RESULTS_EXISTS;
use crate::packets::{EofPacket, ErrPacket, OkPacket};
use crate::wire::{write_packet, PacketDecoder};

/// Most bytes of rows one injected query may return.
pub const ROWS_LIMIT: usize = 16 << 20;

/// A command ferry sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `COM_QUERY` (the statement's bytes: text a client sent may be in any character set).
    Query(Vec<u8>),
    /// `COM_INIT_DB`.
    InitDb(String),
    /// `COM_STMT_PREPARE`.
    Prepare(Vec<u8>),
}

/// A text result row: cells, `None` for NULL.
pub type Row = Vec<Option<Vec<u8>>>;

/// The server's answer to one [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// OK.
    Ok(OkPacket),
    /// ERR.
    Err(ErrPacket),
    /// A result set's rows.
    Rows(Vec<Row>),
    /// A statement was prepared.
    Prepared {
        /// The server's statement id.
        id: u32,
        /// Its parameter count.
        params: u16,
        /// Its column count.
        columns: u16,
        /// Its column definitions (payloads), when asked for ([`Injected::keeping_definitions`]).
        definitions: Vec<Vec<u8>>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Query,
    OkOrErr,
    Prepare,
}

#[derive(Debug)]
enum Reading {
    /// The first packet of the response.
    Start(Shape),
    /// Column definitions of a result set.
    Columns {
        left: u64,
    },
    ColumnsEof,
    Rows {
        rows: Vec<Row>,
        bytes: usize,
    },
    /// Definitions after a prepare OK: `params` then `columns`, each run followed by an EOF unless deprecated.
    PrepareDefs {
        reply: Reply,
        left: u64,
        eof: bool,
        then_columns: u64,
    },
}

/// Ferry's own commands on one connection and their replies.
#[derive(Debug)]
pub struct Injected {
    caps: u32,
    decoder: PacketDecoder,
    waiting: VecDeque<Shape>,
    reading: Option<Reading>,
    replies: VecDeque<Reply>,
    /// Most bytes of rows one answer may have.
    rows_limit: usize,
    /// Keep prepared statements' column definitions (at most `rows_limit` bytes in all).
    keep_definitions: bool,
    kept: usize,
}

impl Injected {
    /// A queue on a connection with `caps`, reading packets up to `max_packet` bytes.
    pub fn new(caps: u32, max_packet: usize) -> Self {
        Injected {
            caps,
            decoder: PacketDecoder::new(max_packet),
            waiting: VecDeque::new(),
            reading: None,
            replies: VecDeque::new(),
            rows_limit: ROWS_LIMIT,
            keep_definitions: false,
            kept: 0,
        }
    }

    /// Keeps the column definitions of every prepare reply (MariaDB's metadata
    /// cache: the client may have to be given them), at most the rows limit in all.
    pub fn keeping_definitions(mut self, keep: bool) -> Self {
        self.keep_definitions = keep;
        self
    }

    /// Accepts answers of at most `limit` bytes of rows instead of [`ROWS_LIMIT`].
    pub fn with_rows_limit(mut self, limit: usize) -> Self {
        self.rows_limit = limit;
        self
    }

    /// Queues `request`; returns its bytes to send.
    pub fn request(&mut self, request: &Request) -> Bytes {
        let mut out = BytesMut::new();
        self.write(request, &mut out);
        out.freeze()
    }

    /// Queues `request`, appending its bytes to `out` (several requests, one write).
    pub fn write(&mut self, request: &Request, out: &mut BytesMut) {
        let (code, body, shape): (u8, &[u8], Shape) = match request {
            Request::Query(sql) => (COM_QUERY, sql, Shape::Query),
            Request::InitDb(db) => (COM_INIT_DB, db.as_bytes(), Shape::OkOrErr),
            Request::Prepare(sql) => (COM_STMT_PREPARE, sql, Shape::Prepare),
        };
        let mut payload = Vec::with_capacity(body.len() + 1);
        payload.push(code);
        payload.extend_from_slice(body);
        write_packet(out, 0, &payload);
        self.waiting.push_back(shape);
    }

    /// Requests sent and not yet answered in full.
    pub fn outstanding(&self) -> usize {
        self.waiting.len() + usize::from(self.reading.is_some())
    }

    /// Feeds bytes from the backend. An error means the connection can no longer be followed.
    ///
    /// Decoding stops once every request is answered: bytes after that belong
    /// to someone else (see [`Injected::take_rest`]).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        self.decoder.extend(data);
        while self.outstanding() > 0 {
            let packet = match self.decoder.decode() {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            self.packet(&packet.payload)?;
        }
        Ok(())
    }

    /// Bytes received after the last reply (the client's responses, once ferry's are done).
    pub fn take_rest(&mut self) -> BytesMut {
        self.decoder.take_remaining()
    }

    /// The next complete reply, in request order.
    pub fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }

    fn deprecate_eof(&self) -> bool {
        self.caps & CLIENT_DEPRECATE_EOF != 0
    }

    fn done(&mut self, reply: Reply) {
        self.reading = None;
        self.replies.push_back(reply);
    }

    fn packet(&mut self, p: &[u8]) -> Result<(), String> {
        let reading = match self.reading.take() {
            Some(r) => r,
            None => Reading::Start(
                self.waiting
                    .pop_front()
                    .ok_or("the backend sent a packet ferry did not ask for")?,
            ),
        };
        let first = p.first().copied();
        match reading {
            Reading::Start(shape) => match (shape, first) {
                (_, Some(0xFF)) => {
                    let err = ErrPacket::parse(p).map_err(|e| e.to_string())?;
                    self.done(Reply::Err(err));
                }
                (Shape::Query | Shape::OkOrErr, Some(0x00)) => {
                    let ok = OkPacket::parse(p, self.caps).map_err(|e| e.to_string())?;
                    if ok.status & SERVER_MORE_RESULTS_EXISTS != 0 {
                        return Err("more results than one statement gives".into());
                    }
                    self.done(Reply::Ok(ok));
                }
                (Shape::Query, Some(0xFB)) => {
                    return Err("the backend asked for a LOCAL INFILE".into())
                }
                (Shape::Query, Some(_)) => {
                    let n = Reader::new(p, "column count")
                        .lenenc_int()
                        .map_err(|e| e.to_string())?;
                    self.reading = Some(Reading::Columns { left: n });
                }
                (Shape::Prepare, Some(0x00)) => {
                    let mut r = Reader::new(p, "prepare OK");
                    let parsed =
                        (|| Some((r.u8().ok()?, r.u32().ok()?, r.u16().ok()?, r.u16().ok()?)))();
                    let (_, id, columns, params) = parsed.ok_or("a truncated prepare OK")?;
                    let reply = Reply::Prepared {
                        id,
                        params,
                        columns,
                        definitions: Vec::new(),
                    };
                    self.prepare_defs(reply, u64::from(params), u64::from(columns));
                }
                _ => return Err(format!("an unexpected reply to ferry's {shape:?}")),
            },
            Reading::Columns { left } => {
                self.reading = Some(if left > 1 {
                    Reading::Columns { left: left - 1 }
                } else if self.deprecate_eof() {
                    Reading::Rows {
                        rows: Vec::new(),
                        bytes: 0,
                    }
                } else {
                    Reading::ColumnsEof
                });
            }
            Reading::ColumnsEof => {
                if !EofPacket::matches(p) {
                    return Err("column definitions not followed by EOF".into());
                }
                self.reading = Some(Reading::Rows {
                    rows: Vec::new(),
                    bytes: 0,
                });
            }
            Reading::Rows { mut rows, bytes } => match first {
                Some(0xFE) if p.len() < 0xFF_FFFF => {
                    let status = if self.deprecate_eof() {
                        OkPacket::parse(p, self.caps)
                            .map_err(|e| e.to_string())?
                            .status
                    } else {
                        EofPacket::parse(p).map_err(|e| e.to_string())?.status
                    };
                    if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                        return Err("more results than one statement gives".into());
                    }
                    self.done(Reply::Rows(rows));
                }
                Some(0xFF) => {
                    let err = ErrPacket::parse(p).map_err(|e| e.to_string())?;
                    self.done(Reply::Err(err));
                }
                _ => {
                    let bytes = bytes + p.len();
                    if bytes > self.rows_limit {
                        return Err(format!("more than {} bytes of rows", self.rows_limit));
                    }
                    rows.push(parse_row(p)?);
                    self.reading = Some(Reading::Rows { rows, bytes });
                }
            },
            Reading::PrepareDefs {
                mut reply,
                left,
                eof,
                then_columns,
            } => {
                // Parameters come first: the columns' run is the one with nothing after it.
                if let Reply::Prepared {
                    definitions,
                    columns,
                    ..
                } = &mut reply
                {
                    if self.keep_definitions && !eof && then_columns == 0 && *columns > 0 {
                        self.kept += p.len();
                        if self.kept > self.rows_limit {
                            let limit = self.rows_limit;
                            return Err(format!("more than {limit} bytes of column definitions"));
                        }
                        definitions.push(p.to_vec());
                    }
                }
                if eof {
                    if !EofPacket::matches(p) {
                        return Err("definitions not followed by EOF".into());
                    }
                    self.prepare_defs(reply, 0, then_columns);
                } else if left > 1 {
                    self.reading = Some(Reading::PrepareDefs {
                        reply,
                        left: left - 1,
                        eof,
                        then_columns,
                    });
                } else if self.deprecate_eof() {
                    self.prepare_defs(reply, 0, then_columns);
                } else {
                    self.reading = Some(Reading::PrepareDefs {
                        reply,
                        left: 0,
                        eof: true,
                        then_columns,
                    });
                }
            }
        }
        Ok(())
    }

    /// Next run of definitions of a prepare reply, or the reply is complete.
    fn prepare_defs(&mut self, reply: Reply, params: u64, columns: u64) {
        let (left, then_columns) = if params > 0 {
            (params, columns)
        } else {
            (columns, 0)
        };
        if left == 0 {
            self.done(reply);
        } else {
            self.reading = Some(Reading::PrepareDefs {
                reply,
                left,
                eof: false,
                then_columns,
            });
        }
    }
}

fn parse_row(p: &[u8]) -> Result<Row, String> {
    let mut r = Reader::new(p, "row");
    let mut row = Vec::new();
    while !r.is_empty() {
        if r.peek() == Some(0xFB) {
            r.u8().map_err(|e| e.to_string())?;
            row.push(None);
        } else {
            row.push(Some(r.lenenc_bytes().map_err(|e| e.to_string())?.to_vec()));
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::flags::caps::CLIENT_PROTOCOL_41;

    fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_packet(&mut out, seq, payload);
        out.to_vec()
    }

    #[test]
    fn pipelined_replies_come_back_in_order() {
        let mut q = Injected::new(CLIENT_PROTOCOL_41, 1 << 20);
        let mut out = BytesMut::new();
        q.write(&Request::Query("SET @a = 1".into()), &mut out);
        q.write(&Request::Query("SELECT @a, NULL".into()), &mut out);
        q.write(&Request::InitDb("nope".into()), &mut out);
        q.write(&Request::Prepare(b"SELECT ?".to_vec()), &mut out);
        assert_eq!(q.outstanding(), 4);
        let mut wire = Vec::new();
        wire.extend(frame(1, &[0, 0, 0, 2, 0, 0, 0]));
        wire.extend(frame(1, &[2]));
        wire.extend(frame(2, b"\x03defcol"));
        wire.extend(frame(3, b"\x03defcol"));
        wire.extend(frame(4, &[0xFE, 0, 0, 2, 0]));
        wire.extend(frame(5, b"\x011\xfb"));
        wire.extend(frame(6, &[0xFE, 0, 0, 2, 0]));
        wire.extend(frame(1, b"\xff\x19\x04#42000Unknown database 'nope'"));
        wire.extend(frame(1, &[0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]));
        wire.extend(frame(2, b"\x03defparam"));
        wire.extend(frame(3, &[0xFE, 0, 0, 2, 0]));
        wire.extend(frame(4, b"\x03defcol"));
        wire.extend(frame(5, &[0xFE, 0, 0, 2, 0]));
        // Any chunking gives the same replies.
        for chunk in [1, 3, wire.len()] {
            let mut q2 = Injected::new(CLIENT_PROTOCOL_41, 1 << 20);
            let mut o = BytesMut::new();
            q2.write(&Request::Query("SET @a = 1".into()), &mut o);
            q2.write(&Request::Query("SELECT @a, NULL".into()), &mut o);
            q2.write(&Request::InitDb("nope".into()), &mut o);
            q2.write(&Request::Prepare(b"SELECT ?".to_vec()), &mut o);
            for c in wire.chunks(chunk) {
                q2.feed(c).unwrap();
            }
            let replies: Vec<Reply> = std::iter::from_fn(|| q2.poll_reply()).collect();
            assert_eq!(replies.len(), 4, "chunk {chunk}");
            assert!(matches!(replies[0], Reply::Ok(_)));
            assert_eq!(
                replies[1],
                Reply::Rows(vec![vec![Some(b"1".to_vec()), None]])
            );
            assert!(matches!(&replies[2], Reply::Err(e) if e.code == 1049));
            assert_eq!(
                replies[3],
                Reply::Prepared {
                    id: 7,
                    params: 1,
                    columns: 1,
                    definitions: Vec::new(),
                }
            );
            assert_eq!(q2.outstanding(), 0);
        }
        // Bytes after the last reply are left for whoever comes next.
        let mut one = Injected::new(CLIENT_PROTOCOL_41, 1 << 20);
        one.request(&Request::InitDb("x".into()));
        let mut two = frame(1, &[0, 0, 0, 2, 0, 0, 0]);
        two.extend(frame(1, &[0, 0, 0, 2, 0, 0, 0]));
        one.feed(&two).unwrap();
        assert!(matches!(one.poll_reply(), Some(Reply::Ok(_))));
        assert_eq!(one.take_rest().len(), 11);
    }
}
