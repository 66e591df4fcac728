//! Reads a backend's handshake: learns its version and capabilities, and tells whether it answers.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_core::packets::Handshake;
use ferry_core::wire::PacketDecoder;
use futures_lite::{AsyncReadExt, FutureExt};

use crate::clock::Clock;
use crate::pump::Connector;

/// Connects to `addr` and parses its handshake, within `timeout`.
pub async fn read_handshake(addr: SocketAddr, timeout: Duration) -> Result<Handshake, String> {
    let clock = crate::clock::SystemClock::new();
    probe(&crate::proxy::TcpConnector, &clock, addr, timeout).await
}

/// [`read_handshake`] over any connector and clock (the simulator's too).
pub async fn probe<K: Connector, T: Clock>(
    connector: &K,
    clock: &T,
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
                return Handshake::parse(&packet.payload).map_err(|e| e.to_string());
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
