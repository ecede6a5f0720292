//! TLS to the server (rustls, ring): which certificate authorities are trusted (the system's,
//! or only the one `--ca` names), the handshake, and what a refused certificate means to a
//! person. The server's name is always checked against its certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why TLS could not be set up (before connecting).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetup {
    #[error("--ca {path}: {error}")]
    CaFile { path: String, error: String },
    #[error("--ca {0}: no certificate in it (a PEM file with BEGIN CERTIFICATE is expected)")]
    NoCaCertificate(String),
    #[error("no trusted root certificates found on this system ({0}); install the ca-certificates package, or give the server's CA with --ca <pem>")]
    NoSystemRoots(String),
    #[error("{0:?} is not a host name or IP address a certificate can be checked against")]
    BadName(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Connects over TLS to one server name.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

impl Tls {
    /// TLS to `host`, trusting only the CA certificates in `ca` if given, else the system's.
    pub fn new(host: &str, ca: Option<&Path>) -> Result<Tls, TlsSetup> {
        let roots = match ca {
            Some(path) => roots_from(path)?,
            None => system_roots()?,
        };
        // The provider is named here rather than taken from a process default: only ring is
        // built in (no aws-lc).
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsSetup::BadName(host.to_string()))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The handshake over a connected socket. A refused certificate is an `InvalidData`
    /// error holding the `rustls::Error` (see [`refusal`]).
    pub async fn handshake(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), tcp).await
    }
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsSetup> {
    let shown = path.display().to_string();
    let bad = |error: String| TlsSetup::CaFile {
        path: shown.clone(),
        error,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetup::NoCaCertificate(shown));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsSetup> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "none in /etc/ssl/certs".to_string(),
        };
        return Err(TlsSetup::NoSystemRoots(why));
    }
    Ok(roots)
}

/// If the handshake failed because of TLS itself (the certificate was refused, or the peer
/// does not speak TLS) rather than the network, why, for a person: a reason that connecting
/// again will not change.
pub fn refusal(e: &std::io::Error, host: &str) -> Option<String> {
    let error = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(explain(error, host))
}

fn explain(error: &rustls::Error, host: &str) -> String {
    use CertificateError as C;
    let rustls::Error::InvalidCertificate(cert) = error else {
        return match error {
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                format!("the TLS handshake failed ({error}): is this a TLS port? (linechat listens for TLS on {} by convention, plain text on {})", crate::target::TLS_PORT, crate::target::PLAIN_PORT)
            }
            _ => format!("the TLS handshake failed: {error}"),
        };
    };
    let why = match cert {
        C::NotValidForName => format!("it is not valid for the name {host}"),
        C::NotValidForNameContext { presented, .. } => {
            format!(
                "it is not valid for the name {host} (it names {})",
                if presented.is_empty() {
                    "no name".to_string()
                } else {
                    presented.join(", ")
                }
            )
        }
        C::UnknownIssuer => {
            "it is not signed by a certificate authority this client trusts (the system's, or only the one --ca names)".to_string()
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired".to_string(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "it is not valid yet (is this machine's clock right?)".to_string()
        }
        C::Revoked => "it has been revoked".to_string(),
        // A trusted certificate has the issuer's name but another key (say the system's
        // snakeoil certificate, CN=localhost, for a self-signed CN=localhost server).
        C::BadSignature | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "it is not signed by a certificate authority this client trusts (one it trusts has the name of its issuer, but another key)".to_string()
        }
        C::UnsupportedSignatureAlgorithmContext { .. } => {
            "it is signed with an algorithm this client does not support".to_string()
        }
        // webpki's CaUsedAsEndEntity, which rustls passes on as "other".
        C::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "it is marked as a certificate authority's, not a server's (made with `openssl req -x509`? add -addext basicConstraints=critical,CA:FALSE)".to_string()
        }
        other => other.to_string(),
    };
    format!("the server's certificate was refused: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_says_why() {
        let wrong_name = explain(
            &rustls::Error::InvalidCertificate(C::NotValidForNameContext {
                expected: ServerName::try_from("chat.example").unwrap(),
                presented: vec!["DnsName(\"other.example\")".into()],
            }),
            "chat.example",
        );
        assert!(
            wrong_name.contains("not valid for the name chat.example"),
            "{wrong_name}"
        );
        assert!(wrong_name.contains("other.example"), "{wrong_name}");
        let unknown = explain(
            &rustls::Error::InvalidCertificate(C::UnknownIssuer),
            "chat.example",
        );
        assert!(unknown.contains("not signed by a certificate authority this client trusts"));
        let same_name = explain(
            &rustls::Error::InvalidCertificate(
                C::UnsupportedSignatureAlgorithmForPublicKeyContext {
                    signature_algorithm_id: vec![1],
                    public_key_algorithm_id: vec![2],
                },
            ),
            "localhost",
        );
        assert!(
            same_name.contains("not signed by a certificate authority this client trusts"),
            "{same_name}"
        );
        let expired = explain(&rustls::Error::InvalidCertificate(C::Expired), "x");
        assert!(expired.contains("expired"));
        // Not a TLS peer at all.
        let plain = explain(
            &rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            "x",
        );
        assert!(plain.contains("is this a TLS port?"), "{plain}");
        // Through an io::Error, as the handshake returns it.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(C::UnknownIssuer),
        );
        assert!(refusal(&io, "x").is_some());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(refusal(&reset, "x").is_none());
    }

    use CertificateError as C;

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("linechat-client-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            Tls::new("localhost", Some(&empty)),
            Err(TlsSetup::NoCaCertificate(_))
        ));
        assert!(matches!(
            Tls::new("localhost", Some(&dir.join("missing.pem"))),
            Err(TlsSetup::CaFile { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
