//! The TLS listener, on the real binary: the same protocol and limits as plain TCP, a real
//! `openssl s_client` session, plain text on the TLS port, stalled handshakes and a flood of
//! them, and SIGHUP reloading the certificate without dropping a connection. Certificates
//! are made here with rcgen.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use common::binary::{linechat, Binary};
use common::tls::{connector, tls_server, Certificate, DirGuard};
use common::{pg, Client, PATIENCE};

/// A line client over TLS, as [`Client`] is over plain TCP.
struct TlsClient {
    lines: Lines<BufReader<ReadHalf<TlsStream<TcpStream>>>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
    /// The certificate the server presented.
    presented: CertificateDer<'static>,
}

impl TlsClient {
    /// Connects, checks the server's certificate against `roots` for `localhost`, and reads
    /// the greeting.
    async fn connect(addr: SocketAddr, roots: &[&CertificateDer<'static>]) -> TlsClient {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let stream = tokio::time::timeout(PATIENCE, connector(roots).connect(name, tcp))
            .await
            .expect("a handshake within the patience window")
            .expect("the handshake succeeds");
        let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (read, writer) = tokio::io::split(stream);
        let mut client = TlsClient {
            lines: BufReader::new(read).lines(),
            writer,
            presented,
        };
        let hello = client.line().await;
        assert!(hello.starts_with("HELLO linechat "), "greeting: {hello}");
        client
    }

    async fn login(addr: SocketAddr, roots: &[&CertificateDer<'static>], nick: &str) -> Self {
        let mut client = TlsClient::connect(addr, roots).await;
        client.send(&format!("NICK {nick}")).await;
        client.expect(&format!("OK NICK {nick}")).await;
        client
    }

    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.writer.flush().await.unwrap();
    }

    async fn try_line(&mut self) -> Option<String> {
        tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("a line within the patience window")
            .expect("read (a TLS close without close_notify is an error here)")
    }

    async fn line(&mut self) -> String {
        self.try_line().await.expect("a line, not the end")
    }

    async fn expect(&mut self, want: &str) {
        assert_eq!(self.line().await, want);
    }

    async fn expect_prefix(&mut self, prefix: &str) -> String {
        let line = self.line().await;
        assert!(
            line.starts_with(prefix),
            "wanted {prefix:?}..., got {line:?}"
        );
        line
    }
}

/// Reads from a raw socket until the server closes it; the bytes it sent. Panics if that
/// takes longer than [`PATIENCE`].
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server did not close the connection");
    got
}

/// The start of a ClientHello: a handshake record header and a few bytes of the hello,
/// then nothing (a client that stalls half-way).
const STALLED_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
];

/// Two plain clients in room `room` exchange a message each way.
async fn plain_chat(alice: &mut Client, bob: &mut Client, room: &str, text: &str) {
    alice.send(&format!("SAY {text} from alice")).await;
    alice.expect_prefix("OK SAY ").await;
    let got = bob.expect_prefix(&format!("MSG {room} ")).await;
    assert!(got.ends_with(&format!("alice {text} from alice")), "{got}");
    bob.send(&format!("SAY {text} from bob")).await;
    bob.expect_prefix("OK SAY ").await;
    let got = alice.expect_prefix(&format!("MSG {room} ")).await;
    assert!(got.ends_with(&format!("bob {text} from bob")), "{got}");
}

/// Two plain clients, named and in `room`.
async fn plain_pair(addr: SocketAddr, room: &str) -> (Client, Client) {
    let mut alice = Client::login(addr, "alice").await;
    let mut bob = Client::login(addr, "bob").await;
    alice.join(&format!("{room} NONE")).await;
    bob.join(&format!("{room} NONE")).await;
    alice.expect_prefix(&format!("JOINED {room} bob")).await;
    (alice, bob)
}

/// A TLS client and a plain one in the same room hear each other; the TLS client gets a
/// history replay (pages of it) larger than what rustls buffers (so its writes wait on the socket and its
/// flushes matter), and every line of it arrives.
#[tokio::test]
async fn chat_over_tls_and_plain_tcp_share_a_room() {
    let dir = pg::temp_dir("tls-chat");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &[]);
    let tls_addr = server.tls_addr.unwrap();

    let mut plain = Client::login(server.addr, "bob").await;
    plain.join("4 NONE").await;
    // 300 lines of 1,000 bytes: 300 KB of history, several times rustls's 64 KiB buffer.
    let long = "x".repeat(1000);
    for i in 0..300 {
        plain.send(&format!("SAY {i} {long}")).await;
    }
    for _ in 0..300 {
        plain.expect_prefix("OK SAY ").await;
    }

    let mut alice = TlsClient::login(tls_addr, &[&cert.der], "alice").await;
    assert_eq!(alice.presented, cert.der);
    alice.send("JOIN 4 SINCE 0").await;
    for i in 0..300 {
        let line = alice.expect_prefix("HIST 4 ").await;
        assert!(line.ends_with(&format!("bob {i} {long}")), "{line}");
    }
    alice.expect("OK JOIN 4 300 300").await;
    plain.expect("JOINED 4 alice").await;

    alice.send("SAY hello over TLS").await;
    alice.expect_prefix("OK SAY 301 ").await;
    let got = plain.expect_prefix("MSG 4 301 ").await;
    assert!(got.ends_with(" alice hello over TLS"), "{got}");

    plain.send("SAY hello in clear").await;
    plain.expect_prefix("OK SAY 302 ").await;
    let got = alice.expect_prefix("MSG 4 302 ").await;
    assert!(got.ends_with(" bob hello in clear"), "{got}");

    // Errors are the same protocol too.
    alice.send("JOIN").await;
    alice.expect_prefix("ERR MISSING_ARGUMENT ").await;
    alice.send("QUIT").await;
    alice.expect("BYE goodbye").await;
    assert_eq!(alice.try_line().await, None, "closed with close_notify");
    plain.expect("LEFT 4 alice").await;
}

/// `openssl s_client -quiet`, the netcat of TLS, holds a whole session: it checks the
/// certificate for localhost, and what it types reaches a plain client.
#[tokio::test]
async fn an_openssl_s_client_session_chats() {
    let dir = pg::temp_dir("tls-openssl");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &[]);
    let tls_addr = server.tls_addr.unwrap();
    let mut bob = Client::login(server.addr, "bob").await;
    bob.join("4 NONE").await;

    let mut openssl = tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &tls_addr.to_string()])
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-verify_return_error")
        .arg("-CAfile")
        .arg(&cert.cert)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is installed (.ci/run installs it)");
    let mut stdin = openssl.stdin.take().unwrap();
    let mut stdout = BufReader::new(openssl.stdout.take().unwrap()).lines();
    let mut line = async || {
        tokio::time::timeout(PATIENCE, stdout.next_line())
            .await
            .expect("openssl printed a line in time")
            .unwrap()
            .expect("a line, not the end")
    };
    assert!(line().await.starts_with("HELLO linechat "));
    stdin
        .write_all(b"NICK carol\nJOIN 4 NONE\nSAY hello from openssl\n")
        .await
        .unwrap();
    assert_eq!(line().await, "OK NICK carol");
    assert_eq!(line().await, "OK JOIN 4 0 0");
    assert!(line().await.starts_with("OK SAY 1 "));
    bob.expect("JOINED 4 carol").await;
    let got = bob.expect_prefix("MSG 4 1 ").await;
    assert!(got.ends_with(" carol hello from openssl"), "{got}");
    bob.send("SAY hi carol").await;
    bob.expect_prefix("OK SAY 2 ").await;
    assert!(line().await.ends_with(" bob hi carol"));
    stdin.write_all(b"QUIT\n").await.unwrap();
    assert_eq!(line().await, "BYE goodbye");
    let status = tokio::time::timeout(PATIENCE, openssl.wait())
        .await
        .expect("openssl exits once the server closes")
        .unwrap();
    let mut errors = String::new();
    openssl
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .await
        .unwrap();
    assert!(status.success(), "openssl: {status}; {errors}");
    assert!(!errors.contains("verify error"), "{errors}");
}

/// A netcat user on the TLS port is told in plain text what is wrong, then closed.
#[tokio::test]
async fn plain_text_on_the_tls_port_gets_tls_required() {
    let dir = pg::temp_dir("tls-plaintext");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &[]);
    let mut stream = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    stream.write_all(b"NICK alice\n").await.unwrap();
    let got = String::from_utf8(read_to_close(&mut stream).await).unwrap();
    assert!(
        got.starts_with("ERR TLS_REQUIRED this port speaks TLS; "),
        "{got:?}"
    );
    assert_eq!(got.lines().count(), 1, "{got:?}");
    server.wait_for_log("plain text on a TLS port").await;
}

/// A TLS client that starts a handshake and stalls, and one that says nothing at all, are
/// closed within the login timeout; plain clients chat all the while.
#[tokio::test]
async fn a_stalled_handshake_is_closed_within_the_login_timeout_while_others_chat() {
    let dir = pg::temp_dir("tls-stall");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &["--login-timeout", "3"]);
    let tls_addr = server.tls_addr.unwrap();
    let mut stalled = TcpStream::connect(tls_addr).await.unwrap();
    stalled.write_all(STALLED_HELLO).await.unwrap();
    let mut silent = TcpStream::connect(tls_addr).await.unwrap();
    let started = Instant::now();

    let (mut alice, mut bob) = plain_pair(server.addr, "4").await;
    plain_chat(&mut alice, &mut bob, "4", "while they stall").await;

    assert!(
        read_to_close(&mut stalled).await.is_empty(),
        "closed without a word"
    );
    assert!(read_to_close(&mut silent).await.is_empty());
    // Not sooner than the timeout (with room for the clock's rounding).
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed too soon"
    );
    server
        .wait_for_log("TLS handshake not finished within the login timeout")
        .await;
    plain_chat(&mut alice, &mut bob, "4", "after they were closed").await;
}

/// Hundreds of connections to the TLS port that stall half-way through a handshake, send
/// garbage after a handshake byte, or speak plain text: meanwhile plain clients chat, and a
/// new TLS client completes its handshake and chats too (handshakes run in their own
/// tasks, not in the accept loop).
#[tokio::test]
async fn a_handshake_flood_leaves_chat_unaffected() {
    let dir = pg::temp_dir("tls-flood");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    // The default login timeout (60 s) keeps every stalled handshake open for the whole test.
    let server = tls_server(&cert, &[]);
    let tls_addr = server.tls_addr.unwrap();
    let (mut alice, mut bob) = plain_pair(server.addr, "4").await;

    let mut flood = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(tls_addr).await.unwrap();
        let garbage: &[u8] = match i % 3 {
            0 => STALLED_HELLO,
            1 => b"\x16\x03\x01\x00\x05garbage that is no TLS record at all\n",
            _ => b"",
        };
        stream.write_all(garbage).await.unwrap();
        flood.push(stream);
        if i % 50 == 0 {
            plain_chat(&mut alice, &mut bob, "4", &format!("during the flood {i}")).await;
        }
    }
    let mut carol = TlsClient::login(tls_addr, &[&cert.der], "carol").await;
    carol.send("JOIN 4 NONE").await;
    carol.expect_prefix("OK JOIN 4 0 ").await;
    alice.expect("JOINED 4 carol").await;
    bob.expect("JOINED 4 carol").await;
    let started = Instant::now();
    carol.send("SAY through the flood").await;
    carol.expect_prefix("OK SAY ").await;
    let got = alice.expect_prefix("MSG 4 ").await;
    assert!(got.ends_with(" carol through the flood"), "{got}");
    bob.expect_prefix("MSG 4 ").await;
    // Reported, not asserted: speed is the benchmark's business.
    println!("a TLS round trip during the flood: {:?}", started.elapsed());
    plain_chat(&mut alice, &mut bob, "4", "after the flood began").await;
    // The garbage was refused (each third connection), the stalled ones are still held.
    let mut refused = 0;
    for stream in flood.iter_mut().skip(1).step_by(3) {
        read_to_close(stream).await;
        refused += 1;
    }
    assert_eq!(refused, 100);
}

/// SIGHUP with a new certificate in the files: new connections get it, a connection made
/// before keeps working with the old one, and nobody is dropped. Then SIGHUP with a broken
/// file: the certificate in use stays, and the log says why.
#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_a_connection() {
    let dir = pg::temp_dir("tls-reload");
    let _guard = DirGuard(dir.clone());
    let first = Certificate::write(&dir);
    let server = tls_server(&first, &[]);
    let tls_addr = server.tls_addr.unwrap();
    let (mut alice, mut bob) = plain_pair(server.addr, "4").await;
    let mut carol = TlsClient::login(tls_addr, &[&first.der], "carol").await;
    carol.send("JOIN 4 NONE").await;
    carol.expect("OK JOIN 4 0 0").await;
    assert_eq!(carol.presented, first.der);

    let second = Certificate::write(&dir);
    server.signal("-HUP");
    server
        .wait_for_log("SIGHUP received: reloaded the TLS certificate")
        .await;
    let trusting_both = [&first.der, &second.der];
    let mut dave = TlsClient::login(tls_addr, &trusting_both, "dave").await;
    assert_eq!(
        dave.presented, second.der,
        "a new connection gets the new one"
    );
    dave.send("JOIN 4 NONE").await;
    dave.expect("OK JOIN 4 0 0").await;
    carol.expect("JOINED 4 dave").await;
    carol.send("SAY still here after the reload").await;
    carol.expect_prefix("OK SAY ").await;
    let got = dave.expect_prefix("MSG 4 ").await;
    assert!(got.ends_with(" carol still here after the reload"), "{got}");
    for plain in [&mut alice, &mut bob] {
        plain.expect("JOINED 4 carol").await;
        plain.expect("JOINED 4 dave").await;
        plain.expect_prefix("MSG 4 ").await;
    }
    plain_chat(&mut alice, &mut bob, "4", "after the reload").await;
    for tls in [&mut carol, &mut dave] {
        tls.expect_prefix("MSG 4 ").await;
        tls.expect_prefix("MSG 4 ").await;
    }

    std::fs::write(&second.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    server.signal("-HUP");
    let warning = server
        .wait_for_log("SIGHUP received: kept the TLS certificate in use")
        .await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("cert.pem"), "says which file: {warning}");
    let erin = TlsClient::login(tls_addr, &trusting_both, "erin").await;
    assert_eq!(erin.presented, second.der, "the old certificate stays");
    carol.send("SAY and after the failed one").await;
    carol.expect_prefix("OK SAY ").await;
    dave.expect_prefix("MSG 4 ").await;
}

/// Login timeout, shutdown and the connection limit hold over TLS as over plain TCP.
#[tokio::test]
async fn the_limits_and_shutdown_hold_over_tls() {
    let dir = pg::temp_dir("tls-limits");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let timing_out = tls_server(&cert, &["--login-timeout", "2"]);
    let mut unnamed = TlsClient::connect(timing_out.tls_addr.unwrap(), &[&cert.der]).await;
    unnamed
        .expect("BYE login timeout: choose a name with NICK sooner")
        .await;
    assert_eq!(unnamed.try_line().await, None);

    let mut server = tls_server(&cert, &["--max-connections", "2"]);
    let tls_addr = server.tls_addr.unwrap();
    let mut alice = TlsClient::login(tls_addr, &[&cert.der], "alice").await;
    let _bob = Client::login(server.addr, "bob").await;
    // The third connection is one too many: closed before any handshake.
    let mut third = TcpStream::connect(tls_addr).await.unwrap();
    assert!(read_to_close(&mut third).await.is_empty());
    server.wait_for_log("connection refused: server full").await;

    server.signal("-TERM");
    alice.expect("BYE server shutting down").await;
    assert_eq!(alice.try_line().await, None, "closed with close_notify");
    let status = tokio::time::timeout(PATIENCE, server.wait()).await.unwrap();
    assert!(status.success());
}

/// A TLS client whose TCP connection ends without `close_notify` (cut short by the network,
/// or careless): its whole lines are answered and it gets `BYE end of input`, but a last
/// line without LF, which may have been cut, is not acted on.
#[tokio::test]
async fn a_tls_connection_cut_without_close_notify_drops_only_its_partial_line() {
    let dir = pg::temp_dir("tls-cut");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &[]);
    let tls_addr = server.tls_addr.unwrap();
    let mut bob = Client::login(server.addr, "bob").await;
    bob.join("4 NONE").await;

    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = connector(&[&cert.der]).connect(name, tcp).await.unwrap();
    stream
        .write_all(b"NICK dave\nJOIN 4 NONE\nSAY whole line\nSAY cut sho")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    // FIN on the socket under TLS, without close_notify.
    socket2::SockRef::from(stream.get_ref().0)
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got)).await;
    let got = String::from_utf8(got).unwrap();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[0].starts_with("HELLO "));
    assert_eq!(lines[1..3], ["OK NICK dave", "OK JOIN 4 0 0"]);
    assert!(lines[3].starts_with("OK SAY 1 "), "{lines:?}");
    assert_eq!(lines[4], "BYE end of input");
    bob.expect("JOINED 4 dave").await;
    assert!(bob
        .expect_prefix("MSG 4 1 ")
        .await
        .ends_with(" dave whole line"));
    bob.expect("LEFT 4 dave").await;
    bob.expect_nothing_pending().await;
}

/// `--listen off` with a TLS listener serves TLS only; with neither, the server says so and
/// exits non-zero.
#[tokio::test]
async fn the_plain_listener_can_be_turned_off_but_not_every_listener() {
    let dir = pg::temp_dir("tls-off");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &["--listen", "off"]);
    let tls_addr = server.tls_addr.unwrap();
    assert_eq!(server.addr, tls_addr, "no plain listener was logged");
    server
        .wait_for_log("plain listener off (--listen off)")
        .await;
    TlsClient::login(tls_addr, &[&cert.der], "alice").await;

    let output = linechat()
        .args([
            "--store",
            "memory",
            "--listen",
            "off",
            "--http-listen",
            "off",
        ])
        .env("LINECHAT_LOG", "info")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("nothing to listen on: --listen and --http-listen are off and --tls-listen is not given"),
        "{log}"
    );
}

/// A plain listener that other machines can reach warns that everything crosses the network
/// in clear text; one on loopback does not.
#[tokio::test]
async fn a_plain_listener_off_loopback_warns_that_traffic_is_in_clear() {
    let warning = "cross the network in clear text";
    let exposed = Binary::start(linechat().args(["--store", "memory", "--listen", "0.0.0.0:0"]));
    assert!(
        exposed.log().iter().any(|l| l.contains(warning)),
        "{:#?}",
        exposed.log()
    );
    let local = Binary::start(linechat().args(["--store", "memory", "--listen", "127.0.0.1:0"]));
    assert!(
        !local.log().iter().any(|l| l.contains(warning)),
        "{:#?}",
        local.log()
    );
}

/// Started as root, the server reads its key as root, then becomes `nobody`: a reload of a
/// key only root may read keeps the certificate in use and says which user must read it.
/// (Runs as root, as the rest of the suite does here and in CI.)
#[tokio::test]
async fn a_reload_the_unprivileged_user_cannot_read_says_so() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test must run as root");
    let dir = pg::temp_dir("tls-unreadable");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let only_root = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&cert.key, only_root).unwrap();
    let server = tls_server(&cert, &[]);
    server.wait_for_log("running as user nobody").await;
    server.signal("-HUP");
    let warning = server
        .wait_for_log("SIGHUP received: kept the TLS certificate in use")
        .await;
    assert!(warning.contains("key.pem: Permission denied"), "{warning}");
    let nobody = linechat::privileges::lookup("nobody").unwrap();
    let names_the_user = format!("the server runs as uid {} now", nobody.uid);
    assert!(warning.contains(&names_the_user), "{warning}");
    let client = TlsClient::login(server.tls_addr.unwrap(), &[&cert.der], "alice").await;
    assert_eq!(client.presented, cert.der, "the certificate in use stays");
}

/// With a certificate, the HTTP listener serves https and wss on it: the page, `/healthz`,
/// and a WebSocket session that chats with a plain client and logs in a registered name.
#[tokio::test]
async fn the_http_listener_serves_https_and_wss_with_the_same_certificate() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let dir = pg::temp_dir("tls-web");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &[]);
    let web = server.http_addr.expect("an https listener");
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains(&format!("web page at https://{web}/"))),
        "{:#?}",
        server.log()
    );
    let open = || async {
        let tcp = TcpStream::connect(web).await.unwrap();
        connector(&[&cert.der])
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("the https listener presents the certificate")
    };
    let mut page = open().await;
    page.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    page.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
    // Plain HTTP to the https port: an HTTP answer a browser shows, not a protocol line.
    let mut plain_http = TcpStream::connect(web).await.unwrap();
    plain_http
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    plain_http.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.ends_with("open it as https://, not http://\n"),
        "{answer}"
    );

    let mut plain = Client::login(server.addr, "bob").await;
    plain.send("REGISTER correct-horse").await;
    plain.expect("OK REGISTER bob").await;
    plain.send("QUIT").await;
    plain.expect("BYE goodbye").await;
    let mut carol = Client::login(server.addr, "carol").await;
    carol.join("4").await;

    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", web.port()), open().await)
            .await
            .expect("wss upgrade");
    let hello = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert!(hello.starts_with("HELLO "), "{hello}");
    ws.send(Message::text("NICK bob correct-horse"))
        .await
        .unwrap();
    ws.send(Message::text("JOIN 4")).await.unwrap();
    ws.send(Message::text("SAY hello over wss")).await.unwrap();
    let mut lines = Vec::new();
    while lines.len() < 3 {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            lines.push(t.to_string());
        }
    }
    assert_eq!(lines[0], "OK NICK bob");
    assert!(lines[1].starts_with("OK JOIN 4 "), "{lines:?}");
    assert!(lines[2].starts_with("OK SAY "), "{lines:?}");
    carol.expect("JOINED 4 bob").await;
    let got = carol.expect_prefix("MSG 4 ").await;
    assert!(got.ends_with(" bob hello over wss"), "{got}");
}
