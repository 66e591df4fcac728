//! COM_CHANGE_USER: log in again as another user on the same connection.

use bytes::{BufMut, BytesMut};

use super::codec::{put_lenenc_int, put_null_terminated, Reader};
use super::flags::caps::*;
use super::flags::command::COM_CHANGE_USER;
use super::ParseError;

/// A COM_CHANGE_USER command, as sent by a client with the given capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeUser {
    /// The user name.
    pub user: String,
    /// The auth response, scrambled with the connection's (initial) salt.
    pub auth_response: Vec<u8>,
    /// The new default database ("" for none).
    pub database: String,
    /// Collation id, if sent.
    pub collation: Option<u16>,
    /// Auth plugin name, if sent.
    pub auth_plugin: Option<String>,
    /// Raw connection attributes block (length prefix excluded), if sent.
    pub attributes: Option<Vec<u8>>,
}

const WHAT: &str = "COM_CHANGE_USER";

impl ChangeUser {
    /// Parses a COM_CHANGE_USER payload (command byte included).
    pub fn parse(payload: &[u8], capabilities: u32) -> Result<Self, ParseError> {
        let mut r = Reader::new(payload, WHAT);
        if r.u8()? != COM_CHANGE_USER {
            return Err(ParseError::Invalid(WHAT, "not a COM_CHANGE_USER"));
        }
        let user = r.utf8(r.clone().null_terminated()?)?;
        r.null_terminated()?;
        let auth_response = if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = r.u8()? as usize;
            r.bytes(n)?.to_vec()
        } else {
            r.null_terminated()?.to_vec()
        };
        let database = r.utf8(r.clone().null_terminated_or_rest())?;
        r.null_terminated_or_rest();
        let mut cu = ChangeUser {
            user,
            auth_response,
            database,
            collation: None,
            auth_plugin: None,
            attributes: None,
        };
        if r.remaining() < 2 {
            // No character set, so nothing after it either (one stray byte is no plugin name).
            return Ok(cu);
        }
        cu.collation = Some(r.u16()?);
        if capabilities & CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
            let plugin = r.null_terminated_or_rest();
            let plugin = r.utf8(plugin)?;
            // Empty names no plugin, as in the handshake response.
            cu.auth_plugin = (!plugin.is_empty()).then_some(plugin);
        }
        if capabilities & CLIENT_CONNECT_ATTRS != 0 && !r.is_empty() {
            cu.attributes = Some(r.lenenc_bytes()?.to_vec());
        }
        Ok(cu)
    }

    /// Appends this command as a payload for a server with `capabilities`.
    pub fn write(&self, out: &mut BytesMut, capabilities: u32) {
        out.put_u8(COM_CHANGE_USER);
        put_null_terminated(out, self.user.as_bytes());
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = self.auth_response.len().min(255);
            out.put_u8(n as u8);
            out.put_slice(&self.auth_response[..n]);
        } else {
            put_null_terminated(out, &self.auth_response);
        }
        put_null_terminated(out, self.database.as_bytes());
        let Some(collation) = self.collation else {
            return;
        };
        out.put_u16_le(collation);
        if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            put_null_terminated(out, self.auth_plugin.as_deref().unwrap_or("").as_bytes());
        }
        if capabilities & CLIENT_CONNECT_ATTRS != 0 {
            if let Some(attrs) = &self.attributes {
                put_lenenc_int(out, attrs.len() as u64);
                out.put_slice(attrs);
            }
        }
    }
}
