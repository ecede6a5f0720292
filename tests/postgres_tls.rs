//! An external PostgreSQL over TLS (`--database-url ...?sslmode=...`): a real PostgreSQL with
//! `ssl = on`, a certificate for `localhost` from a CA made here, a password (SCRAM), and a
//! `pg_hba.conf` that takes TCP connections only over TLS (`hostssl`), so plaintext is
//! refused and every test that reaches it shows TLS at work.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use common::binary::{linechat, Binary};
use common::{memory_config, pg, TestServer, PATIENCE};
use linechat::managed_postgres::ManagedPostgres;
use linechat::{Config, StoreKind};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// The database user's password: it must show up in no log.
const PASSWORD: &str = "s3cret-Tls-pw";

/// The TLS-only cluster of this test binary.
struct TlsCluster {
    cluster: ManagedPostgres,
    port: u16,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// Another CA, which signed nothing the server shows.
    other_ca: PathBuf,
}

static CLUSTER: OnceLock<TlsCluster> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes `text` as a file of the user that owns `pgdata`, readable by it alone (PostgreSQL
/// refuses a key file others may read).
fn write_for_postgres(pgdata: &Path, name: &str, text: &str) {
    let path = pgdata.join(name);
    std::fs::write(&path, text).unwrap();
    let owner = std::fs::metadata(pgdata).unwrap();
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// A free TCP port on loopback (free a moment ago).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the cluster as the server's zero-config mode does (initdb, its Unix socket), sets
/// the password, then restarts it with TLS on a TCP port.
fn start_tls_cluster() -> TlsCluster {
    let dir = pg::temp_dir("pgtls");
    let mut cluster = pg::start_cluster(&dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = cluster
            .pg_config("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD '{PASSWORD}'",
                linechat::managed_postgres::SUPERUSER
            ))
            .await
            .unwrap();
    });
    cluster.stop().unwrap();

    let ca = ca("linechat test CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let pgdata = cluster.pgdata().to_owned();
    write_for_postgres(&pgdata, "server.crt", &cert.pem());
    write_for_postgres(&pgdata, "server.key", &key.serialize_pem());
    // The Unix socket for the test's own checks; TCP only over TLS, with the password.
    write_for_postgres(
        &pgdata,
        "pg_hba.conf",
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostssl all all ::1/128 scram-sha-256\n",
    );
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, self::ca("another CA").pem()).unwrap();

    let port = free_port();
    let status = cluster
        .command("pg_ctl")
        .args(["start", "-w", "-t", "120", "-D"])
        .arg(&pgdata)
        .arg("-l")
        .arg(pgdata.join("tls.log"))
        .arg("-o")
        .arg(format!(
            "-c listen_addresses=localhost -c port={port} -c ssl=on \
             -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        ))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "PostgreSQL with TLS starts");
    TlsCluster {
        cluster,
        port,
        ca: ca_file,
        other_ca,
    }
}

impl TlsCluster {
    /// A connection string for `db` over the Unix socket, for the test's own checks. The
    /// socket's name follows the TCP port, which differs from the zero-config one.
    fn socket_url(&self, db: &str) -> String {
        let managed = self.cluster.url(db);
        let url = managed.replace(" port=5432 ", &format!(" port={} ", self.port));
        assert_ne!(url, managed, "the managed cluster's url names its port");
        url
    }
}

/// The cluster, and a fresh database in it.
async fn fresh_database() -> (&'static TlsCluster, String) {
    let tls = tokio::task::spawn_blocking(|| CLUSTER.get_or_init(start_tls_cluster))
        .await
        .unwrap();
    let name = format!(
        "tls{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let admin: tokio_postgres::Config = tls.socket_url("postgres").parse().unwrap();
    linechat::store::postgres::ensure_database(&admin, &name)
        .await
        .unwrap();
    (tls, name)
}

/// A URL for database `db` as `host`, with `params` (`sslmode=...&...`).
fn url(tls: &TlsCluster, host: &str, db: &str, params: &str) -> String {
    format!(
        "postgresql://{}:{PASSWORD}@{host}:{}/{db}?{params}",
        linechat::managed_postgres::SUPERUSER,
        tls.port
    )
}

fn config(url: String) -> Config {
    Config {
        store: StoreKind::Postgres,
        database_url: Some(url),
        ..memory_config()
    }
}

/// The server's connections to `db`, seen by PostgreSQL: whether each uses TLS.
async fn connections_use_tls(tls: &TlsCluster, db: &str) -> Vec<bool> {
    let client = pg::connect(&tls.socket_url(db)).await;
    client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn stored_texts(tls: &TlsCluster, db: &str) -> Vec<String> {
    let client = pg::connect(&tls.socket_url(db)).await;
    client
        .query("SELECT body FROM messages ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Runs the binary with `url` until it exits (within [`PATIENCE`]); its status and log.
async fn run_to_exit(url: &str, extra: &[&str]) -> (ExitStatus, String) {
    let child = linechat()
        .args(["--listen", "127.0.0.1:0", "--database-url", url])
        .args(extra)
        .env_remove("DATABASE_URL")
        .env("LINECHAT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(PATIENCE, waiting).await {
        Ok(output) => {
            let output = output.unwrap().unwrap();
            (
                output.status,
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("the server did not give up within {PATIENCE:?}");
        }
    }
}

/// The real binary with `sslmode=verify-full`: the chain to our CA and the name `localhost`
/// are checked, channel binding is required (SCRAM-SHA-256-PLUS over the TLS channel), and
/// messages are stored and read back through it. PostgreSQL confirms every connection of
/// the server is encrypted; the password appears nowhere in the log.
#[tokio::test]
async fn verify_full_stores_and_reads_history_over_tls() {
    let (tls, db) = fresh_database().await;
    let ca = tls.ca.display().to_string();
    let url = url(
        tls,
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require"),
    );
    let server = Binary::start(
        linechat()
            .args(["--listen", "127.0.0.1:0", "--database-url", &url])
            .env_remove("DATABASE_URL"),
    );
    let line = server.wait_for_log("using PostgreSQL at").await;
    assert!(
        line.contains(&format!("sslmode=verify-full, sslrootcert={ca}")),
        "{line}"
    );

    let mut alice = common::Client::login(server.addr, "alice").await;
    alice.join("tls").await;
    alice.say("over an untrusted network").await;
    alice.say("still encrypted").await;
    let mut bob = common::Client::login(server.addr, "bob").await;
    let history = bob.join("tls LAST 10").await;
    let texts: Vec<String> = history
        .iter()
        .map(|l| common::parse_message(l).text)
        .collect();
    assert_eq!(texts, ["over an untrusted network", "still encrypted"]);
    assert_eq!(stored_texts(tls, &db).await, texts);

    let encrypted = connections_use_tls(tls, &db).await;
    assert!(
        !encrypted.is_empty(),
        "the server holds connections to {db}"
    );
    assert!(encrypted.iter().all(|&ssl| ssl), "{encrypted:?}");
    let log = server.log().join("\n");
    assert!(!log.contains(PASSWORD), "the password was logged:\n{log}");
}

/// `verify-ca` in key=value form, reaching the server by address: the chain is checked, the
/// name (`localhost` in the certificate, `127.0.0.1` asked for) is not.
#[tokio::test]
async fn verify_ca_in_key_value_form_checks_the_chain_not_the_name() {
    let (tls, db) = fresh_database().await;
    let url = format!(
        "host=127.0.0.1 port={} user={} password='{PASSWORD}' dbname={db} sslmode=verify-ca \
         sslrootcert='{}'",
        tls.port,
        linechat::managed_postgres::SUPERUSER,
        tls.ca.display()
    );
    let server = TestServer::start_with(config(url)).await;
    let mut c = server.login("carol").await;
    c.join("kv").await;
    c.say("checked against the CA").await;
    assert_eq!(stored_texts(tls, &db).await, ["checked against the CA"]);
    assert!(connections_use_tls(tls, &db).await.iter().all(|&s| s));
    server.stop().await.unwrap();
}

/// `require` without a root certificate encrypts but checks nothing (libpq's meaning): a
/// certificate from a CA the server was never told of is taken.
#[tokio::test]
async fn require_takes_a_certificate_from_an_unknown_ca() {
    let (tls, db) = fresh_database().await;
    let server =
        TestServer::start_with(config(url(tls, "localhost", &db, "sslmode=require"))).await;
    let mut c = server.login("dave").await;
    c.join("req").await;
    c.say("encrypted, unverified").await;
    assert_eq!(stored_texts(tls, &db).await, ["encrypted, unverified"]);
    let encrypted = connections_use_tls(tls, &db).await;
    assert!(!encrypted.is_empty() && encrypted.iter().all(|&s| s));
    server.stop().await.unwrap();
}

/// A certificate from another CA fails start-up at once (no retrying for a minute), saying
/// why, and without the password.
#[tokio::test]
async fn verify_full_refuses_a_certificate_from_another_ca() {
    let (tls, db) = fresh_database().await;
    let other = tls.other_ca.display().to_string();
    let url = url(
        tls,
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={other}"),
    );
    let (status, log) = run_to_exit(&url, &[]).await;
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );
    assert!(log.contains("retrying cannot help"), "{log}");
    assert!(!log.contains("listening on"), "{log}");
    assert!(!log.contains(PASSWORD), "the password was logged:\n{log}");
}

/// Our CA's certificate for `localhost` does not do for `127.0.0.1` under verify-full.
#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host_name() {
    let (tls, db) = fresh_database().await;
    let ca = tls.ca.display().to_string();
    let url = url(
        tls,
        "127.0.0.1",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let (status, log) = run_to_exit(&url, &[]).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains("certificate not valid for name"), "{log}");
    assert!(log.contains("127.0.0.1"), "{log}");
    assert!(!log.contains(PASSWORD), "the password was logged:\n{log}");
}

/// Against a server that takes TCP only over TLS, `sslmode=disable` is refused by
/// PostgreSQL; the server's log says that it connected without TLS.
#[tokio::test]
async fn plaintext_is_refused_by_a_tls_only_server() {
    let (tls, db) = fresh_database().await;
    let url = url(tls, "localhost", &db, "sslmode=disable");
    let (status, log) = run_to_exit(&url, &["--db-startup-timeout", "1"]).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains("(sslmode=disable)"), "{log}");
    assert!(log.contains("no encryption"), "{log}");
    assert!(!log.contains(PASSWORD), "the password was logged:\n{log}");
}

/// An sslmode libpq does not have is a start-up error naming the modes, not a silent
/// fallback to plaintext; so is verify-full without a root certificate.
#[tokio::test]
async fn bad_tls_settings_stop_start_up_with_what_to_do() {
    let (tls, db) = fresh_database().await;
    let (status, log) = run_to_exit(&url(tls, "localhost", &db, "sslmode=verify_full"), &[]).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains("unknown sslmode \"verify_full\""), "{log}");
    assert!(log.contains("verify-full"), "{log}");
    assert!(!log.contains(PASSWORD), "the password was logged:\n{log}");

    let (status, log) = run_to_exit(&url(tls, "localhost", &db, "sslmode=verify-full"), &[]).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains("add sslrootcert="), "{log}");

    let missing = tls.ca.with_file_name("missing.pem").display().to_string();
    let params = format!("sslmode=verify-full&sslrootcert={missing}");
    let (status, log) = run_to_exit(&url(tls, "localhost", &db, &params), &[]).await;
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("cannot read sslrootcert {missing}")),
        "{log}"
    );
}
