//! A WebSocket as a carrier of protocol lines: every text frame is one line, in each
//! direction, without its line end. The session above it is the same as for TCP; only the
//! framing differs, and it differs here and in [`frames`].
//!
//! The handshake is answered here ([`upgrade`]); after it the connection is a byte stream
//! read and written by the line reader and writer like any other, with frames for lines:
//! input is decoded by a [`FrameDecoder`], and output is queued already framed. Server frames
//! are unmasked, so a line framed once is the same bytes for every recipient, and a room's
//! batch goes to WebSocket members as one shared buffer and one write each, as it does to
//! TCP members (tungstenite, which axum offers, copies and frames every message for every
//! connection and cannot share them).

pub mod frames;

use std::net::SocketAddr;
use std::pin::Pin;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};

pub use frames::FrameDecoder;

/// Close codes (RFC 6455, 7.4.1) a session ends with.
pub mod close_code {
    /// `QUIT`, end of input, and the like: the conversation is over.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Closed for the client's behaviour: too slow, too many errors, no name in time.
    pub const POLICY: u16 = 1008;
}

/// One upgraded WebSocket connection: the bytes under its frames, and the framing's state.
pub struct WebSocketConn {
    io: TokioIo<Upgraded>,
    peer: SocketAddr,
    /// Reads the client's frames out of what the line reader has read.
    pub(crate) decoder: FrameDecoder,
    /// The reason of the last `BYE` queued, for the close frame that follows it.
    pub(crate) farewell: Option<Bytes>,
}

impl WebSocketConn {
    /// `max_line` as on TCP; a frame or message over `max_message` ends the connection.
    pub fn new(
        io: Upgraded,
        peer: SocketAddr,
        max_line: usize,
        max_message: usize,
    ) -> WebSocketConn {
        WebSocketConn {
            io: TokioIo::new(io),
            peer,
            decoder: FrameDecoder::new(max_line, max_message),
            farewell: None,
        }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The bytes under the frames.
    pub fn io(&mut self) -> Pin<&mut TokioIo<Upgraded>> {
        Pin::new(&mut self.io)
    }
}

/// Answers a WebSocket handshake (RFC 6455, 4.2): the 101 response that switches the
/// connection over, or the refusal that says why the request is not one.
pub fn upgrade(headers: &HeaderMap) -> Response {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return (
            StatusCode::BAD_REQUEST,
            "this is a WebSocket endpoint: connect with a WebSocket client\n",
        )
            .into_response();
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "WebSocket version 13 only\n",
        )
            .into_response();
    }
    // A nonce of 16 bytes in base64 (RFC 6455, 4.1); anything else is not a WebSocket client.
    let nonce = headers.get(header::SEC_WEBSOCKET_KEY).filter(|key| {
        base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .is_ok_and(|nonce| nonce.len() == 16)
    });
    let Some(key) = nonce else {
        return (
            StatusCode::BAD_REQUEST,
            "no Sec-WebSocket-Key of 16 bytes in base64\n",
        )
            .into_response();
    };
    let accept = HeaderValue::from_str(&accept_key(key.as_bytes())).expect("base64 is ASCII");
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_the_rfcs() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_handshake_needs_the_upgrade_headers_version_13_and_a_key() {
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let response = upgrade(&headers(&good));
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let status = |pairs: &[(&'static str, &'static str)]| upgrade(&headers(pairs)).status();
        assert_eq!(status(&good[1..]), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(&[good[0], good[1], ("sec-websocket-version", "8"), good[3]]),
            StatusCode::UPGRADE_REQUIRED
        );
        assert_eq!(status(&good[..3]), StatusCode::BAD_REQUEST);
        for key in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "c2hvcnQ=",
            "not base64 at all!!!!!!=",
        ] {
            let pairs = [good[0], good[1], good[2], ("sec-websocket-key", key)];
            assert_eq!(status(&pairs), StatusCode::BAD_REQUEST, "{key:?}");
        }
    }
}
