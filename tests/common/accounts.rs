//! Helpers for tests of accounts: a registered client, and `linechat account`.

use std::io::Write;
use std::process::Stdio;

use super::binary::{linechat, Binary};
use super::Client;

/// A client that took `name` and registered it with `password`.
pub async fn registered(addr: std::net::SocketAddr, name: &str, password: &str) -> Client {
    let mut c = Client::login(addr, name).await;
    c.send(&format!("REGISTER {password}")).await;
    c.expect(&format!("OK REGISTER {name}")).await;
    c
}

/// Runs `linechat <args> account <action>` with `stdin`; returns its standard output.
pub fn account(args: &[&str], action: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = linechat()
        .args(args)
        .arg("account")
        .args(action)
        .env_remove("DATABASE_URL")
        .env("LINECHAT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command refused before it reads its input has closed it: that is no failure here.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The binary on the database at `url`, logging at `log` (`LINECHAT_LOG`), staying root (the
/// test cluster's socket is for root and postgres only).
pub fn server_logging_at(url: &str, log: &str) -> Binary {
    server_logging_as(url, log, "text")
}

/// As [`server_logging_at`], logging in `format` (`--log-format`).
pub fn server_logging_as(url: &str, log: &str, format: &str) -> Binary {
    Binary::start(
        linechat()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--rate",
                "0",
                "--database-url",
                url,
            ])
            .args(["--user", "root", "--log-format", format])
            .env("LINECHAT_LOG", log),
    )
}
