//! How the bench reaches a server: plain TCP, TLS (rustls with ring, trusting `--ca`), or a
//! WebSocket at `/ws` (a text frame a line), so that one scenario can run over each in one run.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::ws::{self, WsLines};

/// Plain TCP, TLS, or WebSocket.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(TlsClient),
    Ws,
}

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls(_) => "tls",
            Transport::Ws => "ws",
        }
    }

    /// Connects (and for TLS or WebSocket, completes the handshake).
    pub async fn connect(&self, addr: &str) -> Result<Conn> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        match self {
            Transport::Plain => Ok(Conn::Plain(tcp)),
            Transport::Tls(tls) => Ok(Conn::Tls(Box::new(tls.handshake(tcp).await?))),
            Transport::Ws => Ok(Conn::Ws(Box::new(ws::connect(tcp, addr).await?))),
        }
    }
}

/// A TLS client configuration: whom to trust and which name to ask for.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the certificates in `ca` (a CA, or the server's self-signed certificate) and
    /// checks that the server's certificate is for `server_name`. With `resume` off, every
    /// connection makes a full handshake (no session tickets or ids are kept).
    pub fn new(ca: &Path, server_name: &str, resume: bool, cipher: Cipher) -> Result<TlsClient> {
        let pem = std::fs::read(ca).with_context(|| format!("read --ca {}", ca.display()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(cert.with_context(|| format!("--ca {}", ca.display()))?)
                .with_context(|| format!("--ca {}", ca.display()))?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "--ca {} holds no certificate",
            ca.display()
        );
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suite) = cipher.suite() {
            provider.cipher_suites.retain(|s| s.suite() == suite);
        }
        let provider = Arc::new(provider);
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if !resume {
            config.resumption = Resumption::disabled();
        }
        let name = ServerName::try_from(server_name.to_owned())
            .with_context(|| format!("--server-name {server_name}"))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    pub async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .context("TLS handshake")
    }
}

/// The TLS 1.3 cipher suite the client offers: rustls's default order (AES-256-GCM first,
/// which the server takes), or only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cipher {
    Default,
    Aes128,
    Aes256,
    Chacha20,
}

impl Cipher {
    fn suite(self) -> Option<rustls::CipherSuite> {
        match self {
            Cipher::Default => None,
            Cipher::Aes128 => Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            Cipher::Aes256 => Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384),
            Cipher::Chacha20 => Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
        }
    }
}

/// A connection over any transport.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WsLines>),
}

impl Conn {
    /// Read and write halves for two tasks: the socket's own halves for plain TCP (as
    /// before TLS existed, so plain figures stay comparable), tokio's split for the others.
    pub fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.into_split();
                (ConnRead::Plain(r), ConnWrite::Plain(w))
            }
            Conn::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ConnRead::Tls(r), ConnWrite::Tls(w))
            }
            Conn::Ws(s) => {
                let (r, w) = tokio::io::split(*s);
                (ConnRead::Ws(r), ConnWrite::Ws(w))
            }
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
            Conn::Ws(s) => s.tcp(),
        }
    }
}

pub enum ConnRead {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
    Ws(tokio::io::ReadHalf<WsLines>),
}

pub enum ConnWrite {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
    Ws(tokio::io::WriteHalf<WsLines>),
}

/// Delegates AsyncRead/AsyncWrite to whichever variant is there.
macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Plain($s) => $e,
            Self::Tls($s) => $e,
            Self::Ws($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for ConnRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ConnWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
