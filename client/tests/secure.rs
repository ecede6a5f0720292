//! linechat-client over TLS against the server's own TLS listener (certificates made here
//! with rcgen): chat works, reconnecting works, and a certificate from another CA or for
//! another name is refused with its reason, once, not retried forever.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use linechat::server::{Listeners, TlsListener};
use linechat::tls::{CertificateFiles, Certificates};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

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

/// A server (in process, on the memory store) with a plain listener and a TLS one presenting
/// a certificate for `names` from `pki`.
struct TlsServer {
    plain: SocketAddr,
    tls: SocketAddr,
}

impl TlsServer {
    async fn start(pki: &Pki) -> TlsServer {
        TlsServer::for_names(pki, &["localhost"]).await
    }

    async fn for_names(pki: &Pki, names: &[&str]) -> TlsServer {
        let (cert, key) = pki.leaf(names);
        TlsServer::presenting(pki, &names.join("-"), &cert, &key).await
    }

    /// A server presenting `cert` (files named after `tag` in the PKI's directory).
    async fn presenting(pki: &Pki, tag: &str, cert: &str, key: &str) -> TlsServer {
        let files = CertificateFiles {
            cert: pki.dir.join(format!("{tag}.pem")),
            key: pki.dir.join(format!("{tag}.key")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        let certificates = Certificates::load(files).unwrap();
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
        let server = linechat::server::Server::start(memory_config())
            .await
            .unwrap();
        let listeners = Listeners {
            plain: Some(plain),
            tls: Some(TlsListener {
                listener: tls,
                certificates,
            }),
            http: None,
        };
        tokio::spawn(server.serve(listeners, std::future::pending()));
        TlsServer {
            plain: plain_addr,
            tls: tls_addr,
        }
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test]
async fn chat_over_tls_with_the_servers_ca() {
    let pki = Pki::new("chat");
    let server = TlsServer::start(&pki).await;
    let mut listener = Peer::join(server.plain, "listener", "4").await;
    let url = format!("tls://localhost:{}", server.tls.port());
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
    let host_port = format!("localhost:{}", server.tls.port());
    let out = run(
        &[&["--server", &host_port, "--tls"][..], &args].concat(),
        &[],
        "with --tls\n",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(listener.next_text().await, "with --tls");
}

/// Without TLS in the client this test fails: it would talk plain text to the TLS port, or
/// with TLS but no name check, say its lines to 127.0.0.1.
#[tokio::test]
async fn a_certificate_from_another_ca_or_for_another_name_is_refused() {
    let pki = Pki::new("refused");
    let other = Pki::new("other");
    let server = TlsServer::start(&pki).await;
    let mut watcher = Peer::join(server.plain, "watcher", "4").await;
    let port = server.tls.port();
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

/// A `--follow` (which reconnects after a drop) whose server comes back (restarted, so no
/// TLS session to resume) with a certificate for another name stops, saying why, after one
/// attempt: a certificate does not get better by asking again.
#[tokio::test]
async fn a_certificate_refused_on_reconnect_stops_the_client() {
    let pki = Pki::new("reconnect");
    let server = TlsServer::start(&pki).await;
    // Cuts the connection; TLS passes through it as any bytes.
    let relay = Relay::start(server.tls).await;
    let mut talker = Peer::join(server.plain, "talker", "r").await;
    let url = format!("tls://localhost:{}", relay.addr.port());
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
    let elsewhere = TlsServer::for_names(&pki, &["elsewhere.example"]).await;
    relay.redirect(elsewhere.tls);
    let before = relay.accepted();
    relay.cut();
    relay.mend();
    let status = match tokio::time::timeout(PATIENCE, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            child.kill().await.unwrap();
            let mut why = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut why).await;
            panic!("the client did not stop: {why}");
        }
    };
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
    assert_eq!(relay.accepted() - before, 1, "one attempt: {why}");
}

/// The reconnect and catch-up of the link work the same over TLS.
#[tokio::test]
async fn over_tls_a_dropped_connection_reconnects_and_catches_up() {
    let pki = Pki::new("catchup");
    let server = TlsServer::start(&pki).await;
    let relay = Relay::start(server.tls).await;
    let mut talker = Peer::join(server.plain, "talker", "c").await;
    let url = format!("tls://localhost:{}", relay.addr.port());
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
    relay.cut();
    talker.until("LEFT c away").await;
    say(&mut talker, "two").await;
    say(&mut talker, "three").await;
    relay.mend();
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

/// A plain address that leads to the TLS port: the client says to use TLS, soon (it nudges a
/// silent server, which then answers ERR TLS_REQUIRED), rather than after the server's
/// login timeout.
#[tokio::test]
async fn plain_text_to_the_tls_port_says_to_use_tls() {
    let pki = Pki::new("plaintotls");
    let server = TlsServer::start(&pki).await;
    let out = client(server.tls, &["--nick", "x", "--room", "4"], "hi\n").await;
    assert!(!out.status.success(), "{out:?}");
    let why = stderr(&out);
    assert!(
        why.contains("takes TLS only: connect with --server tls://"),
        "{why}"
    );
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
    let server =
        TlsServer::presenting(&pki, "ca-as-server", &cert.pem(), &key.serialize_pem()).await;
    let url = format!("tls://localhost:{}", server.tls.port());
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

/// A registered name logs in over TLS with the password from the environment, and the
/// password never crosses the wire readable (through a plain connection it would: checked
/// too, so that the check means something).
#[tokio::test]
async fn a_password_crosses_the_wire_only_encrypted() {
    let pki = Pki::new("password");
    let server = TlsServer::start(&pki).await;
    let secret = "over-tls-secret-9";
    let mut owner = Peer::connect(server.plain).await;
    owner
        .send(&format!("NICK dora\nREGISTER {secret}\nQUIT"))
        .await;
    owner.until("OK REGISTER dora").await;
    owner.until("BYE").await;
    while let Ok(Some(_)) = owner.lines.next_line().await {}
    let mut watcher = Peer::join(server.plain, "watcher", "4").await;
    for (tls, port) in [(true, server.tls), (false, server.plain)] {
        let relay = Relay::start(port).await;
        let url = match tls {
            true => format!("tls://localhost:{}", relay.addr.port()),
            false => relay.addr.to_string(),
        };
        let ca = ["--ca", pki.ca()];
        let out = run(
            &[
                &["--server", &url, "--nick", "dora", "--room", "4"][..],
                if tls { &ca[..] } else { &[] },
            ]
            .concat(),
            &[("LINECHAT_PASSWORD", secret)],
            "logged in\n",
        )
        .await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(watcher.next_text().await, "logged in");
        assert_eq!(relay.client_sent(secret.as_bytes()), !tls, "tls: {tls}");
    }
}
