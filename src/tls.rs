//! The TLS listener's side: the certificate and key it presents (loaded at start-up and
//! again on SIGHUP, without dropping a connection), and each connection's handshake.
//!
//! A handshake runs in the connection's own task, holding its admission ticket (so per-address
//! limits bound a flood of them), within the login timeout: a client that never finishes is
//! closed then, and stalled handshakes cost the others nothing but their sockets. A client
//! that speaks plain text to this port is told so in plain text (`ERR TLS_REQUIRED`).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, ErrorCode, ProtocolError};

/// The first byte of every TLS connection: a handshake record (the ClientHello).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Where the certificate chain and its private key are read from (PEM files).
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {}: {source}{}", path.display(), Unreadable(source))]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{} holds no certificate (a PEM block -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no private key (a PEM block -----BEGIN PRIVATE KEY----- or similar)", path.display())]
    NoKey { path: PathBuf },
    #[error("the key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the key in {} cannot be used: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// The advice that follows a read error: after start-up a server started as root runs as
/// another user, who must be able to read the files for a reload to work.
struct Unreadable<'a>(&'a io::Error);

impl fmt::Display for Unreadable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.kind() != io::ErrorKind::PermissionDenied {
            return Ok(());
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        write!(
            f,
            " (the server runs as uid {uid} now: started as root, it gives root up after \
             start-up, so that user must be able to read the certificate and key files)"
        )
    }
}

/// The cryptography used: *ring* (no C toolchain beyond a compiler needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its key: both parse, and the key is the
/// certificate's.
pub fn load(files: &CertificateFiles) -> Result<CertifiedKey, CertificateError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertificateError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let pem_error = |path: &Path, e: rustls::pki_types::pem::Error| CertificateError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let cert_pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&files.cert, e))?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertificateError::NoKey {
            path: files.key.clone(),
        },
        e => pem_error(&files.key, e),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertificateError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        source => CertificateError::Key {
            path: files.key.clone(),
            source,
        },
    })
}

/// The certificate and key every new handshake presents; [`Certificates::reload`] swaps them
/// for what the files hold now. Handshakes under way and established connections keep what
/// they began with.
#[derive(Debug)]
pub struct Certificates {
    files: CertificateFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Loads the files; an error here stops start-up.
    pub fn load(files: CertificateFiles) -> Result<Arc<Certificates>, CertificateError> {
        let current = RwLock::new(Arc::new(load(&files)?));
        Ok(Arc::new(Certificates { files, current }))
    }

    /// Reads the files again. On an error the certificate in use stays, and the error says
    /// why the new one was not taken.
    pub fn reload(&self) -> Result<(), CertificateError> {
        let fresh = Arc::new(load(&self.files)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    pub fn files(&self) -> &CertificateFiles {
        &self.files
    }

    /// The certificate chain presented now (its first entry is the server's).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What accepts TLS connections with these certificates: TLS 1.2 and 1.3, no client
    /// certificates.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The time limits of a handshake.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// The whole handshake, from accept (zero: no limit); the login timeout.
    pub timeout: Duration,
    /// How long a refused plain-text client gets to read `ERR TLS_REQUIRED`.
    pub close_grace: Duration,
}

/// Why a TLS connection ended before its session began.
#[derive(Debug)]
pub enum HandshakeEnd {
    /// The client spoke plain text; it was told to use TLS.
    Plaintext,
    /// Not finished within the login timeout.
    TimedOut,
    /// The client closed before saying anything.
    Closed,
    /// The server is shutting down.
    Shutdown,
    /// Not TLS after all, or a TLS error (no common version or cipher suite, a bad record).
    Failed(io::Error),
}

impl HandshakeEnd {
    /// Closes forced by the server at info (as a login timeout is), with the address; what
    /// clients do wrong at debug, so that a flood of garbage does not flood the log.
    pub fn log(&self, peer: SocketAddr) {
        match self {
            HandshakeEnd::Plaintext => {
                tracing::info!(%peer, "closed: plain text on a TLS port (told to use TLS)")
            }
            HandshakeEnd::TimedOut => {
                tracing::info!(%peer, "closed: TLS handshake not finished within the login timeout")
            }
            HandshakeEnd::Failed(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            other => tracing::debug!(%peer, reason = ?other, "closed before the TLS handshake"),
        }
    }
}

/// Runs the server's side of a TLS handshake on `stream`, within `limits.timeout`, giving up
/// at once if `stopping` is cancelled. A client whose first byte is not a TLS handshake
/// record gets `refusal` in plain text (`ERR TLS_REQUIRED` on the line port, an HTTP 400 on
/// the HTTP one) and is closed.
pub async fn handshake(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    refusal: bytes::Bytes,
    limits: HandshakeLimits,
    stopping: CancellationToken,
    hurry: CancellationToken,
) -> Result<TlsStream<TcpStream>, HandshakeEnd> {
    let deadline = (!limits.timeout.is_zero()).then(|| Instant::now() + limits.timeout);
    let mut first = [0u8; 1];
    match within(deadline, &stopping, stream.peek(&mut first)).await? {
        Ok(0) => return Err(HandshakeEnd::Closed),
        Ok(_) => {}
        Err(e) => return Err(HandshakeEnd::Failed(e)),
    }
    if first[0] != HANDSHAKE_RECORD {
        refuse_plaintext(stream, refusal, limits.close_grace, &hurry).await;
        return Err(HandshakeEnd::Plaintext);
    }
    within(deadline, &stopping, acceptor.accept(stream))
        .await?
        .map_err(HandshakeEnd::Failed)
}

/// `work`, unless the deadline passes or the server stops first.
async fn within<T>(
    deadline: Option<Instant>,
    stopping: &CancellationToken,
    work: impl Future<Output = T>,
) -> Result<T, HandshakeEnd> {
    let timed = async {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, work)
                .await
                .map_err(|_| HandshakeEnd::TimedOut),
            None => Ok(work.await),
        }
    };
    tokio::select! {
        done = timed => done,
        () = stopping.cancelled() => Err(HandshakeEnd::Shutdown),
    }
}

/// The line a plain-text client gets on the TLS port.
pub fn tls_required() -> bytes::Bytes {
    protocol::error_line(&ProtocolError::new(
        ErrorCode::TlsRequired,
        "this port speaks TLS; connect with a TLS client (openssl s_client -quiet -connect \
         HOST:PORT) or to the server's plain port",
    ))
}

/// The HTTP response a plain-HTTP client gets on an https port.
pub fn https_required() -> bytes::Bytes {
    let body = "this port speaks https: open it as https://, not http://\n";
    bytes::Bytes::from(format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Says `refusal`, then closes: FIN, then what the client still sends is read and dropped
/// for up to `grace` (closing with unread input would send a reset, which can destroy the
/// client's copy of the refusal), unless a second stopping signal hurries the shutdown, as
/// it does a session's close.
async fn refuse_plaintext(
    mut stream: TcpStream,
    refusal: bytes::Bytes,
    grace: Duration,
    hurry: &CancellationToken,
) {
    let drain = tokio::time::timeout(grace, async {
        stream.write_all(&refusal).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    });
    tokio::select! {
        _ = drain => {}
        () = hurry.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("linechat-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// A self-signed certificate for `name`, written as cert.pem and key.pem under `dir`.
    fn write_certificate(dir: &Path, name: &str) -> (CertificateFiles, Vec<u8>) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let files = CertificateFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.cert, made.cert.pem()).unwrap();
        std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
        (files, made.cert.der().to_vec())
    }

    fn presented(certs: &Certificates) -> Vec<u8> {
        certs.current().cert[0].to_vec()
    }

    #[test]
    fn a_reload_takes_the_new_certificate() {
        let dir = scratch("reload");
        let (files, first) = write_certificate(&dir.0, "localhost");
        let certs = Certificates::load(files).unwrap();
        assert_eq!(presented(&certs), first);
        let (_, second) = write_certificate(&dir.0, "localhost");
        certs.reload().unwrap();
        assert_eq!(presented(&certs), second);
    }

    #[test]
    fn a_bad_file_on_reload_keeps_the_old_certificate_and_says_why() {
        let dir = scratch("bad");
        let (files, first) = write_certificate(&dir.0, "localhost");
        let certs = Certificates::load(files.clone()).unwrap();

        std::fs::write(&files.cert, "not a certificate\n").unwrap();
        let e = certs.reload().unwrap_err();
        assert!(matches!(e, CertificateError::NoCertificate { .. }), "{e}");
        assert!(
            e.to_string().contains("cert.pem holds no certificate"),
            "{e}"
        );
        assert_eq!(presented(&certs), first, "the old certificate stays");

        // A new certificate with the old key: the pair does not match.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&files.cert, other.cert.pem()).unwrap();
        let e = certs.reload().unwrap_err();
        assert!(matches!(e, CertificateError::Mismatch { .. }), "{e}");
        assert_eq!(presented(&certs), first);

        std::fs::remove_file(&files.key).unwrap();
        let e = certs.reload().unwrap_err();
        assert!(e.to_string().starts_with("cannot read "), "{e}");
        assert_eq!(presented(&certs), first);
    }

    #[test]
    fn an_unreadable_file_names_the_user_who_must_read_it() {
        let e = CertificateError::Read {
            path: "/etc/linechat/key.pem".into(),
            source: io::ErrorKind::PermissionDenied.into(),
        };
        let text = e.to_string();
        assert!(text.contains("/etc/linechat/key.pem"), "{text}");
        assert!(text.contains("the server runs as uid"), "{text}");
        let missing = CertificateError::Read {
            path: "key.pem".into(),
            source: io::ErrorKind::NotFound.into(),
        };
        assert!(!missing.to_string().contains("uid"));
    }

    #[test]
    fn the_plain_text_refusal_is_one_error_line() {
        let line = tls_required();
        assert!(line.starts_with(b"ERR TLS_REQUIRED this port speaks TLS; "));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.ends_with(b"\n"));
    }
}
