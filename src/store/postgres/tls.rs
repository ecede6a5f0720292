//! The store's TLS connector: rustls (ring provider) under tokio-postgres, checking the
//! database's certificate as `sslmode` says ([`Verify`]). Root certificates are read once, at
//! start-up, so that a missing file is a start-up error and the server may give up root.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::url::{RootCert, TlsSettings, Verify};

/// Why the TLS connector cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read sslrootcert {path}: {why}")]
    RootFile { path: String, why: String },
    #[error("sslrootcert {0} holds no PEM certificate")]
    EmptyRootFile(String),
    #[error("sslrootcert=system: no trusted root certificates found on this system ({0})")]
    NoSystemRoots(String),
    #[error("cannot set up TLS: {0}")]
    Rustls(String),
}

/// tokio-postgres's TLS connector for the store's connections, with what it checks.
#[derive(Clone)]
pub struct PgTls {
    pub(super) connector: MakeRustlsConnect,
    settings: TlsSettings,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PgTls {
    /// The connector `settings` ask for, its root certificates read now.
    pub fn new(settings: &TlsSettings) -> Result<PgTls, TlsSetupError> {
        let provider = Arc::new(ring::default_provider());
        let verifier = verifier(settings, &provider)?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(PgTls {
            connector: MakeRustlsConnect::new(config),
            settings: settings.clone(),
        })
    }

    /// No TLS (the managed cluster's Unix socket): a connector that is never used.
    pub fn disabled() -> PgTls {
        PgTls::new(&TlsSettings::disabled()).expect("no root certificate to read")
    }

    /// `sslmode=...` (and `sslrootcert=...`), for the log.
    pub fn describe(&self) -> String {
        let mode = format!("sslmode={}", self.settings.mode.name());
        match (self.settings.verify(), &self.settings.root) {
            (Verify::Nothing, _) | (_, None) => mode,
            (_, Some(RootCert::System)) => format!("{mode}, sslrootcert=system"),
            (_, Some(RootCert::File(path))) => {
                format!("{mode}, sslrootcert={}", path.display())
            }
        }
    }
}

/// What checks the database's certificate, as `settings` say.
fn verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsSetupError> {
    Ok(match settings.verify() {
        Verify::Nothing => Arc::new(AnyCertificate(provider.clone())),
        Verify::Chain(root) => Arc::new(ChainOnly(webpki(&root, provider)?)),
        Verify::ChainAndName(root) => webpki(&root, provider)?,
    })
}

/// rustls's standard check: the chain to `root`, the host name, validity dates.
fn webpki(
    root: &RootCert,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsSetupError> {
    let roots = Arc::new(root_store(root)?);
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))
}

fn root_store(root: &RootCert) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let shown = path.display().to_string();
            for cert in read_pem_certs(path)? {
                store.add(cert).map_err(|e| TlsSetupError::RootFile {
                    path: shown.clone(),
                    why: e.to_string(),
                })?;
            }
            if store.is_empty() {
                return Err(TlsSetupError::EmptyRootFile(shown));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none installed".to_owned(), |e| e.to_string());
                return Err(TlsSetupError::NoSystemRoots(why));
            }
        }
    }
    Ok(store)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let failed = |why: String| TlsSetupError::RootFile {
        path: path.display().to_string(),
        why,
    };
    // Read first, so that a missing file says so rather than "no certificate".
    let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))
}

/// libpq's `require` (and `prefer`) without a root certificate: the channel is encrypted,
/// and the server proves it holds the key of the certificate it sent, but the certificate
/// itself is not checked.
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

/// libpq's `verify-ca`: rustls's whole check except the host name. rustls checks the name
/// last, after the chain, so a name mismatch means everything else passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Whether a connection failed because the database's certificate was refused: a setting to
/// fix, not an outage to wait out.
pub fn certificate_refused(e: &tokio_postgres::Error) -> bool {
    use std::error::Error;
    // tokio-rustls wraps rustls's error in an io::Error, whose `source` skips it.
    e.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    use super::super::url::SslMode;
    use super::*;

    /// A CA's PEM file, and a certificate it signed for `localhost`.
    struct Certs {
        ca_file: PathBuf,
        server: CertificateDer<'static>,
        _dir: Dir,
    }

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn certs(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("linechat-pgtls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = ca();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&KeyPair::generate().unwrap(), &ca)
            .unwrap();
        Certs {
            ca_file,
            server: server.der().clone(),
            _dir: Dir(dir),
        }
    }

    fn verifier(mode: SslMode, root: Option<RootCert>) -> Arc<dyn ServerCertVerifier> {
        let provider = Arc::new(ring::default_provider());
        super::verifier(&TlsSettings { mode, root }, &provider).unwrap()
    }

    fn passes(v: &dyn ServerCertVerifier, cert: &CertificateDer<'_>, host: &str) -> bool {
        let name = ServerName::try_from(host.to_owned()).unwrap();
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn verify_full_checks_the_chain_and_the_name() {
        let certs = certs("full");
        let other = self::certs("full-other");
        let v = verifier(
            SslMode::VerifyFull,
            Some(RootCert::File(certs.ca_file.clone())),
        );
        assert!(passes(&*v, &certs.server, "localhost"));
        assert!(!passes(&*v, &certs.server, "127.0.0.1"), "wrong name");
        assert!(!passes(&*v, &certs.server, "db.example"), "wrong name");
        assert!(!passes(&*v, &other.server, "localhost"), "wrong CA");
    }

    #[test]
    fn verify_ca_checks_the_chain_not_the_name() {
        let certs = certs("ca");
        let other = self::certs("ca-other");
        let v = verifier(
            SslMode::VerifyCa,
            Some(RootCert::File(certs.ca_file.clone())),
        );
        assert!(passes(&*v, &certs.server, "localhost"));
        assert!(passes(&*v, &certs.server, "127.0.0.1"));
        assert!(!passes(&*v, &other.server, "localhost"), "wrong CA");
        // Like require with a root certificate (libpq).
        let v = verifier(
            SslMode::Require,
            Some(RootCert::File(certs.ca_file.clone())),
        );
        assert!(passes(&*v, &certs.server, "127.0.0.1"));
        assert!(!passes(&*v, &other.server, "localhost"), "wrong CA");
    }

    #[test]
    fn require_without_a_root_takes_any_certificate() {
        let certs = certs("require");
        let v = verifier(SslMode::Require, None);
        assert!(passes(&*v, &certs.server, "elsewhere.example"));
    }

    #[test]
    fn a_missing_or_empty_root_file_is_a_setup_error() {
        let certs = certs("missing");
        let missing = certs.ca_file.with_file_name("nope.pem");
        let e = PgTls::new(&TlsSettings {
            mode: SslMode::VerifyFull,
            root: Some(RootCert::File(missing)),
        })
        .unwrap_err();
        assert!(
            matches!(&e, TlsSetupError::RootFile { path, .. } if path.ends_with("nope.pem")),
            "{e}"
        );
        let empty = certs.ca_file.with_file_name("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = PgTls::new(&TlsSettings {
            mode: SslMode::VerifyFull,
            root: Some(RootCert::File(empty)),
        })
        .unwrap_err();
        assert!(matches!(e, TlsSetupError::EmptyRootFile(_)), "{e}");
    }

    #[test]
    fn the_description_names_the_mode_and_the_root() {
        let tls = PgTls::new(&TlsSettings {
            mode: SslMode::Require,
            root: None,
        })
        .unwrap();
        assert_eq!(tls.describe(), "sslmode=require");
        assert_eq!(PgTls::disabled().describe(), "sslmode=disable");
    }
}
