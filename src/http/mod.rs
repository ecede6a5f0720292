//! The HTTP listener (`--http-listen`): the chat page, `/ws` (a WebSocket whose text frames
//! are protocol lines, served by the same [`session`](crate::session) code as TCP),
//! `/healthz` for a load balancer's probe, and `/metrics` for Prometheus.
//!
//! Each accepted connection went through the server's admission like any other (its ticket
//! counts toward `--max-connections` and `--max-per-ip`), and is served by hyper with axum's
//! router. A WebSocket upgrade hands the ticket on to its session, so a browser's chat
//! connection costs one place, as a TCP one does.

mod health;
pub mod page;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Extension, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Ticket;
use crate::hub::Hub;
use crate::session;
use crate::tls::Certificates;
use crate::transport::Transport;
use websocket::WebSocketConn;

pub use health::Readiness;

/// The HTTP listener, and the certificate it serves https/wss with, if TLS is configured.
pub struct HttpListener {
    pub listener: TcpListener,
    pub certificates: Option<Arc<Certificates>>,
}

/// The largest request head (request line and headers) read: a browser's is a few hundred
/// bytes; hyper's own floor is 8 KiB.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// What the routes share: the hub, the server's shutdown signal and its session tracker.
#[derive(Clone)]
pub struct Shared {
    pub hub: Arc<Hub>,
    pub stopping: CancellationToken,
    pub sessions: TaskTracker,
    pub readiness: Arc<Readiness>,
}

/// One accepted HTTP connection: its client, when it was accepted, and its admission
/// ticket, which a WebSocket upgrade takes for its session.
struct Accepted {
    peer: SocketAddr,
    at: Instant,
    ticket: Mutex<Option<Ticket>>,
}

/// The routes.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/ws", get(websocket_session))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Serves HTTP on one accepted connection (plain, or TLS after its handshake) until it
/// closes, or the server stops (then requests in progress finish; WebSocket sessions close
/// as every session does).
pub async fn serve_connection<IO>(
    router: Router,
    io: IO,
    peer: SocketAddr,
    at: Instant,
    ticket: Ticket,
    shared: &Shared,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let accepted = Arc::new(Accepted {
        peer,
        at,
        ticket: Mutex::new(Some(ticket)),
    });
    let service = router.layer(axum::Extension(accepted));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout(shared.hub.config.login_timeout))
        .max_buf_size(MAX_REQUEST_HEAD);
    let connection = http
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        done = connection.as_mut() => {
            if let Err(e) = done {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        () = shared.stopping.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let grace = shared.hub.config.close_grace;
            let _ = tokio::time::timeout(grace, connection).await;
        }
    }
}

/// How long a client may take to send a request's head: the login timeout, as a line
/// client's first name must come within it (never unlimited: an idle HTTP connection holds
/// its place).
fn header_timeout(login_timeout: Duration) -> Duration {
    if login_timeout.is_zero() {
        Duration::from_secs(60)
    } else {
        login_timeout
    }
}

/// `/ws`: upgrades to a WebSocket and runs a session on it, with the connection's ticket.
async fn websocket_session(
    State(shared): State<Shared>,
    Extension(accepted): Extension<Arc<Accepted>>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if !same_origin(headers) {
        return (
            StatusCode::FORBIDDEN,
            "a page from another site may not open a chat connection here\n",
        )
            .into_response();
    }
    // HTTP/1.0 cannot switch protocols (hyper would send the 101, then not upgrade).
    if request.version() < Version::HTTP_11 {
        return (
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake needs HTTP/1.1\n",
        )
            .into_response();
    }
    let switch = websocket::upgrade(headers);
    if switch.status() != StatusCode::SWITCHING_PROTOCOLS {
        return switch;
    }
    let ticket = accepted
        .ticket
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let (Some(ticket), false) = (ticket, shared.stopping.is_cancelled()) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down\n",
        )
            .into_response();
    };
    let config = &shared.hub.config;
    // Frames a little over the line limit are read and refused (ERR LINE_TOO_LONG, as on
    // TCP); far larger ones end the connection without being buffered whole.
    let (max_line, max_message) = (
        config.max_line,
        config.max_line.saturating_mul(4).max(64 * 1024),
    );
    // Counted as a session from now, not from the upgrade's completion: shutdown waits for it.
    let tracked = shared.sessions.token();
    let (peer, at) = (accepted.peer, accepted.at);
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(io) => {
                let socket = WebSocketConn::new(io, peer, max_line, max_message);
                let transport = Transport::websocket(socket);
                session::run(shared.hub, transport, peer, at, shared.stopping, ticket).await;
            }
            Err(e) => tracing::debug!(%peer, error = %e, "WebSocket upgrade failed"),
        }
        drop(tracked);
    });
    switch
}

/// True unless the request comes from a page of another site. A browser sends `Origin` with
/// every WebSocket request; a page elsewhere must not use a visitor's browser to reach a
/// server only that visitor can reach (one on their loopback or their network). Clients that
/// are not browsers send no `Origin` and are let in.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// `/healthz`: 200 while the server can serve (the store answers), 503 otherwise.
async fn healthz(State(shared): State<Shared>) -> Response {
    if shared.stopping.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match shared.readiness.check(shared.hub.store.as_ref()).await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// `/metrics`: the Prometheus text format.
async fn metrics(State(shared): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(&shared.hub),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_pages_of_this_site_may_open_a_websocket() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:7780")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:7780"),
            ("origin", "http://127.0.0.1:7780")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "Chat.Example:443"),
            ("origin", "https://chat.example:443")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:7780"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:7780"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:7780"
        )])));
    }
}
