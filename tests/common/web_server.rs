//! An in-process server with an HTTP listener (the page and `/ws`) next to its TCP one, on
//! addresses a test may choose (unlike [`super::TestServer::start_web_with`], always port 0),
//! so that a restarted server comes back where a page expects it, with or without its HTTP
//! listener.

use std::net::SocketAddr;

use linechat::http::HttpListener;
use linechat::server::{Listeners, Server};
use linechat::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Client, PATIENCE};

pub struct WebServer {
    /// The line protocol's TCP address.
    pub addr: SocketAddr,
    /// The HTTP address: the page at `/`, the WebSocket at `/ws`.
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl WebServer {
    /// Both listeners on free loopback ports.
    pub async fn start(config: Config) -> WebServer {
        let any = "127.0.0.1:0".parse().unwrap();
        WebServer::start_on(config, any, Some(any)).await
    }

    /// Listeners on the given addresses (port 0: any free port); without `http`, the TCP
    /// listener only (`http` then repeats `tcp`, and nothing listens there for HTTP).
    pub async fn start_on(config: Config, tcp: SocketAddr, http: Option<SocketAddr>) -> WebServer {
        let plain = TcpListener::bind(tcp).await.expect("bind the TCP listener");
        let addr = plain.local_addr().unwrap();
        let http_listener = match http {
            Some(at) => Some(TcpListener::bind(at).await.expect("bind the HTTP listener")),
            None => None,
        };
        let http = match &http_listener {
            Some(l) => l.local_addr().unwrap(),
            None => addr,
        };
        let server = Server::start(config).await.expect("server starts");
        let listeners = Listeners {
            plain: Some(plain),
            tls: None,
            http: http_listener.map(|listener| HttpListener {
                listener,
                certificates: None,
            }),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listeners, async {
            let _ = stopped.await;
        }));
        WebServer {
            addr,
            http,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The page's address with `query` (`nick=alice&room=4`, or empty).
    pub fn page_url(&self, query: &str) -> String {
        format!("http://{}/?{query}", self.http)
    }

    /// A line-protocol client that has chosen `nick`.
    pub async fn login(&self, nick: &str) -> Client {
        Client::login(self.addr, nick).await
    }

    /// A graceful shutdown (every client gets `BYE`); waits for the server to return.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
