//! Integrity of the PostgreSQL history against other writers (issue 11): the tables emptied or
//! restored under a running server, dangling references from any session (the server's own
//! included), concurrent deletes, the migration of a database written before, and the
//! history epoch that `HELLO` carries.

mod common;

use std::time::Duration;

use common::{memory_config, parse_message, pg, TestServer, PATIENCE};
use linechat::store::postgres::{migrate, migrations};
use linechat::Config;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

async fn pg_server() -> (TestServer, String) {
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    (TestServer::start_with(config).await, url)
}

fn pg_config(url: &str) -> Config {
    Config {
        store: linechat::StoreKind::Postgres,
        database_url: Some(url.to_string()),
        ..memory_config()
    }
}

/// (nick, text) of a room's whole history, as a newcomer is shown it.
async fn history(server: &TestServer, room: &str) -> Vec<(String, String)> {
    let mut reader = server.login("reader").await;
    let lines = reader.join(&format!("{room} LAST 1000")).await;
    reader.send("QUIT").await;
    lines
        .iter()
        .map(|l| parse_message(l))
        .map(|m| (m.nick, m.text))
        .collect()
}

fn said(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// The tables emptied under a running server (as an operator starting over would): the next
/// `SAY` of a user and room the server had already written is stored and shown, not
/// acknowledged and then missing from history (the server's cached ids named rows that were
/// gone, and its replica-mode session skipped the foreign keys).
#[tokio::test]
async fn a_say_after_the_tables_are_emptied_under_the_server_is_in_history() {
    let (server, url) = pg_server().await;
    let db = pg::connect(&url).await;
    let mut alice = server.login("alice").await;
    alice.join("alpha").await;
    alice.say("before").await;
    db.batch_execute("TRUNCATE messages, rooms, users")
        .await
        .unwrap();
    let id = alice.say("after").await;
    assert!(id > 0);
    assert_eq!(history(&server, "alpha").await, said(&[("alice", "after")]));
    let dangling: i64 = db
        .query_one(
            "SELECT count(*) FROM messages m \
             WHERE NOT EXISTS (SELECT FROM rooms r WHERE r.id = m.room_id) \
                OR NOT EXISTS (SELECT FROM users u WHERE u.id = m.user_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dangling, 0);
    server.stop().await.unwrap();
}

/// A restore under a running server that gives a room's and a user's old ids to others (as
/// restoring an older dump, or emptying with RESTART IDENTITY, does): each message still goes
/// to the room it was said in, under its sender's name.
#[tokio::test]
async fn ids_reused_by_a_restore_do_not_move_messages_to_another_room() {
    let (server, url) = pg_server().await;
    let db = pg::connect(&url).await;
    let mut alice = server.login("alice").await;
    alice.join("alpha").await;
    alice.say("first").await;
    let row = db
        .query_one(
            "SELECT room_id, user_id FROM messages WHERE body = 'first'",
            &[],
        )
        .await
        .unwrap();
    let (room_id, user_id): (i64, i64) = (row.get(0), row.get(1));
    // The "restore": everything replaced, alpha's old ids now name another room and user.
    db.batch_execute("BEGIN; DELETE FROM messages; DELETE FROM rooms; DELETE FROM users")
        .await
        .unwrap();
    db.execute(
        "INSERT INTO rooms (id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 'restored')",
        &[&room_id],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO users (id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 'mallory')",
        &[&user_id],
    )
    .await
    .unwrap();
    db.batch_execute("COMMIT").await.unwrap();
    alice.say("second").await;
    assert_eq!(
        history(&server, "alpha").await,
        said(&[("alice", "second")])
    );
    assert_eq!(history(&server, "restored").await, said(&[]));
    server.stop().await.unwrap();
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

/// PostgreSQL itself refuses every dangling reference, from any session: a message naming a
/// room or user that does not exist (also in replica mode, which turns off ordinary
/// triggers), deleting or truncating a referenced room or user, or changing an id.
#[tokio::test]
async fn postgresql_refuses_dangling_references_from_every_session() {
    let (server, url) = pg_server().await;
    let mut alice = server.login("alice").await;
    alice.join("alpha").await;
    alice.say("hello").await;
    server.stop().await.unwrap();
    let db = pg::connect(&url).await;
    let fk = Some(&SqlState::FOREIGN_KEY_VIOLATION);
    for replica in [true, false] {
        let role = if replica { "replica" } else { "origin" };
        db.batch_execute(&format!("SET session_replication_role = {role}"))
            .await
            .unwrap();
        for insert in [
            "INSERT INTO messages (room_id, user_id, body) \
             VALUES (-1, (SELECT min(id) FROM users), 'no such room')",
            "INSERT INTO messages (room_id, user_id, body) \
             VALUES ((SELECT min(id) FROM rooms), -1, 'no such user')",
            // One bad row among good ones spoils the statement.
            "INSERT INTO messages (room_id, user_id, body) \
             SELECT r, (SELECT min(id) FROM users), 'x' \
             FROM unnest(ARRAY[(SELECT min(id) FROM rooms), -5]) r",
            "UPDATE messages SET room_id = -1",
        ] {
            let e = db.execute(insert, &[]).await.unwrap_err();
            assert_eq!(code(&e), fk, "replica {replica}: {insert}: {e}");
        }
        for change in [
            "DELETE FROM rooms WHERE name = 'alpha'",
            "DELETE FROM users WHERE name = 'alice'",
            "UPDATE rooms SET id = DEFAULT",
            "UPDATE users SET id = DEFAULT",
        ] {
            let e = db.execute(change, &[]).await.unwrap_err();
            assert_eq!(code(&e), fk, "replica {replica}: {change}: {e}");
        }
        // Refused (a foreign key refuses it as "not supported").
        for truncate in ["TRUNCATE rooms", "TRUNCATE users", "TRUNCATE users, rooms"] {
            let e = db.execute(truncate, &[]).await.unwrap_err();
            assert!(
                [fk, Some(&SqlState::FEATURE_NOT_SUPPORTED)].contains(&code(&e)),
                "replica {replica}: {truncate}: {e}"
            );
        }
        // Not in a transaction whose snapshot may predate a concurrent message.
        db.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .unwrap();
        let e = db
            .execute("DELETE FROM rooms WHERE name = 'nothing'", &[])
            .await
            .unwrap_err();
        assert_eq!(
            code(&e),
            Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
            "{e}"
        );
        db.batch_execute("ROLLBACK").await.unwrap();
    }
    // What nothing references may go, and everything may go together.
    db.batch_execute(
        "INSERT INTO rooms (name) VALUES ('unused'); DELETE FROM rooms WHERE name = 'unused'",
    )
    .await
    .unwrap();
    db.batch_execute("TRUNCATE messages, rooms, users")
        .await
        .unwrap();
}

/// Two sessions racing: a DELETE of a room that a concurrent, uncommitted INSERT references
/// waits for it and is then refused; an INSERT referencing a room whose DELETE is uncommitted
/// waits for it and is then refused. Neither order leaves a dangling message.
#[tokio::test]
async fn a_delete_racing_an_insert_never_leaves_a_dangling_message() {
    let url = pg::fresh_database().await;
    let setup = pg::connect(&url).await;
    migrate(&setup).await.unwrap();
    setup
        .batch_execute(
            "INSERT INTO users (name) VALUES ('alice'); \
             INSERT INTO rooms (name) VALUES ('kept'), ('doomed')",
        )
        .await
        .unwrap();
    let insert = |room: &'static str| {
        format!(
            "INSERT INTO messages (room_id, user_id, body) SELECT r.id, u.id, 'x' \
             FROM rooms r, users u WHERE r.name = '{room}' AND u.name = 'alice'"
        )
    };

    // The insert first: the delete waits for its commit, then sees the message.
    let inserter = pg::connect(&url).await;
    inserter.batch_execute("BEGIN").await.unwrap();
    inserter.batch_execute(&insert("kept")).await.unwrap();
    let deleter = pg::connect(&url).await;
    let delete = tokio::spawn(async move {
        deleter
            .execute("DELETE FROM rooms WHERE name = 'kept'", &[])
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delete.is_finished(), "the delete waits for the insert");
    inserter.batch_execute("COMMIT").await.unwrap();
    let e = tokio::time::timeout(PATIENCE, delete)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::FOREIGN_KEY_VIOLATION), "{e}");

    // The delete first: the insert waits for its commit, then finds the room gone.
    let deleter = pg::connect(&url).await;
    deleter.batch_execute("BEGIN").await.unwrap();
    deleter
        .execute("DELETE FROM rooms WHERE name = 'doomed'", &[])
        .await
        .unwrap();
    let sql = insert("doomed");
    let insert = tokio::spawn(async move { inserter.batch_execute(&sql).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    deleter.batch_execute("COMMIT").await.unwrap();
    let outcome = tokio::time::timeout(PATIENCE, insert)
        .await
        .unwrap()
        .unwrap();
    // Either refused, or (had it read the rooms after the commit) it found no room to insert.
    if let Err(e) = outcome {
        assert_eq!(code(&e), Some(&SqlState::FOREIGN_KEY_VIOLATION), "{e}");
    }
    let dangling: i64 = setup
        .query_one(
            "SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT FROM rooms r WHERE r.id = m.room_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dangling, 0);
}

/// A database written before (migration 1, the server in replica mode) may hold messages
/// whose room or user was deleted: migrating keeps them, under placeholder names, so that
/// they show up in history again, and then enforces the references.
#[tokio::test]
async fn migrating_a_database_with_dangling_messages_keeps_them_visible() {
    let url = pg::fresh_database().await;
    let db = pg::connect(&url).await;
    let (_, first) = &migrations()[0];
    db.batch_execute(first).await.unwrap();
    db.batch_execute(
        "CREATE TABLE schema_version (version integer PRIMARY KEY, \
                                      applied_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO schema_version (version) VALUES (1); \
         INSERT INTO users (name) VALUES ('alice'); \
         INSERT INTO rooms (name) VALUES ('4'); \
         SET session_replication_role = replica; \
         INSERT INTO messages (room_id, user_id, body) \
             SELECT id, (SELECT id FROM users), 'kept' FROM rooms; \
         INSERT INTO messages (room_id, user_id, body) \
             SELECT id, 4242, 'by a deleted user' FROM rooms; \
         INSERT INTO messages (room_id, user_id, body) \
             SELECT 77, (SELECT id FROM users), 'in a deleted room' FROM users; \
         SET session_replication_role = origin",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(pg_config(&url)).await;
    assert_eq!(
        history(&server, "4").await,
        said(&[("alice", "kept"), ("lost-user-4242", "by a deleted user")])
    );
    assert_eq!(
        history(&server, "lost-room-77").await,
        said(&[("alice", "in a deleted room")])
    );
    // New rows get new ids, past the placeholders'.
    let mut bob = server.login("bob").await;
    bob.join("new").await;
    bob.say("hi").await;
    let ids: Vec<i64> = db
        .query("SELECT id FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        ids.iter().all(|&id| id > 0) && *ids.last().unwrap() > 4242,
        "{ids:?}"
    );
    server.stop().await.unwrap();
    let e = db
        .execute("DELETE FROM users WHERE name = 'lost-user-4242'", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::FOREIGN_KEY_VIOLATION), "{e}");
}

/// The epoch of a server's `HELLO` (`epoch=<hex>` after the version), if it names one.
async fn hello_epoch(server: &TestServer) -> Option<String> {
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let hello = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let words: Vec<&str> = hello.split(' ').collect();
    assert_eq!(&words[..2], ["HELLO", "linechat"], "{hello}");
    words[3].strip_prefix("epoch=").map(str::to_string)
}

/// Two runs of a memory store are two histories (ids start again): different epochs. One
/// PostgreSQL database is one history: the same epoch across restarts of the server, and
/// another database has another.
#[tokio::test]
async fn each_history_has_its_own_epoch_and_a_database_keeps_it() {
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    let (a, b) = (hello_epoch(&first).await, hello_epoch(&second).await);
    let a = a.expect("a memory store names its epoch");
    let b = b.expect("a memory store names its epoch");
    assert_eq!(a.len(), 16, "{a}");
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_ne!(a, b);
    // Every connection of one server is told the same.
    assert_eq!(hello_epoch(&first).await.unwrap(), a);
    first.stop().await.unwrap();
    second.stop().await.unwrap();

    let url = pg::fresh_database().await;
    let server = TestServer::start_with(pg_config(&url)).await;
    let db_epoch = hello_epoch(&server)
        .await
        .expect("PostgreSQL names its epoch");
    server.stop().await.unwrap();
    let server = TestServer::start_with(pg_config(&url)).await;
    assert_eq!(hello_epoch(&server).await.unwrap(), db_epoch);
    server.stop().await.unwrap();
    let other = TestServer::start_with(pg::config().await).await;
    assert_ne!(hello_epoch(&other).await.unwrap(), db_epoch);
    other.stop().await.unwrap();
}
