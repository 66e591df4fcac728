//! The PROXY protocol at ferry's two edges: a v2 header read from a trusted
//! load balancer before anything else (the address it carries stands for the
//! client's in logs, the admin API and towards backends), a header from anyone
//! else refused as soon as it shows, and a header sent first on every
//! connection to a backend configured with `proxy_protocol: true`.
//!
//! The codec is core's ([`ferry_core::proxy_header`]); this module does the I/O.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ferry_core::cluster::BackendId;
use ferry_core::proxy_header::{
    self, Addresses, HeaderSniffer, Parsed, ProxyHeader, ProxyHeaderError, Sniffed, FIXED_LEN,
};
use ferry_core::Timestamp;
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::proxy::Shared;
use crate::pump::Connector;

/// Who a client connection is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    /// The TCP peer (a load balancer, when it sent a header).
    pub peer: SocketAddr,
    /// The client: the header's source address, else the peer.
    pub client: SocketAddr,
    /// Where the client connected to: the header's destination, else ferry's listen address.
    pub local: SocketAddr,
}

impl From<SocketAddr> for ClientAddr {
    /// A direct connection from `peer` (no header; where it connected to is not known).
    fn from(peer: SocketAddr) -> Self {
        ClientAddr {
            peer,
            client: peer,
            local: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

impl ClientAddr {
    /// The header ferry sends a backend on this client's behalf.
    pub fn header(&self) -> ProxyHeader {
        ProxyHeader::Proxy(Some(Addresses {
            source: self.client,
            destination: self.local,
        }))
    }
}

/// Learns who a new connection is from: reads the PROXY header a trusted
/// peer must send first (until `deadline`, the login timeout), or watches an
/// untrusted one for a header to refuse. `None`: the connection is to be
/// closed (logged here).
pub async fn accept<S, T>(
    shared: &Shared,
    mut stream: S,
    peer: SocketAddr,
    clock: &T,
    deadline: Timestamp,
) -> Option<(ClientStream<S>, ClientAddr)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Clock,
{
    let (trusted, listen) = {
        let config = shared.config.read().expect("config lock");
        let trusted = config
            .proxy_protocol
            .as_ref()
            .is_some_and(|p| p.trusts(peer.ip()));
        (trusted, config.listen)
    };
    let mut addr = ClientAddr {
        peer,
        client: peer,
        local: listen,
    };
    if !trusted {
        let stream = ClientStream {
            inner: stream,
            sniffer: Some(HeaderSniffer::default()),
            peer,
        };
        return Some((stream, addr));
    }
    let read = read_header(&mut stream)
        .or(async {
            clock.sleep_until(deadline).await;
            Err(HeaderFailure::Timeout)
        })
        .await;
    match read {
        Ok(ProxyHeader::Proxy(Some(a))) => {
            addr.client = a.source;
            addr.local = a.destination;
            debug!(%peer, client = %a.source, "PROXY header: client address");
        }
        // The balancer's own connection, or an address family ferry does not carry.
        Ok(_) => debug!(%peer, "PROXY header without a client address"),
        Err(HeaderFailure::Timeout) => {
            warn!(%peer, "trusted peer sent no PROXY header before the login timeout; closed");
            return None;
        }
        Err(HeaderFailure::Io(e)) => {
            debug!(%peer, error = %e, "connection ended while reading its PROXY header");
            return None;
        }
        Err(HeaderFailure::Bad(e)) => {
            warn!(%peer, error = %e, "bad PROXY header from a trusted peer; closed");
            return None;
        }
    }
    let stream = ClientStream {
        inner: stream,
        sniffer: None,
        peer,
    };
    Some((stream, addr))
}

enum HeaderFailure {
    Timeout,
    Io(io::Error),
    Bad(ProxyHeaderError),
}

/// Reads exactly one v2 header (never a byte past it: the client's own bytes follow).
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader, HeaderFailure> {
    let mut buf = vec![0u8; FIXED_LEN];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(HeaderFailure::Io)?;
    let total = proxy_header::total_len(&buf).map_err(HeaderFailure::Bad)?;
    buf.resize(total, 0);
    stream
        .read_exact(&mut buf[FIXED_LEN..])
        .await
        .map_err(HeaderFailure::Io)?;
    match proxy_header::parse(&buf).map_err(HeaderFailure::Bad)? {
        Parsed::Header(header, _) => Ok(header),
        Parsed::Incomplete(_) => unreachable!("the whole header was read"),
    }
}

/// A client connection as the pump sees it: for an untrusted peer, its
/// first bytes are watched and a PROXY header among them ends the
/// connection with an error (logged once) before the session sees it.
pub struct ClientStream<S> {
    inner: S,
    sniffer: Option<HeaderSniffer>,
    peer: SocketAddr,
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(sniffer)) = (&read, this.sniffer.as_mut()) {
            match sniffer.feed(&buf[..*n]) {
                Sniffed::Undecided => {}
                Sniffed::NoHeader => this.sniffer = None,
                Sniffed::Header { v1 } => {
                    this.sniffer = None;
                    warn!(peer = %this.peer, v1, "PROXY header from an address not in proxy_protocol.trusted; refused and closed");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "PROXY header from an untrusted address",
                    )));
                }
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A connector that starts every connection to a backend configured with
/// `proxy_protocol: true` with `header` (other backends get nothing).
#[derive(Clone)]
pub struct HeaderConnector<K> {
    inner: K,
    to: Wanted,
    header: ProxyHeader,
}

/// Which backends get the header.
#[derive(Clone)]
enum Wanted {
    /// Those the config in force says (looked up at each connect: reloads count).
    Config(Arc<Shared>),
    /// This address, or none.
    One(Option<SocketAddr>),
}

impl<K> HeaderConnector<K> {
    /// Connections on behalf of the client at `addr`.
    pub fn for_client(inner: K, shared: Arc<Shared>, addr: &ClientAddr) -> Self {
        HeaderConnector {
            inner,
            to: Wanted::Config(shared),
            header: addr.header(),
        }
    }

    /// ferry's own connections (health checks, version probes): the LOCAL command.
    pub fn local(inner: K, shared: Arc<Shared>) -> Self {
        HeaderConnector {
            inner,
            to: Wanted::Config(shared),
            header: ProxyHeader::Local,
        }
    }

    /// ferry's own connection to `addr` (a user-source read), if the config in force wants one.
    pub fn local_to(inner: K, shared: &Shared, addr: SocketAddr) -> Self {
        HeaderConnector {
            inner,
            to: Wanted::One(wants_header(shared, addr).then_some(addr)),
            header: ProxyHeader::Local,
        }
    }
}

/// Whether the backend at `addr` is configured to get a header.
pub fn wants_header(shared: &Shared, addr: SocketAddr) -> bool {
    let config = shared.config.read().expect("config lock");
    config
        .backends
        .iter()
        .any(|b| b.proxy_protocol && b.addr == addr)
}

impl<K: Connector + Clone> Connector for HeaderConnector<K> {
    type Stream = K::Stream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        let mut stream = self.inner.connect(addr).await?;
        let wanted = match &self.to {
            Wanted::Config(shared) => wants_header(shared, addr),
            Wanted::One(one) => *one == Some(addr),
        };
        if wanted {
            // Before anything else on the connection, TLS included.
            let mut bytes = Vec::with_capacity(64);
            proxy_header::write(&self.header, &mut bytes);
            stream.write_all(&bytes).await?;
        }
        Ok(stream)
    }

    fn tls_for(&self, backend: &BackendId) -> bool {
        self.inner.tls_for(backend)
    }

    fn start_tls<'a>(
        &'a self,
        stream: &'a mut Self::Stream,
        backend: &'a BackendId,
        addr: SocketAddr,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send + 'a {
        self.inner.start_tls(stream, backend, addr)
    }
}
