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
    /// Connects and upgrades by hand, checking the server's `Sec-WebSocket-Accept`.
    async fn connect(addr: std::net::SocketAddr) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(socket.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
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
