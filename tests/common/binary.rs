//! The real `linechat` binary as a child process: started on the flags a test gives it, its
//! log kept, signalled with `kill`, waited for, and killed on drop if a test fails half-way.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::PATIENCE;

/// The `linechat` binary of this build, for a test to add its flags and environment to.
pub fn linechat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_linechat"))
}

/// A running server; killed (and waited for) on drop unless it has already exited.
pub struct Binary {
    child: Child,
    /// The plain listener's address (the TLS one's when the plain listener is off).
    pub addr: SocketAddr,
    /// The TLS listener's address, if the server has one.
    pub tls_addr: Option<SocketAddr>,
    /// The HTTP listener's address (the page, /ws, /healthz, /metrics), if it has one. A port
    /// of the system's choosing unless the test gave `--http-listen`.
    pub http_addr: Option<SocketAddr>,
    /// The open-file limit the server logged before listening, if it did.
    files: Option<u64>,
    /// Everything it logged so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    /// Starts `command` (from [`linechat`]) with `LINECHAT_LOG=info` (unless the test set it),
    /// stdin and stdout null,
    /// and returns once it logs where it listens. Its log is drained from then on, so the
    /// server never blocks on a full pipe.
    pub fn start(command: &mut Command) -> Binary {
        if !command.get_envs().any(|(k, _)| k == "LINECHAT_LOG") {
            command.env("LINECHAT_LOG", "info");
        }
        // Never the default port: tests run side by side.
        let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
        let http_listen = args
            .windows(2)
            .find(|w| w[0] == "--http-listen")
            .map(|w| w[1].clone())
            .or_else(|| {
                command
                    .get_envs()
                    .find(|(k, _)| *k == "LINECHAT_HTTP_LISTEN")
                    .and_then(|(_, v)| v.map(|v| v.to_owned()))
            });
        if http_listen.is_none() {
            command.env("LINECHAT_HTTP_LISTEN", "127.0.0.1:0");
        }
        let http_off = http_listen.is_some_and(|v| v == "off");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut files = None;
        let mut tls_addr = None;
        let addr = loop {
            let line = match lines.next() {
                Some(line) => line.unwrap(),
                None => panic!(
                    "the server ended before listening: {:?}",
                    log.lock().unwrap()
                ),
            };
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("open-file limit: ").nth(1) {
                files = rest.split(' ').next().and_then(|n| n.parse().ok());
            }
            if let Some(rest) = line.split("listening for TLS on ").nth(1) {
                tls_addr = Some(rest.split(';').next().unwrap().parse().unwrap());
            }
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split(';').next().unwrap().parse().unwrap();
            }
            if line.contains("plain listener off") {
                break tls_addr.expect("a TLS listener is logged before the plain one is off");
            }
        };
        // The page's line comes right after, when there is an HTTP listener.
        let mut http_addr = None;
        if !http_off {
            for line in lines.by_ref() {
                let line = line.unwrap();
                log.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("web page at ").nth(1) {
                    let url = rest.split(' ').next().unwrap();
                    let host = url.split("://").nth(1).unwrap().trim_end_matches('/');
                    http_addr = Some(host.parse().unwrap());
                    break;
                }
            }
        }
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Binary {
            child,
            addr,
            tls_addr,
            http_addr,
            files,
            log,
        }
    }

    /// The open-file limit the server logged at start-up; panics if it logged none.
    pub fn open_file_limit(&self) -> u64 {
        self.files.unwrap_or_else(|| {
            panic!(
                "the server logs its open-file limit before listening: {:?}",
                self.log()
            )
        })
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the server has logged a line containing `needle` and returns it; panics,
    /// showing the log, if that takes longer than [`PATIENCE`] (a guard against hangs).
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not log {needle:?}: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (as `kill` takes it: `-TERM`, `-KILL`, ...) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the server to exit. Cancelling it (a timeout) leaves the server to drop.
    pub async fn wait(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many files the server has open: its listener, its runtime's, and one socket for
    /// each connection it holds (the store's too, with PostgreSQL).
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// The server's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Only if the test failed before the server exited: do not leave one behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
