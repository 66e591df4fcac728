//! Reads a backend's handshake: learns its version and capabilities, and tells
//! whether it answers; for a backend with TLS, also completes the TLS
//! handshake (so a certificate that does not verify fails the check).

use std::net::SocketAddr;
use std::time::Duration;

use ferry_core::cluster::BackendId;
use ferry_core::login::frame;
use ferry_core::packets::flags::caps::*;
use ferry_core::packets::{Handshake, HandshakeResponse, SSL_REQUEST_LEN};
use ferry_core::wire::PacketDecoder;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};

use crate::clock::Clock;
use crate::pump::Connector;

/// Connects to `backend` at `addr` and parses its handshake, within `timeout`.
pub async fn read_handshake(
    connector: &crate::proxy::TcpConnector,
    backend: &BackendId,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Handshake, String> {
    let clock = crate::clock::SystemClock::new();
    probe(connector, &clock, backend, addr, timeout).await
}

/// [`read_handshake`] over any connector and clock (the simulator's too).
pub async fn probe<K: Connector, T: Clock>(
    connector: &K,
    clock: &T,
    backend: &BackendId,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Handshake, String> {
    let attempt = async {
        let mut stream = connector
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut decoder = PacketDecoder::new(64 * 1024);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(packet) = decoder.decode().map_err(|e| e.to_string())? {
                if packet.payload.first() == Some(&0xFF) {
                    let err = ferry_core::packets::ErrPacket::parse(&packet.payload)
                        .map_err(|e| e.to_string())?;
                    return Err(format!("backend refused: {} {}", err.code, err.message));
                }
                let handshake = Handshake::parse(&packet.payload).map_err(|e| e.to_string())?;
                if connector.tls_for(backend) {
                    tls_handshake(connector, &mut stream, backend, addr, &handshake).await?;
                }
                return Ok(handshake);
            }
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before its handshake".into());
            }
            decoder.extend(&buf[..n]);
        }
    };
    let deadline = clock.now() + timeout;
    attempt
        .or(async {
            clock.sleep_until(deadline).await;
            Err(format!("no handshake within {timeout:?}"))
        })
        .await
}

/// Sends an SSLRequest and completes the TLS handshake, then closes.
async fn tls_handshake<K: Connector>(
    connector: &K,
    stream: &mut K::Stream,
    backend: &BackendId,
    addr: SocketAddr,
    handshake: &Handshake,
) -> Result<(), String> {
    if handshake.capabilities & CLIENT_SSL == 0 {
        return Err("TLS is configured for this backend, but it does not offer TLS".into());
    }
    let request = HandshakeResponse {
        capabilities: CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_SSL,
        mariadb_capabilities: 0,
        max_packet_size: 1 << 24,
        collation: 45,
        user: String::new(),
        auth_response: Vec::new(),
        database: None,
        auth_plugin: None,
        attributes: Vec::new(),
    };
    let mut payload = bytes::BytesMut::new();
    request.write(&mut payload);
    stream
        .write_all(&frame(&payload[..SSL_REQUEST_LEN], 1))
        .await
        .map_err(|e| format!("write: {e}"))?;
    connector
        .start_tls(stream, backend, addr)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let _ = stream.close().await;
    Ok(())
}
