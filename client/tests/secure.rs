//! linechat-client over TLS (certificates made here with rcgen): chat works, reconnecting
//! works, and a certificate from another CA or for another name is refused with its reason,
//! once, not retried forever.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use common::*;

/// A certificate authority of the test's own, and a directory for PEM files.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's file, for `--ca`.
    ca: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("linechat-client-pki-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("linechat test CA {tag}"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A server certificate for `names`, signed by this CA: (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "linechat");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn ca(&self) -> &str {
        self.ca.to_str().unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

/// TLS in front of the in-process server: it presents a certificate the test can change, and
/// can cut its connections.
struct TlsFront {
    addr: SocketAddr,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// Handshakes begun, successful or not.
    handshakes: Arc<AtomicUsize>,
}

impl TlsFront {
    async fn start(backend: SocketAddr, cert: &str, key: &str) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(Mutex::new(server_config(cert, key)));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (c, conns, count) = (config.clone(), connections.clone(), handshakes.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = tokio_rustls::TlsAcceptor::from(c.lock().unwrap().clone());
                let task = tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut plain = TcpStream::connect(backend).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        TlsFront {
            addr,
            config,
            connections,
            handshakes,
        }
    }

    /// New handshakes present this certificate.
    fn present(&self, cert: &str, key: &str) {
        *self.config.lock().unwrap() = server_config(cert, key);
    }

    /// Drops every connection (the client sees it reset).
    fn cut(&self) {
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

/// A server behind TLS with a certificate for `localhost` from `pki`; returns the plain
/// address (for peers) and the front.
async fn tls_server(pki: &Pki) -> (SocketAddr, TlsFront) {
    let plain = server().await;
    let (cert, key) = pki.leaf(&["localhost"]);
    let front = TlsFront::start(plain, &cert, &key).await;
    (plain, front)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test]
async fn chat_over_tls_with_the_servers_ca() {
    let pki = Pki::new("chat");
    let (plain, front) = tls_server(&pki).await;
    let mut listener = Peer::join(plain, "listener", "4").await;
    let url = format!("tls://localhost:{}", front.addr.port());
    let args = ["--ca", pki.ca(), "--nick", "bot", "--room", "4"];
    let out = run(
        &[&["--server", &url][..], &args].concat(),
        &[],
        "over tls\n",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out)[0].ends_with("<bot> over tls"), "{out:?}");
    assert_eq!(listener.next_text().await, "over tls");
    // --tls with a plain host:port is the same.
    let host_port = format!("localhost:{}", front.addr.port());
    let out = run(
        &[&["--server", &host_port, "--tls"][..], &args].concat(),
        &[],
        "with --tls\n",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(listener.next_text().await, "with --tls");
}

/// Without TLS this test fails: the client would talk plain text to the TLS front (no
/// handshake, so no line ever comes back), or with TLS but no name check, to 127.0.0.1.
#[tokio::test]
async fn a_certificate_from_another_ca_or_for_another_name_is_refused() {
    let pki = Pki::new("refused");
    let other = Pki::new("other");
    let (plain, front) = tls_server(&pki).await;
    let mut watcher = Peer::join(plain, "watcher", "4").await;
    let port = front.addr.port();
    let said = |server: String, ca: Option<String>| async move {
        let mut args = vec!["--server".to_string(), server];
        if let Some(ca) = ca {
            args.extend(["--ca".to_string(), ca]);
        }
        args.extend(["--nick", "mallory", "--room", "4"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &[], "should not be said\n").await
    };
    // A CA the client was not told to trust.
    let out = said(
        format!("tls://localhost:{port}"),
        Some(other.ca().to_string()),
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert_eq!(why.lines().count(), 1, "{why}");
    assert!(
        why.contains("the server's certificate was refused: it is not signed by a certificate authority this client trusts"),
        "{why}"
    );
    // The system's roots (no --ca) do not hold the test's CA either.
    let out = said(format!("tls://localhost:{port}"), None).await;
    assert!(!out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert!(
        why.contains("not signed by a certificate authority this client trusts")
            || why.contains("no trusted root certificates found on this system"),
        "{why}"
    );
    // The right CA, but the certificate names localhost, not 127.0.0.1.
    let out = said(
        format!("tls://127.0.0.1:{port}"),
        Some(pki.ca().to_string()),
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert!(
        why.contains(
            "the server's certificate was refused: it is not valid for the name 127.0.0.1"
        ),
        "{why}"
    );
    assert!(why.contains("localhost"), "the names it has: {why}");
    // Nothing got through.
    watcher.send("PING").await;
    let (before, _) = watcher.until("PONG").await;
    assert!(before.is_empty(), "{before:?}");
}

/// A `--follow` (which reconnects after a drop) whose server comes back with a certificate
/// for another name stops, saying why, after one attempt: a certificate does not get better
/// by asking again.
#[tokio::test]
async fn a_certificate_refused_on_reconnect_stops_the_client() {
    let pki = Pki::new("reconnect");
    let (plain, front) = tls_server(&pki).await;
    let mut talker = Peer::join(plain, "talker", "r").await;
    let url = format!("tls://localhost:{}", front.addr.port());
    let (mut child, mut out) = follow_with(
        &[
            "--server",
            &url,
            "--ca",
            pki.ca(),
            "--nick",
            "f",
            "--room",
            "r",
        ],
        &[],
    );
    talker.until("JOINED r f").await;
    talker.send("SAY before").await;
    assert!(next_line(&mut out).await.ends_with("<talker> before"));
    let (cert, key) = pki.leaf(&["elsewhere.example"]);
    front.present(&cert, &key);
    let before = front.handshakes();
    front.cut();
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the client stops instead of retrying")
        .unwrap();
    assert!(!status.success());
    let mut why = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut why)
        .await
        .unwrap();
    assert!(
        why.contains("it is not valid for the name localhost")
            && why.contains("elsewhere.example")
            && why.contains("not trying again"),
        "{why}"
    );
    assert_eq!(front.handshakes() - before, 1, "one attempt: {why}");
}

/// The reconnect and catch-up of the link work the same over TLS.
#[tokio::test]
async fn over_tls_a_dropped_connection_reconnects_and_catches_up() {
    let pki = Pki::new("catchup");
    let (plain, front) = tls_server(&pki).await;
    let mut talker = Peer::join(plain, "talker", "c").await;
    let url = format!("tls://localhost:{}", front.addr.port());
    let (mut child, mut out) = follow_with(
        &[
            "--server",
            &url,
            "--ca",
            pki.ca(),
            "--nick",
            "away",
            "--room",
            "c",
        ],
        &[],
    );
    talker.until("JOINED c away").await;
    let say = async |talker: &mut Peer, text: &str| {
        talker.send(&format!("SAY {text}")).await;
        talker.until("OK SAY").await;
    };
    say(&mut talker, "one").await;
    assert!(next_line(&mut out).await.ends_with("one"));
    front.cut();
    talker.until("LEFT c away").await;
    say(&mut talker, "two").await;
    say(&mut talker, "three").await;
    // It comes back by itself (0.5 s later), over TLS again.
    talker.until("JOINED c away").await;
    say(&mut talker, "four").await;
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < 3 && Instant::now() < deadline {
        seen.push(
            next_line(&mut out)
                .await
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen, ["two", "three", "four"]);
    child.kill().await.unwrap();
}

/// A `tls://` address that leads to a plain-text port: the client says what is likely wrong.
#[tokio::test]
async fn tls_to_a_plain_port_says_so() {
    let pki = Pki::new("plainport");
    let plain = server().await;
    let url = format!("tls://127.0.0.1:{}", plain.port());
    let out = run(
        &[
            "--server",
            &url,
            "--ca",
            pki.ca(),
            "--nick",
            "x",
            "--room",
            "4",
        ],
        &[],
        "hi\n",
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert!(why.contains("is this a TLS port?"), "{why}");
}

/// `--ca` with a plain address is a mistake worth naming, not something to ignore.
#[tokio::test]
async fn a_ca_for_a_plain_server_is_refused() {
    let pki = Pki::new("plainca");
    let plain = server().await;
    let out = client(
        plain,
        &["--ca", pki.ca(), "--nick", "x", "--room", "4"],
        "hi\n",
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains("--ca is for TLS"), "{out:?}");
}

/// A self-signed certificate marked as a CA's (what `openssl req -x509` makes by default),
/// given as the server's and as `--ca`: refused, saying what to change.
#[tokio::test]
async fn a_ca_certificate_as_the_servers_own_is_refused_with_the_fix() {
    let pki = Pki::new("caasleaf");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let own = pki.dir.join("own.pem");
    std::fs::write(&own, cert.pem()).unwrap();
    let plain = server().await;
    let front = TlsFront::start(plain, &cert.pem(), &key.serialize_pem()).await;
    let url = format!("tls://localhost:{}", front.addr.port());
    let out = run(
        &[
            "--server",
            &url,
            "--ca",
            own.to_str().unwrap(),
            "--nick",
            "x",
            "--room",
            "4",
        ],
        &[],
        "hi\n",
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert!(
        why.contains("marked as a certificate authority's") && why.contains("CA:FALSE"),
        "{why}"
    );
}
