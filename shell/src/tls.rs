//! TLS with rustls (ring provider) on both sides: ferry's certificate for
//! clients, and each backend's CA for ferry's own connections to it.
//!
//! The MySQL protocol starts in the clear and upgrades in the middle of the
//! login (SSLRequest), so a connection is a [`Stream`] that starts plain and
//! becomes TLS in place. What to do when is core's decision
//! (`Output::StartTls`, `Output::BackendTls`); this module only does it.
//!
//! Certificates are read when the config is loaded and on every SIGHUP
//! ([`Loaded::from_config`]); each new session takes the set in force when it
//! was accepted, so a reload never touches a running session.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use ferry_core::cluster::BackendId;
use ferry_core::config::{BackendTlsConfig, ClientTlsConfig, Config};
use ferry_core::login::client::TlsOffer;
use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tracing::warn;

use crate::pump::ClientTls;

/// ring, not rustls' default aws-lc-rs (which needs cmake and nasm to build);
/// ring has no post-quantum key exchange, hence rustls' deprecation note.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS material of one config: ferry's certificate and each backend's client settings.
#[derive(Clone, Default)]
pub struct Loaded {
    server: Option<ServerTls>,
    backends: BTreeMap<BackendId, Arc<ClientConfig>>,
}

#[derive(Clone)]
struct ServerTls {
    acceptor: TlsAcceptor,
    required: bool,
}

/// The directory relative paths in the config file at `path` are relative to.
pub fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` as written in the config: relative paths are relative to the config file's directory.
fn resolve(dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn server_config(tls: &ClientTlsConfig, dir: &Path) -> Result<ServerConfig, String> {
    let cert_path = resolve(dir, &tls.cert);
    let key_path = resolve(dir, &tls.key);
    let certs = certificates(&cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} with {}: {e}", cert_path.display(), key_path.display()))
}

fn client_config(id: &str, tls: &BackendTlsConfig, dir: &Path) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if !tls.verify {
        warn!(
            backend = id,
            "TLS to this backend does not verify its certificate (verify: false)"
        );
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth());
    }
    let ca = tls.ca.as_deref().ok_or("verify: true needs ca")?;
    let path = resolve(dir, ca);
    let mut roots = RootCertStore::empty();
    for cert in certificates(&path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

impl Loaded {
    /// Reads every certificate, key and CA the config names; `dir` is the
    /// config file's directory. Any unreadable or mismatched file is an error
    /// naming it, and nothing is installed.
    pub fn from_config(config: &Config, dir: &Path) -> Result<Loaded, String> {
        let server = match &config.tls {
            Some(tls) => {
                let server = server_config(tls, dir).map_err(|e| format!("tls: {e}"))?;
                Some(ServerTls {
                    acceptor: TlsAcceptor::from(Arc::new(server)),
                    required: tls.required,
                })
            }
            None => None,
        };
        let mut backends = BTreeMap::new();
        for b in &config.backends {
            if let Some(tls) = &b.tls {
                let client = client_config(&b.id, tls, dir)
                    .map_err(|e| format!("backend '{}' tls: {e}", b.id))?;
                backends.insert(BackendId(b.id.clone()), Arc::new(client));
            }
        }
        Ok(Loaded { server, backends })
    }
}

/// The TLS material in force; replaced whole on reload.
#[derive(Default)]
pub struct TlsSettings {
    loaded: RwLock<Loaded>,
}

impl TlsSettings {
    /// Puts `loaded` in force for new sessions and connections.
    pub fn install(&self, loaded: Loaded) {
        *self.loaded.write().expect("tls lock") = loaded;
    }

    /// What one new client session uses: the certificate in force now.
    pub fn acceptor(&self) -> Acceptor {
        Acceptor(self.loaded.read().expect("tls lock").server.clone())
    }

    /// The client settings for connections to `backend`, if it uses TLS.
    pub fn backend(&self, backend: &BackendId) -> Option<Arc<ClientConfig>> {
        self.loaded
            .read()
            .expect("tls lock")
            .backends
            .get(backend)
            .cloned()
    }

    /// Upgrades `stream` to TLS with `backend` at `addr`, verifying its
    /// certificate for the address's IP as its settings say.
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut Stream<S>,
        backend: &BackendId,
        addr: SocketAddr,
    ) -> io::Result<()> {
        let config = self
            .backend(backend)
            .ok_or_else(|| io::Error::other(format!("no TLS settings for backend {backend}")))?;
        stream.connect(config, ServerName::from(addr.ip())).await
    }
}

/// One session's view of ferry's certificate (taken when it was accepted).
#[derive(Clone)]
pub struct Acceptor(Option<ServerTls>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ClientTls<Stream<S>> for Acceptor {
    fn offer(&self) -> TlsOffer {
        match &self.0 {
            None => TlsOffer::Off,
            Some(s) if s.required => TlsOffer::Required,
            Some(_) => TlsOffer::Optional,
        }
    }

    async fn accept(&self, client: &mut Stream<S>, early: Bytes) -> io::Result<()> {
        let Some(server) = &self.0 else {
            return Err(io::Error::other("TLS is not configured"));
        };
        client.accept(&server.acceptor, early).await
    }
}

/// Accepts any backend certificate: `verify: false`, chosen in the config.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection that starts in the clear and may become TLS in place.
pub enum Stream<S> {
    /// Not (yet) TLS.
    Plain(S),
    /// TLS with ferry as the server (a client connection).
    Server(Box<futures_rustls::server::TlsStream<Prefixed<S>>>),
    /// TLS with ferry as the client (a backend connection).
    Client(Box<futures_rustls::client::TlsStream<S>>),
    /// An upgrade is running, or failed: the connection is unusable.
    Broken,
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS upgrade failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream<S> {
    /// True once upgraded.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Server(_) | Stream::Client(_))
    }

    fn take_plain(&mut self) -> io::Result<S> {
        match std::mem::replace(self, Stream::Broken) {
            Stream::Plain(s) => Ok(s),
            other => {
                *self = other;
                Err(io::Error::other("the connection is already TLS"))
            }
        }
    }

    /// TLS as the server; `early` is what the client sent after its SSLRequest and was already read.
    pub async fn accept(&mut self, acceptor: &TlsAcceptor, early: Bytes) -> io::Result<()> {
        let inner = self.take_plain()?;
        let tls = acceptor.accept(Prefixed { early, inner }).await?;
        *self = Stream::Server(Box::new(tls));
        Ok(())
    }

    /// TLS as the client of a server that must prove it is `name`.
    pub async fn connect(
        &mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let inner = self.take_plain()?;
        let tls = TlsConnector::from(config).connect(name, inner).await?;
        *self = Stream::Client(Box::new(tls));
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Broken => Poll::Ready(Err(broken())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Broken => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Broken => Poll::Ready(Ok(())),
        }
    }
}

/// A stream whose first bytes were already read (the client's TLS hello,
/// which arrived in the same read as its SSLRequest): they are read again first.
pub struct Prefixed<S> {
    early: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.len());
            buf[..n].copy_from_slice(&this.early[..n]);
            this.early.advance(n);
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
