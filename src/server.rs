//! The accept loop and graceful shutdown.

use std::future::Future;
use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::Hub;
use crate::session;

/// Serves clients on `listener` until `shutdown` completes; then stops accepting, says
/// `BYE` to every client (after answering what each one already sent), and returns.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (hub, writer_task) = Hub::start(config);
    let stopping = CancellationToken::new();
    let sessions = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = tune(&stream, &hub.config) {
                        tracing::debug!(%peer, error = %e, "could not set socket options");
                    }
                    sessions.spawn(session::run(hub.clone(), stream, peer, stopping.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!(clients = sessions.len(), "shutting down");
    stopping.cancel();
    sessions.close();
    sessions.wait().await;
    // Sessions are gone; dropping the last writer handle lets the writer finish its queue.
    drop(hub);
    let _ = writer_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Low latency for small lines, and TCP keepalive to find peers that vanished without a FIN
/// (a netcat user is never expected to answer pings).
fn tune(stream: &TcpStream, config: &Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(config.keepalive)
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}
