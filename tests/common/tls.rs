//! TLS for the tests: certificates made with rcgen, the binary with a TLS listener, and a
//! connector that trusts given roots only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio_rustls::TlsConnector;

use super::binary::{linechat, Binary};

/// A certificate and key for `localhost` and 127.0.0.1, in PEM files the server reads.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Certificate {
    /// Makes a new self-signed certificate and (over)writes `dir`/cert.pem and key.pem.
    pub fn write(dir: &Path) -> Certificate {
        std::fs::create_dir_all(dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Certificate {
            cert,
            key,
            der: made.cert.der().clone(),
        }
    }
}

/// Removes a test's directory when it ends.
pub struct DirGuard(pub PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with the memory store, both listeners on loopback port 0, and `args`.
pub fn tls_server(cert: &Certificate, args: &[&str]) -> Binary {
    let server = Binary::start(
        linechat()
            .args(["--store", "memory", "--rate", "0"])
            // By the environment, so that a test's own --listen wins.
            .env("LINECHAT_LISTEN", "127.0.0.1:0")
            .args(["--tls-listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&cert.cert)
            .arg("--tls-key")
            .arg(&cert.key)
            .args(args),
    );
    assert!(server.tls_addr.is_some(), "{:#?}", server.log());
    server
}

/// A client that trusts `roots` (and nothing else).
pub fn connector(roots: &[&CertificateDer<'static>]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(linechat::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}
