//! A storm of password logins beside a chat load (`latency --logins N`): N logins a second,
//! each a new connection that logs in to a registered name and quits. It shows what argon2
//! checks cost the chat traffic of the same server (its latency next to a run without).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{watch, Mutex};

use crate::report::Percentiles;

/// Names the storm logs in to, in turn (a name held by a live login would be refused).
const ACCOUNTS: usize = 64;
const PASSWORD: &str = "bench-login-password";

/// What the storm did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoginResult {
    pub per_second: f64,
    pub logged_in: u64,
    /// Refused (`SERVER_BUSY`, `TOO_MANY_GUESSES`, a name still held) or failed.
    pub refused: u64,
    /// From connecting to `OK NICK`.
    pub login_us: Percentiles,
}

/// A storm running in the background until [`Storm::stop`].
pub struct Storm {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<LoginResult>>,
}

fn name(i: usize) -> String {
    format!("benchlogin{i}")
}

/// One line from the server.
async fn reply(lines: &mut tokio::io::Lines<BufReader<TcpStream>>) -> Result<String> {
    lines.next_line().await?.context("closed")
}

/// Registers the storm's names (a name registered by an earlier run is kept).
async fn prepare(addr: &str) -> Result<()> {
    for i in 0..ACCOUNTS {
        let mut lines = BufReader::new(TcpStream::connect(addr).await?).lines();
        reply(&mut lines).await?;
        let n = name(i);
        let setup = format!("NICK {n}\nREGISTER {PASSWORD}\nQUIT\n");
        lines
            .get_mut()
            .get_mut()
            .write_all(setup.as_bytes())
            .await?;
        let nick = reply(&mut lines).await?;
        if nick.starts_with("ERR NICK_REGISTERED") {
            continue;
        }
        let registered = reply(&mut lines).await?;
        if !registered.starts_with("OK REGISTER") {
            bail!("cannot register {n}: {nick} / {registered}");
        }
    }
    Ok(())
}

/// One login: connect, `NICK <name> <password>`, `QUIT`; its time to `OK NICK`.
async fn login(addr: &str, i: usize) -> Result<Option<Duration>> {
    let start = Instant::now();
    let mut lines = BufReader::new(TcpStream::connect(addr).await?).lines();
    reply(&mut lines).await?;
    let line = format!("NICK {} {PASSWORD}\n", name(i));
    lines.get_mut().get_mut().write_all(line.as_bytes()).await?;
    let answer = reply(&mut lines).await?;
    let took = start.elapsed();
    lines.get_mut().get_mut().write_all(b"QUIT\n").await?;
    while lines.next_line().await?.is_some() {}
    Ok(answer.starts_with("OK NICK").then_some(took))
}

impl Storm {
    /// Registers the names, then starts `per_second` logins a second.
    pub async fn start(addr: &str, per_second: f64) -> Result<Storm> {
        prepare(addr).await?;
        let (stop, mut stopped) = watch::channel(false);
        let addr = addr.to_string();
        let task = tokio::spawn(async move {
            let times = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
            let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            let mut running = tokio::task::JoinSet::new();
            let mut i = 0;
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = ticks.tick() => {}
                }
                let (addr, times, refused) = (addr.clone(), times.clone(), refused.clone());
                let who = i % ACCOUNTS;
                i += 1;
                running.spawn(async move {
                    match login(&addr, who).await {
                        Ok(Some(took)) => {
                            let _ = times.lock().await.record(took.as_micros() as u64);
                        }
                        _ => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
            let times = times.lock().await;
            Ok(LoginResult {
                per_second,
                logged_in: times.len(),
                refused: refused.load(std::sync::atomic::Ordering::Relaxed),
                login_us: Percentiles::of(&times),
            })
        });
        Ok(Storm { stop, task })
    }

    /// Stops starting logins, waits for those under way, and reports.
    pub async fn stop(self) -> Result<LoginResult> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}
