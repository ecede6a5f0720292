//! The HTTP side from a test: a WebSocket client that speaks the protocol a frame per line
//! (tokio-tungstenite), and a plain HTTP/1.1 GET over a TCP socket.

#![allow(dead_code)]

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::PATIENCE;

/// What a WebSocket client saw, frame by frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    Close(Option<(u16, String)>),
    /// The stream ended (or broke) without a close frame.
    End,
}

/// A protocol client over `/ws`.
pub struct WsClient {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `ws://addr/ws`; panics if the upgrade is refused.
    pub async fn connect(addr: SocketAddr) -> WsClient {
        WsClient::connect_with(addr, &[]).await.expect("upgrade")
    }

    /// Connects with extra request headers; the refusal's status if the upgrade fails.
    pub async fn connect_with(
        addr: SocketAddr,
        headers: &[(&'static str, &str)],
    ) -> Result<WsClient, u16> {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(WsClient { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    }

    /// Connects and reads the `HELLO`.
    pub async fn greeted(addr: SocketAddr) -> WsClient {
        let mut client = WsClient::connect(addr).await;
        let hello = client.line().await;
        assert!(hello.starts_with("HELLO "), "{hello}");
        client
    }

    /// Connects, reads the `HELLO` and takes `nick`.
    pub async fn login(addr: SocketAddr, nick: &str) -> WsClient {
        let mut client = WsClient::greeted(addr).await;
        client.send(&format!("NICK {nick}")).await;
        assert_eq!(client.line().await, format!("OK NICK {nick}"));
        client
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .unwrap();
    }

    pub async fn send_message(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }

    /// The next thing seen (pings and pongs skipped).
    pub async fn next(&mut self) -> Seen {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a frame in time");
            return match next {
                Some(Ok(Message::Text(text))) => Seen::Text(text.to_string()),
                Some(Ok(Message::Close(frame))) => Seen::Close(
                    frame.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())),
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => Seen::End,
            };
        }
    }

    /// The next text frame; panics on anything else.
    pub async fn line(&mut self) -> String {
        match self.next().await {
            Seen::Text(text) => text,
            other => panic!("expected a line, got {other:?}"),
        }
    }

    /// Lines up to and including the first that starts with `prefix`.
    pub async fn until(&mut self, prefix: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let done = line.starts_with(prefix);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
}

/// An HTTP response as a test reads it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header lines as sent, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over a fresh connection (`Connection: close`), read to its end.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut raw))
        .await
        .expect("a response in time")
        .unwrap();
    parse_response(&String::from_utf8(raw).expect("UTF-8 response"))
}

fn parse_response(raw: &str) -> Response {
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Response {
        status: status.parse().unwrap(),
        headers,
        body: body.to_owned(),
    }
}
