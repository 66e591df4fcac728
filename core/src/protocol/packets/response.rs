//! HandshakeResponse41: the client's answer to the handshake, and the SSLRequest prefix.

use bytes::{BufMut, BytesMut};

use super::codec::{put_lenenc_bytes, put_lenenc_int, put_null_terminated, Reader};
use super::flags::caps::*;
use super::ParseError;

/// Length of an SSLRequest payload (the fixed head of a HandshakeResponse41).
/// Length of an SSLRequest: the fixed head of a handshake response.
pub const SSL_REQUEST_LEN: usize = 32;

/// The client's login packet (protocol 4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// Capability flags the client asks for.
    pub capabilities: u32,
    /// MariaDB extended capabilities (only meaningful against a MariaDB server).
    pub mariadb_capabilities: u32,
    /// Largest packet the client will accept.
    pub max_packet_size: u32,
    /// Connection collation id.
    pub collation: u8,
    /// User name as the client sent it.
    pub user: String,
    /// The auth plugin's response (a scramble for mysql_native_password).
    pub auth_response: Vec<u8>,
    /// Initial database (`CLIENT_CONNECT_WITH_DB`).
    pub database: Option<String>,
    /// Auth plugin the response was made with (`CLIENT_PLUGIN_AUTH`).
    pub auth_plugin: Option<String>,
    /// Connection attributes in the order sent (`CLIENT_CONNECT_ATTRS`).
    pub attributes: Vec<(String, String)>,
}

const WHAT: &str = "handshake response";

/// True if `payload` is an SSLRequest: the fixed head of a response with `CLIENT_SSL`, and nothing more.
pub fn is_ssl_request(payload: &[u8]) -> bool {
    if payload.len() != SSL_REQUEST_LEN {
        return false;
    }
    let caps = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    caps & CLIENT_SSL != 0
}

impl HandshakeResponse {
    /// Parses a HandshakeResponse41 payload (not an SSLRequest; check [`is_ssl_request`] first).
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(payload, WHAT);
        let capabilities = r.u32()?;
        if capabilities & CLIENT_PROTOCOL_41 == 0 {
            return Err(ParseError::Invalid(
                WHAT,
                "client does not speak protocol 4.1",
            ));
        }
        let max_packet_size = r.u32()?;
        let collation = r.u8()?;
        r.bytes(19)?;
        let mariadb_capabilities = r.u32()?;
        let user = r.utf8(r.clone().null_terminated()?)?;
        r.null_terminated()?;
        let auth_response = if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc_bytes()?
        } else if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = r.u8()? as usize;
            r.bytes(n)?
        } else {
            r.null_terminated()?
        }
        .to_vec();
        let mut resp = HandshakeResponse {
            capabilities,
            mariadb_capabilities,
            max_packet_size,
            collation,
            user,
            auth_response,
            database: None,
            auth_plugin: None,
            attributes: Vec::new(),
        };
        // Clients set flags they then leave out; an absent trailing field is not an error.
        if capabilities & CLIENT_CONNECT_WITH_DB != 0 && !r.is_empty() {
            let db = r.null_terminated_or_rest();
            // Some clients (mysql-connector-python) send the flag with an empty name: no database.
            let db = r.utf8(db)?;
            resp.database = (!db.is_empty()).then_some(db);
        }
        if capabilities & CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
            let plugin = r.null_terminated_or_rest();
            let plugin = r.utf8(plugin)?;
            // An empty name names no plugin (the server's default), as an absent one
            // does; what `write` puts for `None` reads back as `None`.
            resp.auth_plugin = (!plugin.is_empty()).then_some(plugin);
        }
        if capabilities & CLIENT_CONNECT_ATTRS != 0 && !r.is_empty() {
            let all = r.lenenc_bytes()?;
            let mut a = Reader::new(all, "connection attributes");
            while !a.is_empty() {
                let k = a.utf8(a.clone().lenenc_bytes()?)?;
                a.lenenc_bytes()?;
                let v = a.utf8(a.clone().lenenc_bytes()?)?;
                a.lenenc_bytes()?;
                resp.attributes.push((k, v));
            }
        }
        Ok(resp)
    }

    /// Appends this response as a payload, encoding fields as its capability flags say.
    pub fn write(&self, out: &mut BytesMut) {
        let caps = self.capabilities;
        out.put_u32_le(caps);
        out.put_u32_le(self.max_packet_size);
        out.put_u8(self.collation);
        out.put_slice(&[0; 19]);
        out.put_u32_le(self.mariadb_capabilities);
        put_null_terminated(out, self.user.as_bytes());
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            put_lenenc_bytes(out, &self.auth_response);
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            let n = self.auth_response.len().min(255);
            out.put_u8(n as u8);
            out.put_slice(&self.auth_response[..n]);
        } else {
            put_null_terminated(out, &self.auth_response);
        }
        if caps & CLIENT_CONNECT_WITH_DB != 0 {
            put_null_terminated(out, self.database.as_deref().unwrap_or("").as_bytes());
        }
        if caps & CLIENT_PLUGIN_AUTH != 0 {
            put_null_terminated(out, self.auth_plugin.as_deref().unwrap_or("").as_bytes());
        }
        if caps & CLIENT_CONNECT_ATTRS != 0 {
            let mut attrs = BytesMut::new();
            for (k, v) in &self.attributes {
                put_lenenc_bytes(&mut attrs, k.as_bytes());
                put_lenenc_bytes(&mut attrs, v.as_bytes());
            }
            put_lenenc_int(out, attrs.len() as u64);
            out.put_slice(&attrs);
        }
    }
}
