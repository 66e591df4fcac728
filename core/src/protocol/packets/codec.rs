//! Reading and writing the protocol's primitive values: fixed-width little-endian
//! integers, length-encoded integers and strings, NUL-terminated strings.

use bytes::{BufMut, BytesMut};

use super::ParseError;

/// A cursor over a packet payload that never panics: every read checks its bounds.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the packet in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// True when everything has been read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next byte, without consuming it.
    pub fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    fn short(&self) -> ParseError {
        ParseError::Truncated(self.what)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// A 1-byte integer.
    pub fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.bytes(1)?[0])
    }

    /// A 2-byte little-endian integer.
    pub fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A 3-byte little-endian integer.
    pub fn u24(&mut self) -> Result<u32, ParseError> {
        let b = self.bytes(3)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    /// A 4-byte little-endian integer.
    pub fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An 8-byte little-endian integer.
    pub fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-encoded integer (0xFB, NULL, is an error here; 0xFF is an error).
    pub fn lenenc_int(&mut self) -> Result<u64, ParseError> {
        match self.u8()? {
            n @ 0..=0xFA => Ok(n as u64),
            0xFC => Ok(self.u16()? as u64),
            0xFD => Ok(self.u24()? as u64),
            0xFE => self.u64(),
            b => Err(ParseError::Invalid(self.what, lenenc_marker(b))),
        }
    }

    /// A length-encoded string.
    pub fn lenenc_bytes(&mut self) -> Result<&'a [u8], ParseError> {
        let n = self.lenenc_int()?;
        let n = usize::try_from(n).map_err(|_| self.short())?;
        self.bytes(n)
    }

    /// A NUL-terminated string (without the NUL).
    pub fn null_terminated(&mut self) -> Result<&'a [u8], ParseError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::Invalid(self.what, "missing NUL terminator"))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated string, or everything left if there is no NUL (as lenient servers send).
    pub fn null_terminated_or_rest(&mut self) -> &'a [u8] {
        match self.buf.iter().position(|&b| b == 0) {
            Some(end) => {
                let s = &self.buf[..end];
                self.buf = &self.buf[end + 1..];
                s
            }
            None => self.rest(),
        }
    }

    /// A UTF-8 string from `bytes`.
    pub fn utf8(&self, bytes: &[u8]) -> Result<String, ParseError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| ParseError::Invalid(self.what, "not UTF-8"))
    }
}

fn lenenc_marker(b: u8) -> &'static str {
    if b == 0xFB {
        "unexpected NULL length-encoded integer"
    } else {
        "bad length-encoded integer marker"
    }
}

/// Appends a length-encoded integer.
pub fn put_lenenc_int(out: &mut BytesMut, n: u64) {
    match n {
        0..=0xFA => out.put_u8(n as u8),
        0xFB..=0xFFFF => {
            out.put_u8(0xFC);
            out.put_u16_le(n as u16);
        }
        0x1_0000..=0xFF_FFFF => {
            out.put_u8(0xFD);
            out.put_uint_le(n, 3);
        }
        _ => {
            out.put_u8(0xFE);
            out.put_u64_le(n);
        }
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_bytes(out: &mut BytesMut, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.put_slice(s);
}

/// Appends a NUL-terminated string.
pub fn put_null_terminated(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}
