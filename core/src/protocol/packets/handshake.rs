//! Handshake V10: the first packet a server sends.

use bytes::{BufMut, BytesMut};

use super::codec::{put_null_terminated, Reader};
use super::flags::caps::*;
use super::ParseError;

/// The server's initial handshake (protocol version 10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Server version string, e.g. `5.5.5-10.11.6-MariaDB`.
    pub server_version: String,
    /// The connection (thread) id the server assigned.
    pub connection_id: u32,
    /// The salt for the auth plugin (20 bytes for mysql_native_password, no trailing NUL).
    pub auth_data: Vec<u8>,
    /// Capability flags the server offers.
    pub capabilities: u32,
    /// MariaDB extended capabilities (0 when the server sets `CLIENT_MYSQL`).
    pub mariadb_capabilities: u32,
    /// Default collation id.
    pub collation: u8,
    /// Server status flags.
    pub status: u16,
    /// Default auth plugin name.
    pub auth_plugin: Option<String>,
}

const WHAT: &str = "handshake";

impl Handshake {
    /// Parses a Handshake V10 payload.
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(payload, WHAT);
        let protocol = r.u8()?;
        if protocol != 10 {
            return Err(ParseError::Invalid(WHAT, "protocol version is not 10"));
        }
        let server_version = r.utf8(r.clone().null_terminated()?)?;
        r.null_terminated()?;
        let connection_id = r.u32()?;
        let mut auth_data = r.bytes(8)?.to_vec();
        r.u8()?; // filler
        let mut capabilities = r.u16()? as u32;
        let mut h = Handshake {
            server_version,
            connection_id,
            auth_data: Vec::new(),
            capabilities,
            mariadb_capabilities: 0,
            collation: 0,
            status: 0,
            auth_plugin: None,
        };
        if r.is_empty() {
            h.auth_data = auth_data;
            return Ok(h);
        }
        h.collation = r.u8()?;
        h.status = r.u16()?;
        capabilities |= (r.u16()? as u32) << 16;
        h.capabilities = capabilities;
        let auth_len = r.u8()? as usize;
        r.bytes(6)?;
        let ext = r.u32()?;
        if capabilities & CLIENT_MYSQL == 0 {
            h.mariadb_capabilities = ext;
        }
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = auth_len.saturating_sub(8).max(13);
            let part2 = r.bytes(n.min(r.remaining()))?;
            auth_data.extend_from_slice(part2);
            // The salt ends with a NUL that is not part of it.
            if auth_data.last() == Some(&0) {
                auth_data.pop();
            }
        }
        h.auth_data = auth_data;
        if capabilities & CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
            h.auth_plugin = Some(r.utf8(r.clone().null_terminated_or_rest())?);
        }
        Ok(h)
    }

    /// Appends this handshake as a payload.
    pub fn write(&self, out: &mut BytesMut) {
        out.put_u8(10);
        put_null_terminated(out, self.server_version.as_bytes());
        out.put_u32_le(self.connection_id);
        let mut salt = [0u8; 8];
        let head = self.auth_data.len().min(8);
        salt[..head].copy_from_slice(&self.auth_data[..head]);
        out.put_slice(&salt);
        out.put_u8(0);
        out.put_u16_le(self.capabilities as u16);
        out.put_u8(self.collation);
        out.put_u16_le(self.status);
        out.put_u16_le((self.capabilities >> 16) as u16);
        let auth_len = if self.capabilities & CLIENT_PLUGIN_AUTH != 0 {
            (self.auth_data.len() + 1).max(21) as u8
        } else {
            0
        };
        out.put_u8(auth_len);
        out.put_slice(&[0; 6]);
        if self.capabilities & CLIENT_MYSQL == 0 {
            out.put_u32_le(self.mariadb_capabilities);
        } else {
            out.put_u32_le(0);
        }
        if self.capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let tail = self.auth_data.get(8..).unwrap_or(&[]);
            out.put_slice(tail);
            // Pad to at least 12 bytes, then the NUL.
            for _ in tail.len()..12 {
                out.put_u8(0);
            }
            out.put_u8(0);
        }
        if self.capabilities & CLIENT_PLUGIN_AUTH != 0 {
            put_null_terminated(out, self.auth_plugin.as_deref().unwrap_or("").as_bytes());
        }
    }
}
