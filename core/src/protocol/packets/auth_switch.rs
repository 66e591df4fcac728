//! Auth switch and auth-more-data packets, exchanged after the handshake response.

use bytes::{BufMut, BytesMut};

use super::codec::{put_null_terminated, Reader};
use super::ParseError;

/// The server asks the client to answer with another plugin and salt (0xFE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSwitchRequest {
    /// The plugin to use.
    pub plugin: String,
    /// The plugin's data, usually a new salt (trailing NUL removed).
    pub data: Vec<u8>,
}

const SWITCH: &str = "auth switch request";

impl AuthSwitchRequest {
    /// Parses an auth switch request payload.
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(payload, SWITCH);
        if r.u8()? != 0xFE {
            return Err(ParseError::Invalid(SWITCH, "does not start with 0xFE"));
        }
        let plugin = r.utf8(r.clone().null_terminated()?)?;
        r.null_terminated()?;
        let mut data = r.rest().to_vec();
        if data.last() == Some(&0) {
            data.pop();
        }
        Ok(AuthSwitchRequest { plugin, data })
    }

    /// Appends this request as a payload (the data gets its trailing NUL).
    pub fn write(&self, out: &mut BytesMut) {
        out.put_u8(0xFE);
        put_null_terminated(out, self.plugin.as_bytes());
        put_null_terminated(out, &self.data);
    }
}

/// Extra auth data from the server (0x01), e.g. caching_sha2_password's fast-auth result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthMoreData {
    /// The plugin-specific data.
    pub data: Vec<u8>,
}

const MORE: &str = "auth more data";

impl AuthMoreData {
    /// Parses an auth-more-data payload.
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(payload, MORE);
        if r.u8()? != 0x01 {
            return Err(ParseError::Invalid(MORE, "does not start with 0x01"));
        }
        Ok(AuthMoreData {
            data: r.rest().to_vec(),
        })
    }

    /// Appends this packet as a payload.
    pub fn write(&self, out: &mut BytesMut) {
        out.put_u8(0x01);
        out.put_slice(&self.data);
    }
}
