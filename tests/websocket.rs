//! `/ws` without a browser: the protocol a text frame per line, on the same session code as
//! TCP, and how frames map: a frame over `--max-line`, a binary frame, a frame with a line
//! break, WebSocket ping and close versus `PING`, `QUIT` and `BYE`, and a page of another
//! site turned away.

mod common;

use tokio_tungstenite::tungstenite::Message;

use common::web::{Seen, WsClient};
use common::{memory_config, Client, TestServer};

async fn web_server() -> TestServer {
    TestServer::start_web_with(memory_config()).await
}

#[tokio::test]
async fn a_websocket_client_and_a_tcp_client_talk_in_one_room() {
    let server = web_server().await;
    let web = server.http_addr.unwrap();
    let mut browser = WsClient::login(web, "wendy").await;
    browser.send("JOIN 4").await;
    assert_eq!(browser.line().await, "OK JOIN 4 0 0");
    let mut tcp = Client::login(server.addr, "tom").await;
    tcp.join("4").await;
    assert_eq!(browser.line().await, "JOINED 4 tom");

    browser.send("SAY hello from a browser").await;
    let ok = browser.line().await;
    assert!(ok.starts_with("OK SAY 1 "), "{ok}");
    let msg = tcp.line().await;
    assert!(
        msg.starts_with("MSG 4 1 ") && msg.ends_with(" wendy hello from a browser"),
        "{msg}"
    );

    let id = tcp.say("hello from netcat").await;
    let msg = browser.line().await;
    assert!(
        msg.starts_with(&format!("MSG 4 {id} ")) && msg.ends_with(" tom hello from netcat"),
        "{msg}"
    );
    // A later WebSocket client sees the history first, then live.
    let mut late = WsClient::login(web, "lara").await;
    late.send("JOIN 4").await;
    let replay = late.until("OK JOIN").await;
    assert_eq!(replay.len(), 3, "{replay:?}");
    assert!(replay[0].ends_with("wendy hello from a browser"));
    assert!(replay[1].ends_with("tom hello from netcat"));
    assert_eq!(replay[2], format!("OK JOIN 4 {id} 2"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn every_frame_is_one_line_without_its_line_end() {
    let server = web_server().await;
    let mut c = WsClient::login(server.http_addr.unwrap(), "ann").await;
    // HELP answers with many lines: each its own frame, none with a line end.
    c.send("HELP").await;
    let help = c.until("OK HELP").await;
    assert!(help.len() > 5, "{help:?}");
    assert!(help.iter().all(|l| !l.contains('\n') && !l.contains('\r')));
    // A trailing LF or CRLF is taken as the line's end, as on TCP.
    c.send("PING a\n").await;
    assert_eq!(c.line().await, "PONG a");
    c.send("PING b\r\n").await;
    assert_eq!(c.line().await, "PONG b");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn frames_that_are_not_lines_are_refused_and_the_connection_lives_on() {
    let mut config = memory_config();
    config.max_line = 64;
    let server = TestServer::start_web_with(config).await;
    let mut c = WsClient::login(server.http_addr.unwrap(), "bob").await;
    c.send("JOIN 4").await;
    c.until("OK JOIN").await;

    // Longer than --max-line: ERR LINE_TOO_LONG, as on TCP.
    c.send(&format!("SAY {}", "x".repeat(100))).await;
    assert!(c.line().await.starts_with("ERR LINE_TOO_LONG "));
    // A line break inside: never two commands from one frame.
    c.send("SAY hi\nQUIT").await;
    assert!(c.line().await.starts_with("ERR BAD_FRAME "));
    // A binary frame.
    c.send_message(Message::binary(b"SAY hi".to_vec())).await;
    assert!(c.line().await.starts_with("ERR BAD_FRAME "));
    // Bad UTF-8 cannot be in a text frame at all; a stray CR is part of the text.
    c.send("SAY still here").await;
    assert!(c.line().await.starts_with("OK SAY 1 "));
    c.send("HISTORY 4").await;
    let history = c.until("OK HISTORY").await;
    assert_eq!(history.len(), 2, "nothing else was said: {history:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_huge_frame_ends_the_connection_without_being_kept() {
    let mut config = memory_config();
    config.max_line = 64;
    let server = TestServer::start_web_with(config).await;
    let mut c = WsClient::login(server.http_addr.unwrap(), "hugh").await;
    // Over the WebSocket message limit (64 KiB here): not read whole, the connection ends.
    let huge = "x".repeat(1 << 20);
    use futures::SinkExt;
    let _ = c.socket.send(Message::text(huge)).await;
    while let Seen::Text(line) = c.next().await {
        assert!(!line.starts_with("OK"), "{line}");
    }
    // The server is fine.
    let mut d = WsClient::login(server.http_addr.unwrap(), "dora").await;
    d.send("PING").await;
    assert_eq!(d.line().await, "PONG");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_pings_are_answered_by_pongs_and_ping_by_pong() {
    let server = web_server().await;
    let mut c = WsClient::greeted(server.http_addr.unwrap()).await;
    c.send_message(Message::Ping(b"are you there".to_vec().into()))
        .await;
    use futures::StreamExt;
    let pong = tokio::time::timeout(common::PATIENCE, c.socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
    c.send("PING 42").await;
    assert_eq!(c.line().await, "PONG 42");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn quit_is_answered_by_bye_then_a_close_frame() {
    let server = web_server().await;
    let mut c = WsClient::login(server.http_addr.unwrap(), "quinn").await;
    c.send("QUIT see you").await;
    assert_eq!(c.line().await, "BYE see you");
    assert_eq!(
        c.next().await,
        Seen::Close(Some((1000, "see you".to_owned())))
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_close_frame_ends_the_session_and_frees_its_name() {
    let server = web_server().await;
    let web = server.http_addr.unwrap();
    let mut c = WsClient::login(web, "cleo").await;
    c.send("JOIN 4").await;
    c.until("OK JOIN").await;
    let mut watcher = Client::login(server.addr, "walt").await;
    watcher.join("4").await;
    assert_eq!(c.line().await, "JOINED 4 walt");
    c.socket.close(None).await.unwrap();
    // The server answers the close, and the others see the member leave.
    assert!(matches!(c.next().await, Seen::Close(_) | Seen::End));
    assert_eq!(watcher.line().await, "LEFT 4 cleo");
    let again = WsClient::login(web, "cleo").await;
    drop(again);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_shutdown_says_bye_then_closes_going_away() {
    let server = web_server().await;
    let mut c = WsClient::login(server.http_addr.unwrap(), "sam").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(c.line().await, "BYE server shutting down");
    assert_eq!(
        c.next().await,
        Seen::Close(Some((1001, "server shutting down".to_owned())))
    );
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_page_of_another_site_may_not_open_a_session() {
    let server = web_server().await;
    let web = server.http_addr.unwrap();
    let refused = WsClient::connect_with(web, &[("origin", "https://evil.example")]).await;
    assert_eq!(refused.err(), Some(403));
    let own = format!("http://{web}");
    let mut c = WsClient::connect_with(web, &[("origin", &own)])
        .await
        .expect("its own page may");
    assert!(c.line().await.starts_with("HELLO "));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_connections_count_toward_the_per_address_limit() {
    let mut config = memory_config();
    config.max_per_ip = 2;
    config.limit_loopback = true;
    let server = TestServer::start_web_with(config).await;
    let web = server.http_addr.unwrap();
    let _a = WsClient::greeted(web).await;
    let _b = Client::connect(server.addr).await;
    // The third connection from this address is turned away before any HTTP.
    let third = tokio::net::TcpStream::connect(web).await.unwrap();
    let mut refused = String::new();
    use tokio::io::AsyncReadExt;
    let mut third = third;
    third.read_to_string(&mut refused).await.unwrap();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    server.stop().await.unwrap();
}

/// A WebSocket client that writes frames byte by byte, to send what a library would not:
/// fragments around a ping, text that is not UTF-8, an unmasked frame.
struct RawWs {
    socket: tokio::net::TcpStream,
}

impl RawWs {
    /// Checks that not one byte comes back within `wait`.
    async fn assert_no_answer_for(&mut self, wait: std::time::Duration, why: &str) {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        let answer = tokio::time::timeout(wait, self.socket.read_exact(&mut byte)).await;
        assert!(answer.is_err(), "{why}");
    }

    /// Connects and upgrades by hand, checking the server's `Sec-WebSocket-Accept`.
    async fn connect(addr: std::net::SocketAddr) -> RawWs {
        RawWs::connect_sending(addr, b"").await
    }

    /// Connects and upgrades by hand, with `early` written right behind the request, in
    /// the same write, before the 101 can have come.
    async fn connect_sending(addr: std::net::SocketAddr, early: &[u8]) -> RawWs {
        use tokio::io::AsyncWriteExt;
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(early);
        socket.write_all(&bytes).await.unwrap();
        let head = read_head(&mut socket).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // RFC 6455, section 1.3's example key and answer.
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        let mut raw = RawWs { socket };
        let (opcode, hello) = raw.read_frame().await;
        assert_eq!(opcode, 0x1);
        assert!(hello.starts_with(b"HELLO "), "{hello:?}");
        raw
    }

    /// Writes `bytes` as they are.
    async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.socket.write_all(bytes).await.unwrap();
    }

    /// Reads frames up to the server's close frame; the text frames before it, and the
    /// close frame's code.
    async fn until_close(&mut self) -> (Vec<String>, u16) {
        let mut texts = Vec::new();
        loop {
            match self.read_frame().await {
                (0x1, text) => texts.push(String::from_utf8(text).unwrap()),
                (0x8, close) => return (texts, u16::from_be_bytes([close[0], close[1]])),
                other => panic!("unexpected frame {other:?} after {texts:?}"),
            }
        }
    }

    /// Text frames up to one equal to `last`, which ends the list.
    async fn until_close_or(&mut self, last: &str) -> (Vec<String>, String) {
        let mut texts = Vec::new();
        loop {
            let (opcode, text) = self.read_frame().await;
            assert_eq!(opcode, 0x1, "{texts:?}");
            let text = String::from_utf8(text).unwrap();
            if text == last {
                return (texts, text);
            }
            texts.push(text);
        }
    }

    async fn send_frame(&mut self, first_byte: u8, payload: &[u8], masked: bool) {
        use tokio::io::AsyncWriteExt;
        assert!(payload.len() < 126);
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![
            first_byte,
            payload.len() as u8 | if masked { 0x80 } else { 0 },
        ];
        if masked {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.socket.write_all(&frame).await.unwrap();
    }

    /// The next frame's opcode and payload (server frames are final and unmasked).
    async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        let read = async {
            let first = self.socket.read_u8().await.unwrap();
            assert_eq!(first & 0xF0, 0x80, "a final frame, no reserved bits");
            let len = match self.socket.read_u8().await.unwrap() {
                126 => usize::from(self.socket.read_u16().await.unwrap()),
                127 => self.socket.read_u64().await.unwrap() as usize,
                short => usize::from(short),
            };
            let mut payload = vec![0; len];
            self.socket.read_exact(&mut payload).await.unwrap();
            (first & 0x0F, payload)
        };
        tokio::time::timeout(common::PATIENCE, read).await.unwrap()
    }
}

/// Reads an HTTP response's head, lower-cased.
async fn read_head(socket: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(socket.read_u8().await.unwrap());
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// A masked client frame of any length, as a browser would send it.
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first_byte];
    match payload.len() {
        0..=125 => frame.push(0x80 | payload.len() as u8),
        126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn a_message_in_fragments_is_one_line_and_a_ping_between_them_is_answered() {
    let server = web_server().await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    // "PI", a ping, "NG 7" (final): one line, PING 7; the pong comes first.
    c.send_frame(0x01, b"PI", true).await;
    c.send_frame(0x89, b"hey", true).await;
    c.send_frame(0x80, b"NG 7", true).await;
    assert_eq!(c.read_frame().await, (0xA, b"hey".to_vec()));
    assert_eq!(c.read_frame().await, (0x1, b"PONG 7".to_vec()));
    // A character split across fragments is whole in its line.
    c.send_frame(0x01, b"PING \xc3", true).await;
    c.send_frame(0x80, b"\xa9", true).await;
    assert_eq!(c.read_frame().await, (0x1, "PONG é".as_bytes().to_vec()));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn text_that_is_not_utf8_ends_the_connection_with_1007() {
    let server = web_server().await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    c.send_frame(0x81, b"PING \xff", true).await;
    let (opcode, bye) = c.read_frame().await;
    assert_eq!(opcode, 0x1);
    assert!(bye.starts_with(b"BYE bad WebSocket frames: "), "{bye:?}");
    let (opcode, close) = c.read_frame().await;
    assert_eq!(opcode, 0x8);
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1007);
    assert_eq!(&close[2..], &bye[4..]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_unmasked_client_frame_ends_the_connection_with_1002() {
    let server = web_server().await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    c.send_frame(0x81, b"PING 1", false).await;
    assert_eq!(c.read_frame().await.0, 0x1);
    let (opcode, close) = c.read_frame().await;
    assert_eq!(opcode, 0x8);
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1002);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_plain_get_of_the_websocket_endpoint_is_a_bad_request() {
    let server = web_server().await;
    let response = common::web::get(server.http_addr.unwrap(), "/ws").await;
    assert_eq!(response.status, 400);
    server.stop().await.unwrap();
}

// Hostile clients: what a careless or malicious one sends over a real socket.

#[tokio::test]
async fn frames_split_at_every_byte_are_read_whole() {
    let server = web_server().await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    c.socket.set_nodelay(true).unwrap();
    let long = format!("PING {}", "é".repeat(100));
    let input = [
        client_frame(0x81, b"PING 1"),
        client_frame(0x01, b"PI"),
        client_frame(0x89, b"ping"),
        client_frame(0x00, b"NG "),
        client_frame(0x80, b"2"),
        client_frame(0x81, long.as_bytes()),
        client_frame(0x81, b""),
        client_frame(0x81, b"PING 3"),
    ]
    .concat();
    for byte in &input {
        c.send_raw(&[*byte]).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(c.read_frame().await, (0x1, b"PONG 1".to_vec()));
    assert_eq!(c.read_frame().await, (0xA, b"ping".to_vec()));
    assert_eq!(c.read_frame().await, (0x1, b"PONG 2".to_vec()));
    let pong = format!("PONG {}", "é".repeat(100));
    assert_eq!(c.read_frame().await, (0x1, pong.into_bytes()));
    // The empty frame is a blank line: no answer.
    assert_eq!(c.read_frame().await, (0x1, b"PONG 3".to_vec()));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bytes_sent_right_behind_the_upgrade_request_are_read() {
    let server = web_server().await;
    let early = [
        client_frame(0x81, b"NICK early"),
        client_frame(0x81, b"PING x"),
    ]
    .concat();
    let mut c = RawWs::connect_sending(server.http_addr.unwrap(), &early).await;
    assert_eq!(c.read_frame().await, (0x1, b"OK NICK early".to_vec()));
    assert_eq!(c.read_frame().await, (0x1, b"PONG x".to_vec()));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_64_bit_length_with_its_top_bit_set_ends_the_connection() {
    let server = web_server().await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(b"PING 1");
    c.send_raw(&frame).await;
    let (texts, code) = c.until_close().await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].starts_with("BYE bad WebSocket frames"),
        "{texts:?}"
    );
    assert!(code == 1002 || code == 1009, "{code}");
    server.stop().await.unwrap();
}

/// A message in fragments may not grow past the limit the server set, whatever the
/// fragments declare; the fragments are not kept past what a line can be.
#[tokio::test]
async fn a_fragmented_message_past_the_limit_ends_the_connection() {
    let mut config = memory_config();
    config.max_line = 64;
    let server = TestServer::start_web_with(config).await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    c.send_raw(&client_frame(0x01, b"SAY ")).await;
    let chunk = [b'x'; 1000];
    let mut sent = 4;
    let mut flood = Vec::new();
    while sent <= 64 * 1024 {
        flood.extend(client_frame(0x00, &chunk));
        sent += chunk.len();
    }
    // The server may close before it has all of it.
    use tokio::io::AsyncWriteExt;
    let _ = c.socket.write_all(&flood).await;
    let (texts, code) = c.until_close().await;
    assert!(texts.iter().all(|t| t.starts_with("BYE ")), "{texts:?}");
    assert_eq!(code, 1009);
    server.stop().await.unwrap();
}

/// Every frame is input, as every line (a blank one too) is on TCP: a client over its rate
/// is not read, however it frames what it sends. Empty fragments of one message must not be
/// read at the socket's speed, free of the rate.
#[tokio::test]
async fn empty_fragments_are_input_to_flood_control() {
    let mut config = memory_config();
    config.rate = 1;
    config.burst = 1;
    let server = TestServer::start_web_with(config).await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    // "PING 1" with 100,000 empty fragments inside: at one frame a second, never answered
    // within the test.
    let mut input = client_frame(0x01, b"PING ");
    input.extend(client_frame(0x00, b"").repeat(100_000));
    input.extend(client_frame(0x80, b"1"));
    c.send_raw(&input).await;
    c.assert_no_answer_for(
        std::time::Duration::from_secs(3),
        "100,000 frames were read at once from a client allowed one a second",
    )
    .await;
    server.stop().await.unwrap();
}

/// A client that sends pings and never reads: the pongs are bounded, and the server stops
/// reading once its output is high, rather than queueing pongs without end.
#[tokio::test]
async fn a_ping_flood_from_a_client_that_never_reads_is_not_read_without_end() {
    let server = web_server().await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    let ping = client_frame(0x89, &[b'p'; 125]);
    let block: Vec<u8> = ping.repeat(8 * 1024);
    let flood = async {
        // 100 MB of pings: as many bytes of pongs.
        for _ in 0..100 {
            c.send_raw(&block).await;
        }
    };
    let read_everything = tokio::time::timeout(std::time::Duration::from_secs(5), flood).await;
    assert!(read_everything.is_err(), "the server read 100 MB of pings");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn close_frames_with_bad_payloads_are_protocol_errors() {
    let server = web_server().await;
    let web = server.http_addr.unwrap();
    // (payload, the close code the server must answer with)
    let cases: [(&[u8], u16); 6] = [
        (b"\x03", 1002),
        // Codes a client may not send (RFC 6455, 7.4.1 and 7.4.2).
        (b"\x03\xe7", 1002),
        (b"\x03\xed", 1002),
        (b"\x03\xee", 1002),
        (b"\x13\x88", 1002),
        // A reason that is not UTF-8.
        (b"\x03\xe8\xff", 1007),
    ];
    for (payload, want) in cases {
        let mut c = RawWs::connect(web).await;
        c.send_raw(&client_frame(0x88, payload)).await;
        let (_, code) = c.until_close().await;
        assert_eq!(code, want, "close payload {payload:?}");
    }
    // A good one, with an application's code and a reason, is answered normally.
    let mut c = RawWs::connect(web).await;
    c.send_raw(&client_frame(0x88, b"\x0f\xa0bye \xc3\xa9"))
        .await;
    let (texts, code) = c.until_close().await;
    assert_eq!((texts.len(), code), (0, 1000), "{texts:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn nothing_after_a_close_frame_is_done() {
    let server = web_server().await;
    let web = server.http_addr.unwrap();
    let mut c = RawWs::connect(web).await;
    let input = [
        client_frame(0x81, b"NICK closer"),
        client_frame(0x81, b"JOIN 9"),
        client_frame(0x88, b"\x03\xe8"),
        client_frame(0x81, b"SAY after the close"),
        client_frame(0x89, b"ping after the close"),
    ]
    .concat();
    c.send_raw(&input).await;
    let (texts, code) = c.until_close().await;
    assert_eq!(texts, ["OK NICK closer", "OK JOIN 9 0 0"]);
    assert_eq!(code, 1000);
    let mut tcp = Client::login(server.addr, "tess").await;
    let joined = tcp.join("9").await;
    assert!(
        joined.iter().all(|l| !l.contains("after the close")),
        "{joined:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_line_of_exactly_max_line_with_crlf_is_a_line() {
    let mut config = memory_config();
    config.max_line = 64;
    let server = TestServer::start_web_with(config).await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    let exact = format!("PING {}\r\n", "x".repeat(59));
    c.send_raw(&client_frame(0x81, exact.as_bytes())).await;
    let (_, pong) = c.read_frame().await;
    assert_eq!(pong, format!("PONG {}", "x".repeat(59)).into_bytes());
    // In fragments, CR and LF each in one of their own.
    let fragments = [
        client_frame(0x01, &exact.as_bytes()[..64]),
        client_frame(0x00, b"\r"),
        client_frame(0x80, b"\n"),
    ]
    .concat();
    c.send_raw(&fragments).await;
    let (_, pong) = c.read_frame().await;
    assert_eq!(pong, format!("PONG {}", "x".repeat(59)).into_bytes());
    // One more byte is too long.
    let over = format!("PING {}\r\n", "x".repeat(60));
    c.send_raw(&client_frame(0x81, over.as_bytes())).await;
    let (_, err) = c.read_frame().await;
    assert!(err.starts_with(b"ERR LINE_TOO_LONG "), "{err:?}");
    server.stop().await.unwrap();
}

/// Handshake requests a careless client sends.
#[tokio::test]
async fn handshake_edge_cases() {
    use tokio::io::AsyncWriteExt;
    let server = web_server().await;
    let web = server.http_addr.unwrap();
    let status = |request: String| async move {
        let mut socket = tokio::net::TcpStream::connect(web).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let head = tokio::time::timeout(common::PATIENCE, read_head(&mut socket))
            .await
            .expect("an answer");
        head[9..12].to_owned()
    };
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let request = |version: &str, connection: &str, extra: &str| {
        format!(
            "GET /ws {version}\r\nHost: {web}\r\nConnection: {connection}\r\n\
             Upgrade: websocket\r\n{extra}\r\n"
        )
    };
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    assert_eq!(status(request("HTTP/1.1", "Upgrade", v13)).await, "400");
    assert_eq!(
        status(request(
            "HTTP/1.1",
            "Upgrade",
            &format!("Sec-WebSocket-Version: 8\r\n{key}")
        ))
        .await,
        "426"
    );
    assert_eq!(
        status(request(
            "HTTP/1.1",
            "keep-alive, Upgrade",
            &format!("{v13}{key}")
        ))
        .await,
        "101"
    );
    // A key must be 16 bytes in base64 (RFC 6455, 4.1).
    let bad_key = format!("{v13}Sec-WebSocket-Key: not a nonce\r\n");
    assert_eq!(
        status(request("HTTP/1.1", "Upgrade", &bad_key)).await,
        "400"
    );
    let short_key = format!("{v13}Sec-WebSocket-Key: c2hvcnQ=\r\n");
    assert_eq!(
        status(request("HTTP/1.1", "Upgrade", &short_key)).await,
        "400"
    );
    // HTTP/1.0 has no upgrade: a refusal, never a 101 over a connection that cannot switch.
    let answer = status(request("HTTP/1.0", "Upgrade", &format!("{v13}{key}"))).await;
    assert_ne!(answer, "101");
    server.stop().await.unwrap();
}

/// Messages of a WebSocket member and a TCP member, stored in the same batches: each member
/// gets exactly the other's, every one its own well-formed frame (or line), with the
/// multibyte text intact; an observer gets all of them.
#[tokio::test]
async fn a_websocket_member_gets_exactly_the_others_messages_of_a_shared_batch() {
    const EACH: usize = 200;
    let server = web_server().await;
    let web = server.http_addr.unwrap();
    let mut ws = RawWs::connect(web).await;
    ws.send_raw(
        &[
            client_frame(0x81, b"NICK wes"),
            client_frame(0x81, "JOIN r7".as_bytes()),
        ]
        .concat(),
    )
    .await;
    assert_eq!(ws.read_frame().await.1, b"OK NICK wes");
    assert_eq!(ws.read_frame().await.1, "OK JOIN r7 0 0".as_bytes());
    let mut observer = RawWs::connect(web).await;
    observer
        .send_raw(
            &[
                client_frame(0x81, b"NICK obi"),
                client_frame(0x81, "JOIN r7".as_bytes()),
            ]
            .concat(),
        )
        .await;
    observer.read_frame().await;
    observer.read_frame().await;
    let mut tcp = Client::login(server.addr, "tcp").await;
    tcp.join("r7").await;
    let (joined, _) = ws.until_close_or("JOINED r7 tcp").await;
    assert!(joined.iter().all(|l| l.starts_with("JOINED")), "{joined:?}");
    observer.until_close_or("JOINED r7 tcp").await;

    let ws_says: Vec<u8> = (0..EACH)
        .flat_map(|i| client_frame(0x81, format!("SAY wß {i} 日本語").as_bytes()))
        .collect();
    let tcp_says: String = (0..EACH).map(|i| format!("SAY tç {i} 😀\n")).collect();
    tokio::join!(ws.send_raw(&ws_says), tcp.send_raw(tcp_says.as_bytes()));

    // The WebSocket member: its acks and the TCP member's messages, nothing else.
    let (mut acks, mut msgs) = (0, Vec::new());
    while acks < EACH || msgs.len() < EACH {
        let (opcode, text) = ws.read_frame().await;
        assert_eq!(opcode, 0x1);
        let text = String::from_utf8(text).expect("UTF-8 text frames");
        if text.starts_with("OK SAY ") {
            acks += 1;
        } else {
            assert!(text.starts_with("MSG r7 "), "{text:?}");
            msgs.push(text);
        }
    }
    for (i, msg) in msgs.iter().enumerate() {
        assert!(msg.ends_with(&format!(" tcp tç {i} 😀")), "{i}: {msg:?}");
    }
    // The TCP member: the WebSocket member's messages.
    let (mut acks, mut msgs) = (0, Vec::new());
    while acks < EACH || msgs.len() < EACH {
        let line = tcp.line().await;
        if line.starts_with("OK SAY ") {
            acks += 1;
        } else {
            assert!(line.starts_with("MSG r7 "), "{line:?}");
            msgs.push(line);
        }
    }
    for (i, msg) in msgs.iter().enumerate() {
        assert!(
            msg.ends_with(&format!(" wes wß {i} 日本語")),
            "{i}: {msg:?}"
        );
    }
    // The observer: all of them, each in order of its sender.
    let mut seen = (0, 0);
    for _ in 0..2 * EACH {
        let (_, text) = observer.read_frame().await;
        let text = String::from_utf8(text).unwrap();
        if text.ends_with(&format!(" wes wß {} 日本語", seen.0)) {
            seen.0 += 1;
        } else {
            assert!(
                text.ends_with(&format!(" tcp tç {} 😀", seen.1)),
                "{text:?}"
            );
            seen.1 += 1;
        }
    }
    server.stop().await.unwrap();
}

/// A WebSocket member that stops reading lags, then catches up from the store: what reaches
/// it on every path (live batches, `LAGGED`, the catch-up's pages, its own ack) is whole
/// text frames, every message once, in order, never its own.
#[tokio::test]
async fn a_slow_websocket_member_lags_then_catches_up_in_frames() {
    const TOTAL: usize = 2000;
    let config = linechat::Config {
        outbound_limit: 256 * 1024,
        ..memory_config()
    };
    let server = TestServer::start_web_with(config).await;
    let mut talker = server.login("talker").await;
    talker.join("r").await;
    let mut slow = RawWs::connect(server.http_addr.unwrap()).await;
    slow.send_raw(
        &[
            client_frame(0x81, b"NICK slow"),
            client_frame(0x81, b"JOIN r"),
        ]
        .concat(),
    )
    .await;
    talker.expect("JOINED r slow").await;
    let payload = "ä".repeat(1500);
    let mut acked = common::talk_in_chunks(&mut talker, 0..TOTAL / 2, &payload).await;
    slow.send_raw(&client_frame(0x81, b"SAY from the back row"))
        .await;
    acked.extend(common::talk_in_chunks(&mut talker, TOTAL / 2..TOTAL, &payload).await);

    let (_, ok) = slow.until_close_or("OK JOIN r 0 0").await;
    assert_eq!(ok, "OK JOIN r 0 0");
    let (mut got, mut lagged, mut own_acks) = (Vec::new(), 0, 0);
    while got.len() < TOTAL || own_acks == 0 {
        let (opcode, text) = slow.read_frame().await;
        assert_eq!(opcode, 0x1);
        let line = String::from_utf8(text).expect("UTF-8 text frames");
        assert!(!line.contains('\n'), "one line a frame: {line:.80}");
        if line.starts_with("LAGGED r ") {
            lagged += 1;
        } else if line.starts_with("OK SAY ") {
            own_acks += 1;
        } else {
            let m = common::parse_message(&line);
            assert_eq!(
                (m.kind.as_str(), m.nick.as_str()),
                ("MSG", "talker"),
                "{line:.80}"
            );
            assert_eq!(m.text, format!("{} {payload}", got.len()), "no gap");
            got.push(m.id);
        }
    }
    assert_eq!(got, acked);
    assert!(lagged > 0, "the slow member lagged");
    assert_eq!(own_acks, 1);
    server.stop().await.unwrap();
}

/// A client that pings and never reads is closed as too slow; what it then reads is whole
/// frames (the pong being written when the rest was dropped is finished), `BYE too slow`,
/// and close code 1008.
#[tokio::test]
async fn a_websocket_client_too_slow_for_its_pongs_gets_whole_frames_then_1008() {
    let config = linechat::Config {
        stall_timeout: std::time::Duration::from_secs(1),
        close_grace: std::time::Duration::from_secs(20),
        ..memory_config()
    };
    let server = TestServer::start_web_with(config).await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    let ping = client_frame(0x89, &[b'p'; 125]);
    let block: Vec<u8> = ping.repeat(8 * 1024);
    let flood = async {
        for _ in 0..100 {
            c.send_raw(&block).await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(4), flood).await;
    let mut pongs = 0;
    loop {
        match c.read_frame().await {
            (0xA, payload) => {
                assert_eq!(payload, [b'p'; 125]);
                pongs += 1;
            }
            (0x1, bye) => {
                assert_eq!(bye, b"BYE too slow");
                break;
            }
            other => panic!("{other:?} after {pongs} pongs"),
        }
    }
    assert!(pongs > 0);
    let (opcode, close) = c.read_frame().await;
    assert_eq!(
        (opcode, u16::from_be_bytes([close[0], close[1]])),
        (0x8, 1008)
    );
    drop(c);
    server.stop().await.unwrap();
}

/// An upgrade request that declares a body and never sends it: the server must neither hang
/// on it nor keep its shutdown waiting.
#[tokio::test]
async fn an_upgrade_request_with_a_body_never_sent_does_not_hold_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = web_server().await;
    let web = server.http_addr.unwrap();
    let mut socket = tokio::net::TcpStream::connect(web).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {web}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Content-Length: 10\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(common::PATIENCE, read_head(&mut socket))
        .await
        .expect("an answer");
    if head.starts_with("http/1.1 101") {
        // Then a session: its greeting.
        let mut first = [0u8; 2];
        tokio::time::timeout(common::PATIENCE, socket.read_exact(&mut first))
            .await
            .expect("a greeting after the 101")
            .unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), server.stop())
        .await
        .expect("the server stops")
        .unwrap();
}

/// A frame far over `--max-line` costs flood control a line per line's worth of bytes, as
/// an over-long line does on TCP: big frames are not read faster than lines.
#[tokio::test]
async fn big_frames_are_read_no_faster_than_lines() {
    let mut config = memory_config();
    config.max_line = 64;
    config.rate = 1;
    config.burst = 2;
    let server = TestServer::start_web_with(config).await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    // 60 KB each: some 900 lines' worth, so at a line a second the PING is not read within
    // the test.
    let big = client_frame(0x81, &[b'x'; 60_000]);
    c.send_raw(&[big.clone(), big, client_frame(0x81, b"PING 1")].concat())
        .await;
    assert!(c.read_frame().await.1.starts_with(b"ERR LINE_TOO_LONG "));
    c.assert_no_answer_for(
        std::time::Duration::from_secs(3),
        "120 KB were read at once at a line a second",
    )
    .await;
    server.stop().await.unwrap();
}

/// Many frames right behind the upgrade request, far more than the request head may be:
/// every one is read, in order, whatever hyper had buffered.
#[tokio::test]
async fn many_frames_sent_right_behind_the_upgrade_request_are_all_read() {
    let server = web_server().await;
    let mut early = client_frame(0x81, b"NICK eager");
    for i in 0..3000 {
        early.extend(client_frame(0x81, format!("PING {i:0100}").as_bytes()));
    }
    let mut c = RawWs::connect_sending(server.http_addr.unwrap(), &early).await;
    assert_eq!(c.read_frame().await, (0x1, b"OK NICK eager".to_vec()));
    for i in 0..3000 {
        let want = format!("PONG {i:0100}");
        assert_eq!(c.read_frame().await, (0x1, want.into_bytes()));
    }
    server.stop().await.unwrap();
}

/// At shutdown every command already read is refused with `ERR SHUTTING_DOWN`; WebSocket
/// pings, pongs and fragments are not commands and get no `ERR` each.
#[tokio::test]
async fn at_shutdown_only_buffered_commands_are_refused() {
    let mut config = memory_config();
    config.rate = 1;
    config.burst = 1;
    let server = TestServer::start_web_with(config).await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    let mut input = client_frame(0x81, b"PING a");
    for _ in 0..20 {
        input.extend(client_frame(0x89, b"ping"));
        input.extend(client_frame(0x8A, b"pong"));
    }
    input.extend(client_frame(0x01, b"PING "));
    input.extend(client_frame(0x80, b"b"));
    c.send_raw(&input).await;
    // Over its rate after `PING a`: the rest waits, read but not done.
    assert_eq!(c.read_frame().await, (0x1, b"PONG a".to_vec()));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopping = tokio::spawn(server.stop());
    let (texts, code) = c.until_close().await;
    assert_eq!(texts.len(), 2, "one ERR for the one command: {texts:?}");
    assert!(texts[0].starts_with("ERR SHUTTING_DOWN "), "{texts:?}");
    assert_eq!(texts[1], "BYE server shutting down");
    assert_eq!(code, 1001);
    drop(c);
    stopping.await.unwrap().unwrap();
}

/// A client whose frame is too big to read is told so (`BYE`, then close code 1009) even
/// while it is still sending that frame: the server reads and drops the rest rather than
/// closing with unread input, whose reset could destroy the client's copy of the close.
#[tokio::test]
async fn a_client_still_sending_a_huge_frame_gets_the_close_frame() {
    let mut config = memory_config();
    config.max_line = 64;
    let server = TestServer::start_web_with(config).await;
    for _ in 0..3 {
        let c = RawWs::connect(server.http_addr.unwrap()).await;
        let huge = client_frame(0x81, &vec![b'x'; 4 << 20]);
        let (read, mut write) = c.socket.into_split();
        let sending = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = write.write_all(&huge).await;
            write
        });
        // Late, so that the server has long answered when the reads come.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let write = sending.await.unwrap();
        let mut c = RawWs {
            socket: read.reunite(write).unwrap(),
        };
        let (texts, code) = c.until_close().await;
        assert!(
            texts[0].starts_with("BYE bad WebSocket frames: "),
            "{texts:?}"
        );
        assert_eq!(code, 1009);
    }
    server.stop().await.unwrap();
}

/// A client in the middle of a message in fragments is still sending, as one in the middle
/// of a line is: closed by the server, it is read until it closes too (its close frame), not
/// cut off with a reset by the fragments still coming.
#[tokio::test]
async fn a_client_mid_message_is_read_until_it_closes_too() {
    use tokio::io::AsyncReadExt;
    let config = linechat::Config {
        login_timeout: std::time::Duration::from_secs(1),
        close_grace: std::time::Duration::from_secs(10),
        ..memory_config()
    };
    let server = TestServer::start_web_with(config).await;
    let mut c = RawWs::connect(server.http_addr.unwrap()).await;
    c.send_raw(&client_frame(0x01, b"NI")).await;
    let (texts, code) = c.until_close().await;
    assert!(texts[0].starts_with("BYE login timeout"), "{texts:?}");
    assert_eq!(code, 1008);
    // The server waits for the rest (its side is closed, it still reads): what the client
    // sends now is taken, not answered with a reset.
    use tokio::io::AsyncWriteExt;
    let later = [
        client_frame(0x80, b"CK late"),
        client_frame(0x89, b"still here"),
        client_frame(0x88, b"\x03\xe8"),
    ];
    for frame in later {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        c.socket
            .write_all(&frame)
            .await
            .expect("the server still reads");
    }
    let mut byte = [0u8; 1];
    let end = tokio::time::timeout(common::PATIENCE, c.socket.read(&mut byte)).await;
    assert_eq!(end.expect("the server closes").unwrap(), 0);
    server.stop().await.unwrap();
}
