//! A hostile review of the TLS listener, on the real binary: slow readers, endless lines,
//! slow handshakes against the login timeout, shutdown with handshakes under way.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use common::binary::linechat;
use common::tls::{connector, tls_server, Certificate, DirGuard};
use common::{pg, Client, PATIENCE};

async fn handshake(tcp: TcpStream, root: &CertificateDer<'static>) -> TlsStream<TcpStream> {
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(PATIENCE, connector(&[root]).connect(name, tcp))
        .await
        .expect("a handshake within the patience window")
        .expect("the handshake succeeds")
}

/// Reads lines until the connection ends (or PATIENCE passes); all of them.
async fn lines_to_end(stream: TlsStream<TcpStream>) -> Vec<String> {
    let mut lines = BufReader::new(stream).lines();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            got.push(line);
        }
    })
    .await;
    got
}

const STALLED_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
];

/// The login timeout of a TLS connection counts from accept, as a plain one's does: a
/// client that spends most of it on a (slow) handshake, then never sends NICK, is closed
/// when it runs out, not a whole second login timeout later. Otherwise a slowloris holds
/// each of its --max-per-ip slots, unnamed, for twice the login timeout.
#[tokio::test]
async fn the_login_timeout_counts_from_accept_not_from_the_end_of_the_handshake() {
    let dir = pg::temp_dir("tlsatk-login");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &["--login-timeout", "4"]);
    let started = Instant::now();
    let tcp = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    // Most of the login timeout passes before the ClientHello.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let stream = handshake(tcp, &cert.der).await;
    let lines = lines_to_end(stream).await;
    let elapsed = started.elapsed();
    assert!(
        lines.iter().any(|l| l.starts_with("BYE login timeout")),
        "{lines:?}"
    );
    assert!(
        elapsed < Duration::from_millis(5500),
        "an unnamed TLS connection lived {elapsed:?} with --login-timeout 4"
    );
}

/// A TLS client that stops reading while a room floods it is closed `BYE too slow`, as a
/// plain one is: bytes buffered inside rustls do not hide the stall.
#[tokio::test]
async fn a_tls_client_that_stops_reading_is_closed_too_slow() {
    let dir = pg::temp_dir("tlsatk-slow");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(
        &cert,
        &["--outbound-limit", "65536", "--stall-timeout", "2"],
    );
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(server.tls_addr.unwrap()).await.unwrap();
    let mut alice = handshake(tcp, &cert.der).await;
    alice.write_all(b"NICK alice\nJOIN 4 NONE\n").await.unwrap();
    alice.flush().await.unwrap();
    // Let the replies arrive (they stay unread in the socket from here on).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut bob = Client::login(server.addr, "bob").await;
    bob.join("4 NONE").await;
    let text = "x".repeat(1000);
    // Until the server gives up on alice (she leaves the room as her close begins): at
    // least --stall-timeout, however fast the SAYs go (a count of them ran out in 2 s in an
    // optimised build).
    let mut closed = false;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < give_up {
        bob.send(&format!("SAY {text}")).await;
        let (before, _) = bob.until("OK SAY ").await;
        if before.iter().any(|l| l == "LEFT 4 alice") {
            closed = true;
            break;
        }
    }
    assert!(closed, "alice was never closed");
    // She reads now, within the close grace: what was queued, then the BYE.
    let lines = lines_to_end(alice).await;
    server.wait_for_log("closed: too slow").await;
    assert_eq!(
        lines.last().map(String::as_str),
        Some("BYE too slow"),
        "{} lines",
        lines.len()
    );
}

/// An endless line over TLS is refused (`ERR LINE_TOO_LONG`), costs the server no more than
/// a line's worth of memory, and the connection goes on.
#[tokio::test]
async fn an_endless_line_over_tls_is_refused_with_memory_bounded() {
    let dir = pg::temp_dir("tlsatk-long");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &[]);
    let tcp = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    let stream = handshake(tcp, &cert.der).await;
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    let hello = lines.next_line().await.unwrap().unwrap();
    assert!(hello.starts_with("HELLO"), "{hello}");
    let before = server.rss_kib();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..(32 * 16) {
        write.write_all(&chunk).await.unwrap();
    }
    write.write_all(b"\nNICK alice\n").await.unwrap();
    write.flush().await.unwrap();
    let mut got = Vec::new();
    loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a reply")
            .unwrap()
            .expect("not closed");
        let done = line == "OK NICK alice";
        got.push(line);
        if done {
            break;
        }
    }
    assert!(got[0].starts_with("ERR LINE_TOO_LONG"), "{got:?}");
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "32 MiB line grew the server by {grown} KiB"
    );
}

/// Shutdown does not wait out handshakes under way: they are dropped at once.
#[tokio::test]
async fn shutdown_with_handshakes_under_way_is_prompt() {
    let dir = pg::temp_dir("tlsatk-shutdown");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let mut server = tls_server(&cert, &["--login-timeout", "120", "--close-grace", "60"]);
    let addr: SocketAddr = server.tls_addr.unwrap();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(STALLED_HELLO).await.unwrap();
        stalled.push(s);
    }
    let mut silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.signal("-TERM");
    let status = tokio::time::timeout(PATIENCE, server.wait())
        .await
        .expect("the server exits within the patience window");
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    let mut buf = [0u8; 16];
    assert!(matches!(silent.read(&mut buf).await, Ok(0) | Err(_)));
}

/// A plain-text client on the TLS port that keeps sending after `ERR TLS_REQUIRED` is
/// drained for --close-grace; a second stopping signal (hurry) must cut that short, as it
/// does for a session's close. Otherwise one such client holds shutdown for the whole grace.
#[tokio::test]
async fn a_second_signal_cuts_short_the_drain_of_a_plain_text_client_on_the_tls_port() {
    let dir = pg::temp_dir("tlsatk-hurry");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let mut server = tls_server(&cert, &["--close-grace", "60"]);
    let addr: SocketAddr = server.tls_addr.unwrap();
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"NICK x\n").await.unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..400 {
            if plain.write_all(b"more\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal("-TERM");
    let status = tokio::time::timeout(PATIENCE, server.wait())
        .await
        .expect("the server exits within the patience window");
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown (hurried) took {:?}",
        started.elapsed()
    );
    writer.abort();
}

/// What a connection that takes no output holds is bounded by the session's own queues
/// (the mailbox's --outbound-limit and the writer's queue), whatever its transport: a TLS
/// connection must not hold another rustls buffer's worth (64 KiB of records by default,
/// counted by nothing: `LineWriter::pending` sees only the queue) on top. Measured as the
/// server's growth for stalled TLS readers against as many stalled plain ones.
#[tokio::test]
async fn a_stalled_tls_reader_costs_no_more_than_a_stalled_plain_one() {
    const N: usize = 40;
    let dir = pg::temp_dir("tlsatk-mem");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let mut growth = Vec::new();
    for tls in [false, true] {
        let server = tls_server(
            &cert,
            &["--outbound-limit", "16384", "--stall-timeout", "120"],
        );
        let mut held_tls = Vec::new();
        let mut held_plain = Vec::new();
        for i in 0..N {
            let socket = TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4 * 1024).unwrap();
            let hello = format!("NICK s{i}\nJOIN 4 NONE\n");
            if tls {
                let tcp = socket.connect(server.tls_addr.unwrap()).await.unwrap();
                let mut s = handshake(tcp, &cert.der).await;
                s.write_all(hello.as_bytes()).await.unwrap();
                s.flush().await.unwrap();
                held_tls.push(s);
            } else {
                let mut s = socket.connect(server.addr).await.unwrap();
                s.write_all(hello.as_bytes()).await.unwrap();
                held_plain.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut bob = Client::login(server.addr, "bob").await;
        bob.join("4 NONE").await;
        let before = server.rss_kib();
        let text = "y".repeat(2000);
        for _ in 0..300 {
            bob.send(&format!("SAY {text}")).await;
            bob.until("OK SAY ").await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let grown = server.rss_kib().saturating_sub(before);
        growth.push(grown);
        // What one stalled reader gets when it reads again: everything held for it.
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            let r = if tls {
                tokio::time::timeout(Duration::from_millis(700), held_tls[0].read(&mut buf)).await
            } else {
                tokio::time::timeout(Duration::from_millis(700), held_plain[0].read(&mut buf)).await
            };
            match r {
                Ok(Ok(n)) if n > 0 => got += n,
                _ => break,
            }
        }
        eprintln!("tls={tls}: one stalled reader then read {got} bytes");
        drop((held_tls, held_plain));
    }
    let (plain, tls) = (growth[0], growth[1]);
    eprintln!("growth for {N} stalled readers: plain {plain} KiB, TLS {tls} KiB");
    assert!(
        tls <= plain + (N as u64) * 16,
        "{N} stalled TLS readers grew the server by {tls} KiB, as many plain ones by {plain} KiB"
    );
}

/// Stalled handshakes count against --max-per-ip (each holds its ticket from accept): the
/// next connection from that address is closed before any handshake.
#[tokio::test]
async fn stalled_handshakes_count_against_max_per_ip() {
    let dir = pg::temp_dir("tlsatk-perip");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &["--max-per-ip", "3", "--limit-loopback"]);
    let addr = server.tls_addr.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(STALLED_HELLO).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(PATIENCE, fourth.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    server.wait_for_log("connection refused: server full").await;
    drop(held);
}

/// A TLS client that sends its lines then `close_notify` (half-close) but keeps reading gets
/// every reply, then `BYE end of input`, then the server's `close_notify`.
#[tokio::test]
async fn close_notify_half_close_gets_every_reply_and_bye() {
    let dir = pg::temp_dir("tlsatk-half");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &[]);
    let tcp = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    let mut s = handshake(tcp, &cert.der).await;
    s.write_all(b"NICK alice\nJOIN 4 NONE\nSAY hi\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap(); // close_notify, then FIN
    let lines = lines_to_end(s).await;
    assert!(lines.iter().any(|l| l == "OK NICK alice"), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("OK SAY ")), "{lines:?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("BYE end of input"),
        "{lines:?}"
    );
}

/// A storm of SIGHUPs while clients handshake and chat: every handshake succeeds, no
/// connection drops, the server stays up; a reload with a key that does not match keeps the
/// old certificate.
#[tokio::test]
async fn a_sighup_storm_and_a_mismatched_key_break_nothing() {
    let dir = pg::temp_dir("tlsatk-hup");
    let _guard = DirGuard(dir.clone());
    let cert = Certificate::write(&dir);
    let server = tls_server(&cert, &[]);
    let addr = server.tls_addr.unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut alice = handshake(tcp, &cert.der).await;
    alice.write_all(b"NICK alice\n").await.unwrap();
    // A key that is not the certificate's.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&cert.key, other.signing_key.serialize_pem()).unwrap();
    for i in 0..60 {
        server.signal("-HUP");
        if i % 6 == 0 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut s = handshake(tcp, &cert.der).await;
            let mut buf = [0u8; 6];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"HELLO ");
        }
    }
    server.wait_for_log("kept the TLS certificate in use").await;
    alice.write_all(b"JOIN 4 NONE\n").await.unwrap();
    alice.shutdown().await.unwrap();
    let lines = lines_to_end(alice).await;
    assert!(
        lines.iter().any(|l| l.starts_with("OK JOIN 4")),
        "{lines:?}"
    );
}

/// A --database-url that cannot be used is refused at start-up without its password in
/// what the server prints, however it is malformed (sslmode, port, percent-encoding, a
/// password with `@` or `?` in it, an unreadable sslrootcert, an unterminated quote).
#[test]
fn a_bad_database_url_never_prints_its_password() {
    for url in [
        "postgresql://u:S3cretPw@h/d?sslmode=bogus",
        "postgresql://u:S3cretPw@h/d?sslmode=allow",
        "postgresql://u:S3cretPw@h:99999/d",
        "postgresql://u:S3cretPw@h:notaport/d",
        "postgresql://u:S3cretPw%zz@h/d",
        "postgresql://u:S3cretPw@x@h/d?sslmode=verify-full",
        "postgresql://u:S3cretPw?x@h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
        "postgresql://u:S3cretPw@h/d?sslmode=require&sslrootcert=/nonexistent/ca.pem",
        "postgresql://u:S3cretPw@h/d?sslmode=verify-full&sslrootcert=/etc/hostname",
        "host=h user=u password='S3cretPw",
        "host=h user=u password=S3cretPw port=abc",
        "host=h user=u password=S3cretPw sslmode=S3cretPw",
        "host=h user=u password=S3cretPw bogus",
    ] {
        let out = linechat()
            .args(["--store", "postgres", "--database-url", url])
            .env("LINECHAT_LISTEN", "127.0.0.1:0")
            .env("LINECHAT_DB_STARTUP_TIMEOUT", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{url}: {text}");
        // The one case an operator wrote the password as the sslmode itself is exempt.
        if !url.contains("sslmode=S3cretPw") {
            assert!(
                !text.contains("S3cretPw"),
                "{url} printed its password: {text}"
            );
        }
    }
}
