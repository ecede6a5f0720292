//! The HTTP listener's other routes, and readiness: the page and its headers, `/healthz`
//! following the store (503 while its PostgreSQL is down, 200 once it is back), and the
//! binary taking no connection, on any port, before it can serve it.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::process::Stdio;
use std::time::Instant;

use common::binary::linechat;
use common::pg::{self, DirGuard};
use common::web::get;
use common::{memory_config, TestServer, PATIENCE};

#[tokio::test]
async fn the_page_is_served_with_a_policy_that_runs_only_its_own_script() {
    let server = TestServer::start_web_with(memory_config()).await;
    let web = server.http_addr.unwrap();
    let page = get(web, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let script = get(web, "/app.js").await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(get(web, "/style.css").await.status, 200);
    assert_eq!(get(web, "/nothing-here").await.status, 404);
    // Not an upgrade request: refused, not crashed.
    assert_eq!(get(web, "/ws").await.status / 100, 4);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn healthz_is_ok_with_a_memory_store() {
    let server = TestServer::start_web_with(memory_config()).await;
    let health = get(server.http_addr.unwrap(), "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    server.stop().await.unwrap();
}

/// A load balancer's probe: 503 while the database is down, 200 once it is back, with no
/// restart of the server.
#[tokio::test]
async fn healthz_follows_the_database() {
    let dir = pg::temp_dir("healthz");
    let _guard = DirGuard(dir.clone());
    let (cluster, config) =
        pg::own_cluster(&dir, std::time::Duration::from_secs(2), memory_config()).await;
    let server = TestServer::start_web_with(config).await;
    let web = server.http_addr.unwrap();
    assert_eq!(get(web, "/healthz").await.status, 200);

    let stopped = tokio::task::spawn_blocking(move || {
        let mut c = cluster.command("pg_ctl");
        c.args(["stop", "-m", "fast", "-D"]).arg(cluster.pgdata());
        assert!(c.output().unwrap().status.success());
        cluster.detach();
    });
    stopped.await.unwrap();
    let down = until_status(web, 503).await;
    assert!(down.body.starts_with("not ready: "), "{}", down.body);

    let cluster = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || pg::start_cluster(&dir)
    })
    .await
    .unwrap();
    until_status(web, 200).await;
    server.stop().await.unwrap();
    drop(cluster);
}

/// Polls `/healthz` until it answers `status` (its answer is reused for a second).
async fn until_status(web: SocketAddr, status: u16) -> common::web::Response {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let health = get(web, "/healthz").await;
        if health.status == status {
            return health;
        }
        assert!(Instant::now() < deadline, "healthz stays {health:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// While the server starts its own PostgreSQL (seconds: initdb), both its ports refuse
/// connections; the first connection it takes is greeted at once.
#[test]
fn no_port_takes_a_connection_before_the_server_can_serve_it() {
    let dir = pg::temp_dir("readiness");
    let _guard = DirGuard(dir.clone());
    let line_port = free_port();
    let http_port = free_port();
    let mut server = linechat()
        .args(["--data-dir"])
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{line_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .env("LINECHAT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE * 3;
    let mut refused = 0;
    let greeting = loop {
        assert!(Instant::now() < deadline, "the server never listened");
        match StdStream::connect(("127.0.0.1", line_port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused += 1;
                // The HTTP port is no readier than the line port.
                if let Err(e) = StdStream::connect(("127.0.0.1", http_port)) {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("connect: {e}"),
            Ok(stream) => {
                stream.set_read_timeout(Some(PATIENCE)).unwrap();
                let mut line = String::new();
                BufReader::new(stream).read_line(&mut line).unwrap();
                break line;
            }
        }
    };
    assert!(
        refused > 0,
        "the port took connections before the store was open"
    );
    assert!(greeting.starts_with("HELLO "), "{greeting}");
    let mut health = StdStream::connect(("127.0.0.1", http_port)).unwrap();
    std::io::Write::write_all(
        &mut health,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    health.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(server.wait().unwrap().success());
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
