//! Accounts over real TCP: registered names need their password, guessing is limited, the
//! operator's switches, accounts shared through PostgreSQL, and passwords kept out of every
//! log, table and reply (the real binary, a real database).

mod common;

use common::accounts::{account, registered, server_logging_at};
use common::binary::{linechat, Binary};
use common::{memory_config, pg, Client, TestServer};
use linechat::accounts::Registration;
use linechat::Config;

const PW: &str = "correct-horse-battery";

async fn refused(c: &mut Client, line: &str, code: &str) -> String {
    c.send(line).await;
    let err = c.expect_err(code).await;
    assert!(!err.contains(PW), "a password quoted back: {err}");
    err
}

fn lenient() -> Config {
    Config {
        // These tests err on purpose.
        max_errors: 0,
        ..memory_config()
    }
}

#[tokio::test]
async fn a_registered_name_needs_its_password_even_right_after_its_owner_leaves() {
    let server = TestServer::start_with(lenient()).await;
    let mut alice = registered(server.addr, "alice", PW).await;
    alice.send("QUIT").await;
    alice.until_closed_after("BYE goodbye").await;

    // The moment the owner is gone, in any case.
    let mut mallory = server.client().await;
    for name in ["alice", "ALICE", "Alice"] {
        let err = refused(&mut mallory, &format!("NICK {name}"), "NICK_REGISTERED").await;
        assert!(err.contains("NICK alice <password>"), "{err}");
    }
    refused(
        &mut mallory,
        "NICK alice not-the-password",
        "WRONG_PASSWORD",
    )
    .await;
    refused(
        &mut mallory,
        "NICK aLiCe not-the-password",
        "WRONG_PASSWORD",
    )
    .await;
    refused(&mut mallory, "SAY still nobody", "NO_NICK").await;

    // The owner, in any case, gets the name as registered.
    let mut owner = server.client().await;
    owner.send(&format!("NICK ALICE {PW}")).await;
    owner.expect("OK NICK alice").await;
    // Held now: not even the password takes it from a live connection.
    refused(&mut mallory, &format!("NICK alice {PW}"), "NICK_IN_USE").await;
    owner.join("r").await;
    let mut bob = server.login("bob").await;
    bob.join("r").await;
    owner.expect("JOINED r bob").await;
    owner.say("it is me").await;
    assert!(bob.line().await.ends_with(" alice it is me"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn guests_work_as_before_and_passwords_have_rules() {
    let server = TestServer::start_with(lenient()).await;
    let mut c = server.client().await;
    refused(&mut c, &format!("REGISTER {PW}"), "NO_NICK").await;
    // A password for a name nobody registered: refused, and the name is not taken.
    let err = refused(&mut c, &format!("NICK carol {PW}"), "NOT_REGISTERED").await;
    assert!(err.contains("REGISTER <password>"), "{err}");
    c.send("NICK carol").await;
    c.expect("OK NICK carol").await;
    refused(&mut c, &format!("NICK carol {PW}"), "NOT_REGISTERED").await;
    refused(
        &mut c,
        "PASSWORD old-password new-password",
        "NOT_REGISTERED",
    )
    .await;
    refused(&mut c, "REGISTER short", "WEAK_PASSWORD").await;
    refused(
        &mut c,
        &format!("REGISTER {}", "x".repeat(129)),
        "WEAK_PASSWORD",
    )
    .await;
    refused(
        &mut c,
        &format!("REGISTER {PW} extra"),
        "TOO_MANY_ARGUMENTS",
    )
    .await;
    c.send(&format!("REGISTER {PW}")).await;
    c.expect("OK REGISTER carol").await;
    refused(&mut c, "REGISTER another-password", "ALREADY_REGISTERED").await;

    refused(
        &mut c,
        "PASSWORD wrong-password new-password",
        "WRONG_PASSWORD",
    )
    .await;
    refused(&mut c, &format!("PASSWORD {PW} short"), "WEAK_PASSWORD").await;
    c.send(&format!("PASSWORD {PW} new-password")).await;
    c.expect("OK PASSWORD").await;
    c.send("NICK someone-else").await;
    c.expect("OK NICK someone-else").await;

    let mut other = server.client().await;
    refused(&mut other, &format!("NICK carol {PW}"), "WRONG_PASSWORD").await;
    other.send("NICK carol new-password").await;
    other.expect("OK NICK carol").await;
    // Guest names work exactly as before.
    let mut dave = server.login("dave").await;
    dave.join("r").await;
    dave.say("a guest talks").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn guessing_is_limited_per_name_and_per_address() {
    // Budgets that come back as slowly as they may (a minute a guess), so that a slow
    // machine's password checks never see one come back during the test.
    let server = TestServer::start_with(Config {
        name_guess_every: std::time::Duration::from_secs(60),
        address_guess_every: std::time::Duration::from_secs(60),
        ..lenient()
    })
    .await;
    for name in ["alice", "bob", "carol"] {
        registered(server.addr, name, PW).await;
    }
    let mut guesser = server.client().await;
    for n in 0..10 {
        refused(
            &mut guesser,
            &format!("NICK alice guess-{n:04}"),
            "WRONG_PASSWORD",
        )
        .await;
    }
    let err = refused(&mut guesser, "NICK alice guess-9999", "TOO_MANY_GUESSES").await;
    assert!(err.contains("try again in"), "{err}");
    // From now on not even the right password is checked for this name (from an address
    // that never logged in to it), and a new connection does not reset that.
    refused(
        &mut guesser,
        &format!("NICK alice {PW}"),
        "TOO_MANY_GUESSES",
    )
    .await;
    let mut again = server.client().await;
    refused(&mut again, &format!("NICK alice {PW}"), "TOO_MANY_GUESSES").await;

    // The address's own budget (20) holds it to 10 more guesses at other names.
    for n in 0..10 {
        refused(
            &mut again,
            &format!("NICK bob guess-{n:04}"),
            "WRONG_PASSWORD",
        )
        .await;
    }
    refused(&mut again, &format!("NICK carol {PW}"), "TOO_MANY_GUESSES").await;
    // The connections live on.
    guesser.expect_nothing_pending().await;
    again.send("NICK a-guest").await;
    again.expect("OK NICK a-guest").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn require_account_keeps_guests_out_and_closed_registration_keeps_names_for_the_operator() {
    let server = TestServer::start_with(Config {
        require_account: true,
        ..lenient()
    })
    .await;
    let mut guest = server.client().await;
    refused(&mut guest, "ROOMS", "ACCOUNT_REQUIRED").await;
    refused(&mut guest, "HISTORY r", "ACCOUNT_REQUIRED").await;
    guest.send("NICK guest").await;
    guest.expect("OK NICK guest").await;
    refused(&mut guest, "JOIN r", "ACCOUNT_REQUIRED").await;
    refused(&mut guest, "SAY hello", "ACCOUNT_REQUIRED").await;
    refused(&mut guest, "WHO r", "ACCOUNT_REQUIRED").await;
    refused(&mut guest, "ROOMS", "ACCOUNT_REQUIRED").await;
    // Registering is how a guest gets in.
    guest.send(&format!("REGISTER {PW}")).await;
    guest.expect("OK REGISTER guest").await;
    guest.join("r").await;
    guest.say("in").await;
    // A registered user who takes a guest name is a guest again.
    guest.send("NICK visitor").await;
    guest.expect("OK NICK visitor").await;
    refused(&mut guest, "SAY out", "ACCOUNT_REQUIRED").await;
    server.stop().await.unwrap();

    let closed = TestServer::start_with(Config {
        registration: Registration::Closed,
        ..lenient()
    })
    .await;
    let mut c = closed.login("newcomer").await;
    refused(&mut c, &format!("REGISTER {PW}"), "REGISTRATION_CLOSED").await;
    c.join("r").await;
    closed.stop().await.unwrap();

    let members_only = TestServer::start_with(Config {
        registration: Registration::Closed,
        require_account: true,
        ..lenient()
    })
    .await;
    let mut c = members_only.client().await;
    refused(&mut c, "NICK newcomer", "ACCOUNT_REQUIRED").await;
    members_only.stop().await.unwrap();
}

/// One address registers a few names, then waits (`--limit-loopback` counts loopback).
#[tokio::test]
async fn registrations_are_budgeted_per_address() {
    let server = TestServer::start_with(Config {
        limit_loopback: true,
        ..lenient()
    })
    .await;
    for n in 0..3 {
        registered(server.addr, &format!("squat{n}"), PW).await;
    }
    let mut c = server.login("squat3").await;
    let err = refused(&mut c, &format!("REGISTER {PW}"), "TOO_MANY_REGISTRATIONS").await;
    assert!(err.contains("try again in"), "{err}");
    server.stop().await.unwrap();
}

/// What the operator changes reaches connections within the name watch's round: a guest
/// holding a name the operator registers, and a login whose password the operator resets,
/// are closed with BYE saying why.
#[tokio::test]
async fn the_operators_changes_end_the_sessions_they_concern() {
    let url = pg::fresh_database().await;
    let server = TestServer::start_with(Config {
        database_url: Some(url.clone()),
        store: linechat::StoreKind::Postgres,
        ..lenient()
    })
    .await;
    let db = ["--database-url", url.as_str()];
    let mut guest = server.login("carl").await;
    let mut alice = registered(server.addr, "alice", PW).await;
    account(&db, &["add", "carl"], "carl-password\n").unwrap();
    guest
        .until_closed_after(
            "BYE your name has been registered by its owner: NICK <name> <password> takes it now",
        )
        .await;
    account(&db, &["passwd", "alice"], "alice-new-password\n").unwrap();
    alice
        .until_closed_after("BYE your account was removed or its password changed: log in again")
        .await;
    let mut again = server.client().await;
    again.send("NICK alice alice-new-password").await;
    again.expect("OK NICK alice").await;
    // Their own password change does not close the one who made it.
    again
        .send("PASSWORD alice-new-password alice-newer-password")
        .await;
    again.expect("OK PASSWORD").await;
    tokio::time::sleep(linechat::accounts::watch::CHECK_EVERY * 2).await;
    again.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

/// Two servers on one database: a name registered on one needs its password on the other,
/// and after both restart.
#[tokio::test]
async fn accounts_are_shared_by_servers_on_one_database_and_outlive_them() {
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    let one = TestServer::start_with(config.clone()).await;
    let two = TestServer::start_with(config.clone()).await;
    let _alice = registered(one.addr, "alice", PW).await;
    let mut c = two.client().await;
    refused(&mut c, "NICK Alice", "NICK_REGISTERED").await;
    c.send(&format!("NICK bob {PW}")).await;
    c.expect_err("NOT_REGISTERED").await;
    one.stop().await.unwrap();
    two.stop().await.unwrap();

    let three = TestServer::start_with(config).await;
    let mut c = three.client().await;
    refused(&mut c, "NICK alice wrong-password", "WRONG_PASSWORD").await;
    c.send(&format!("NICK alice {PW}")).await;
    c.expect("OK NICK alice").await;
    let db = pg::connect(&url).await;
    let hash: String = db
        .query_one("SELECT password_hash FROM users WHERE name = 'alice'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    three.stop().await.unwrap();
}

/// Every row of every table of the database, as text.
async fn everything_in(url: &str) -> String {
    let db = pg::connect(url).await;
    let tables = db
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap();
    let mut all = String::new();
    for table in tables {
        let name: String = table.get(0);
        let sql = format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {name} t");
        let rows: String = db.query_one(&sql, &[]).await.unwrap().get(0);
        all.push_str(&rows);
    }
    all
}

/// The real binary at its most talkative (trace): a session that registers, fails a login,
/// logs in, changes its password and errs with passwords on the line. No password (nor its
/// hash) is in the log, in any table but as a hash, or in any reply.
#[tokio::test]
async fn passwords_appear_nowhere_but_as_hashes() {
    let url = pg::fresh_database().await;
    let (first, wrong, second) = ("first-Secret-1", "wrong-Secret-2", "second-Secret-3");
    let mut server = server_logging_at(&url, "trace");
    let mut said = Vec::new();
    let (alice, other) = (0, 1);
    let mut clients = [
        Client::login(server.addr, "alice").await,
        Client::connect(server.addr).await,
    ];
    for (who, line) in [
        (alice, format!("REGISTER {first}")),
        (alice, format!("REGISTER {first} {wrong}")),
        (other, format!("NICK alice {wrong}")),
        (other, format!("NICK alice {first}")),
        (other, format!("NICK alice {first} {wrong}")),
        (other, format!("PASSWORD {first} {second}")),
        (alice, format!("PASSWORD {wrong} {second}")),
        (alice, format!("PASSWORD {first} {second}")),
        (alice, "JOIN r".to_string()),
    ] {
        clients[who].send(&line).await;
        said.push(clients[who].reply().await);
    }
    let [mut alice, mut other] = clients;
    let replies = said.join("\n");
    assert!(replies.contains("OK REGISTER alice"), "{replies}");
    assert!(replies.contains("ERR WRONG_PASSWORD"), "{replies}");
    assert!(replies.contains("OK PASSWORD"), "{replies}");
    alice.send("QUIT").await;
    alice.until_closed_after("BYE goodbye").await;
    other.send(&format!("NICK alice {second}")).await;
    other.expect("OK NICK alice").await;
    server.signal("-TERM");
    server.wait().await;

    let log = server.log().join("\n");
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "a verbose log"
    );
    let stored = everything_in(&url).await;
    assert!(stored.contains("$argon2id$"), "the hash is stored");
    for password in [first, wrong, second] {
        assert!(!log.contains(password), "{password} in the log");
        assert!(!stored.contains(password), "{password} in the database");
        assert!(!replies.contains(password), "{password} in a reply");
    }
    assert!(!log.contains("$argon2id$"), "a hash in the log");
}

/// An operator makes accounts for a server with closed registration: on its database, and
/// on its own cluster while it runs.
#[tokio::test]
async fn the_operator_makes_accounts_with_linechat_account() {
    let url = pg::fresh_database().await;
    let db = ["--database-url", &url];
    assert_eq!(
        account(&db, &["add", "bob"], "bob-password-1\n").unwrap(),
        "registered bob"
    );
    let err = account(&db, &["add", "BOB"], "bob-password-2\n").unwrap_err();
    assert!(err.contains("registered already"), "{err}");
    let err = account(&db, &["add", "weak"], "short\n").unwrap_err();
    assert!(err.contains("at least 8"), "{err}");
    let err = account(&db, &["add", "bad!name"], "long-enough\n").unwrap_err();
    assert!(err.contains("a nick is"), "{err}");
    account(&db, &["add", "amy"], "amy-password-1\n").unwrap();
    assert_eq!(account(&db, &["list"], "").unwrap(), "amy\nbob");

    let server = TestServer::start_with(Config {
        registration: Registration::Closed,
        require_account: true,
        database_url: Some(url.clone()),
        store: linechat::StoreKind::Postgres,
        ..lenient()
    })
    .await;
    let mut c = server.client().await;
    c.send("NICK bob bob-password-1").await;
    c.expect("OK NICK bob").await;
    c.join("r").await;
    account(&db, &["passwd", "bob"], "bob-password-9\n").unwrap();
    let mut again = server.client().await;
    refused(&mut again, "NICK amy bob-password-9", "WRONG_PASSWORD").await;
    c.send("QUIT").await;
    c.until_closed_after("BYE goodbye").await;
    again.send("NICK bob bob-password-9").await;
    again.expect("OK NICK bob").await;
    account(&db, &["remove", "amy"], "").unwrap();
    assert_eq!(account(&db, &["list"], "").unwrap(), "bob");
    let err = account(&db, &["remove", "amy"], "").unwrap_err();
    assert!(err.contains("not registered"), "{err}");
    server.stop().await.unwrap();

    let err = account(&["--store", "memory"], &["list"], "").unwrap_err();
    assert!(err.contains("--store memory"), "{err}");
}

/// `linechat account add` on the data directory of a running zero-config server reaches its
/// cluster through the socket; the new account works at once.
#[tokio::test]
async fn linechat_account_works_beside_a_running_zero_config_server() {
    let dir = pg::temp_dir("accounts");
    let _cleanup = pg::DirGuard(dir.clone());
    let dir_arg = dir.to_str().unwrap();
    let server = Binary::start(
        linechat()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--registration",
                "closed",
                "--data-dir",
                dir_arg,
            ])
            .env_remove("DATABASE_URL")
            .env_remove("LINECHAT_USER"),
    );
    assert_eq!(
        account(&["--data-dir", dir_arg], &["add", "zed"], "zed-password\n").unwrap(),
        "registered zed"
    );
    let mut c = Client::connect(server.addr).await;
    c.send("NICK zed zed-password").await;
    c.expect("OK NICK zed").await;
    // With no server on it, the command starts the cluster (here: adopts the one the killed
    // server left running) and stops it again.
    drop(server);
    assert_eq!(
        account(&["--data-dir", dir_arg], &["list"], "").unwrap(),
        "zed"
    );
    let pid = dir.join("pgdata/postmaster.pid");
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while pid.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL was left running"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A private room: out of `ROOMS` for others, its history and members refused to them, its
/// door opened by invitation only; with either store.
async fn check_private_rooms(config: Config) {
    let server = TestServer::start_with(config).await;
    let mut alice = registered(server.addr, "alice", PW).await;
    let mut bob = registered(server.addr, "bob", PW).await;
    let mut eve = registered(server.addr, "eve", PW).await;
    let mut lurker = server.client().await;
    alice.join("secret").await;
    alice.say("the plan").await;
    // Public so far: anyone, even before NICK, reads it.
    lurker.send("HISTORY secret").await;
    let (hist, _) = lurker.until("OK HISTORY secret 1").await;
    assert!(hist[0].ends_with(" alice the plan"), "{hist:?}");

    refused(&mut lurker, "PRIVATE secret", "NO_NICK").await;
    refused(&mut eve, "PRIVATE secret", "NOT_IN_ROOM").await;
    alice.send("PRIVATE secret").await;
    alice.expect("OK PRIVATE secret").await;
    alice.send("PRIVATE secret").await;
    alice.expect("OK PRIVATE secret").await;

    let mut public = server.login("public-talker").await;
    public.join("lobby").await;
    for c in [&mut lurker, &mut eve] {
        refused(c, "HISTORY secret", "PRIVATE_ROOM").await;
        refused(c, "WHO secret", "PRIVATE_ROOM").await;
        c.send("ROOMS").await;
        let (rooms, ok) = c.until("OK ROOMS ").await;
        assert_eq!(rooms, ["ROOM lobby 1"], "{ok}");
    }
    refused(&mut eve, "JOIN secret", "PRIVATE_ROOM").await;
    refused(&mut eve, "INVITE secret eve", "PRIVATE_ROOM").await;
    refused(&mut eve, "PUBLIC secret", "PRIVATE_ROOM").await;
    lurker.send("NICK guest").await;
    lurker.expect("OK NICK guest").await;
    refused(&mut lurker, "JOIN secret", "PRIVATE_ROOM").await;
    refused(&mut lurker, "INVITE secret guest", "NOT_REGISTERED").await;
    refused(&mut alice, "INVITE secret guest", "NOT_REGISTERED").await;
    refused(&mut alice, "INVITE lobby bob", "BAD_ARGUMENT").await;

    // An invited member gets in, and sees it listed.
    alice.send("INVITE secret BOB").await;
    alice.expect("OK INVITE secret bob").await;
    bob.send("HISTORY secret").await;
    bob.until("OK HISTORY secret 1").await;
    let hist = bob.join("secret").await;
    assert!(hist[0].ends_with(" alice the plan"), "{hist:?}");
    alice.expect("JOINED secret bob").await;
    bob.send("ROOMS").await;
    let (rooms, _) = bob.until("OK ROOMS ").await;
    assert_eq!(rooms, ["ROOM lobby 1", "ROOM secret 2"]);
    refused(&mut bob, "PUBLIC secret", "NOT_ROOM_OWNER").await;
    refused(&mut bob, "UNINVITE secret alice", "NOT_ROOM_OWNER").await;
    refused(&mut alice, "UNINVITE secret alice", "BAD_ARGUMENT").await;

    // Uninvited: out once it leaves.
    alice.send("UNINVITE secret bob").await;
    alice.expect("OK UNINVITE secret bob").await;
    bob.send("PART secret").await;
    bob.expect("OK PART secret").await;
    alice.expect("LEFT secret bob").await;
    refused(&mut bob, "JOIN secret", "PRIVATE_ROOM").await;

    // Public again: anyone.
    alice.send("PUBLIC secret").await;
    alice.expect("OK PUBLIC secret").await;
    eve.join("secret").await;
    lurker.send("HISTORY secret").await;
    lurker.until("OK HISTORY secret 1").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_private_room_is_for_its_members_only_in_memory() {
    check_private_rooms(lenient()).await;
}

#[tokio::test]
async fn a_private_room_is_for_its_members_only_in_postgres() {
    check_private_rooms(Config {
        max_errors: 0,
        ..pg::config().await
    })
    .await;
}
