//! Side connections: short-lived backend connections ferry opens itself (user
//! sync, a client's KILL of a session on another backend), driven by core's
//! `QueryClient` over any connector's stream, with the backend's TLS setting.

use ferry_core::cluster::BackendId;
use ferry_core::packets::ErrPacket;
use ferry_core::query::{QueryClient, QueryOutput, ResultSet};
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::pump::Connector;

/// A logged-in side connection.
pub struct SideConn<'k, K: Connector> {
    stream: K::Stream,
    client: QueryClient,
    buf: Vec<u8>,
    connector: &'k K,
    backend: BackendId,
    addr: std::net::SocketAddr,
}

enum Wanted {
    Ready,
    Answer,
}

impl<'k, K: Connector> SideConn<'k, K>
where
    K::Stream: AsyncRead + AsyncWrite + Unpin,
{
    /// Connects to `backend` at `addr` and logs in as `client` says (over TLS if the backend's setting says so).
    pub async fn open(
        connector: &'k K,
        backend: &BackendId,
        addr: std::net::SocketAddr,
        client: QueryClient,
    ) -> Result<Self, String> {
        let stream = connector
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut conn = SideConn {
            stream,
            client: client.with_tls(connector.tls_for(backend)),
            buf: vec![0u8; 16 * 1024],
            connector,
            backend: backend.clone(),
            addr,
        };
        conn.drive(Wanted::Ready).await?;
        Ok(conn)
    }

    /// Runs one statement: its rows (empty for none), or the backend's ERR.
    pub async fn query(&mut self, sql: &str) -> Result<Result<ResultSet, ErrPacket>, String> {
        self.client.query(sql);
        self.drive(Wanted::Answer)
            .await
            .map(|a| a.expect("an answer was wanted"))
    }

    /// Says goodbye (COM_QUIT) and closes.
    pub async fn quit(mut self) {
        self.client.quit();
        while let Some(QueryOutput::Send(bytes)) = self.client.poll_output() {
            let _ = self.stream.write_all(&bytes).await;
            let _ = self.stream.flush().await;
        }
        let _ = self.stream.close().await;
    }

    async fn drive(
        &mut self,
        wanted: Wanted,
    ) -> Result<Option<Result<ResultSet, ErrPacket>>, String> {
        loop {
            while let Some(out) = self.client.poll_output() {
                match out {
                    QueryOutput::Send(bytes) => {
                        self.stream
                            .write_all(&bytes)
                            .await
                            .map_err(|e| format!("write: {e}"))?;
                        self.stream
                            .flush()
                            .await
                            .map_err(|e| format!("write: {e}"))?;
                    }
                    QueryOutput::StartTls => self
                        .connector
                        .start_tls(&mut self.stream, &self.backend, self.addr)
                        .await
                        .map_err(|e| format!("TLS with backend {}: {e}", self.backend))?,
                    QueryOutput::Ready if matches!(wanted, Wanted::Ready) => return Ok(None),
                    QueryOutput::Ready => {}
                    QueryOutput::Answer(answer) => return Ok(Some(answer)),
                    QueryOutput::Failed(why) => return Err(why),
                }
            }
            let n = self
                .stream
                .read(&mut self.buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("backend closed the connection".into());
            }
            self.client.handle(&self.buf[..n]);
        }
    }
}
