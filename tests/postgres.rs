//! The PostgreSQL store, against a real PostgreSQL: one private cluster for this test binary,
//! a fresh database per test, and the real binary in zero-config mode for restarts and kills.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::binary::{linechat, Binary};
use common::logs::Logs;
use common::{memory_config, parse_message, pg, Client, Message, TestServer, PATIENCE};
use linechat::managed_postgres::ManagedPostgres;
use linechat::store::postgres::{
    INSERT_MESSAGES, LATEST_ID, PAGE_NEWEST, PAGE_OLDEST, READ_RANGES, SESSION_SETTINGS,
};
use linechat::Config;

async fn pg_server() -> (TestServer, String) {
    let config = pg::config().await;
    let url = config.database_url.clone().unwrap();
    (TestServer::start_with(config).await, url)
}

fn ids(lines: &[String]) -> Vec<u64> {
    lines.iter().map(|l| parse_message(l).id).collect()
}

/// Says each text, pipelined, and returns the acked ids in order.
async fn say_all(c: &mut Client, texts: &[String]) -> Vec<u64> {
    let batch: String = texts.iter().map(|t| format!("SAY {t}\n")).collect();
    c.send_raw(batch.as_bytes()).await;
    let mut acked = Vec::new();
    for _ in texts {
        let (_, ok) = c.until("OK SAY ").await;
        acked.push(ok.split(' ').nth(2).unwrap().parse().unwrap());
    }
    acked
}

#[tokio::test]
async fn chat_history_and_paging_through_postgres() {
    let (server, url) = pg_server().await;
    let mut alice = server.login("alice").await;
    let mut bob = server.login("bob").await;
    alice.join("4").await;
    bob.join("4").await;
    alice.expect("JOINED 4 bob").await;
    bob.join("other").await;
    // Two rooms interleaved: ids increase within each room.
    let mut in_4 = Vec::new();
    for i in 0..30 {
        in_4.push(alice.say(&format!("four {i}")).await);
        let (_, msg) = bob.until("MSG 4 ").await;
        assert_eq!(parse_message(&msg).id, *in_4.last().unwrap());
        bob.say(&format!("other {i}")).await;
    }
    assert!(in_4.windows(2).all(|w| w[0] < w[1]));

    let mut late = server.login("late").await;
    let hist = late.join("4 LAST 10").await;
    assert_eq!(ids(&hist), in_4[20..]);
    assert_eq!(parse_message(&hist[0]).text, "four 20");
    late.send(&format!("HISTORY 4 BEFORE {} LIMIT 15", in_4[20]))
        .await;
    let (page, ok) = late.until("OK HISTORY").await;
    assert_eq!(
        (ids(&page), ok.as_str()),
        (in_4[5..20].to_vec(), "OK HISTORY 4 15")
    );
    late.send(&format!("HISTORY 4 BEFORE {} LIMIT 15", in_4[5]))
        .await;
    let (page, _) = late.until("OK HISTORY").await;
    assert_eq!(ids(&page), in_4[..5]);
    late.send(&format!("HISTORY 4 AFTER {} LIMIT 12", in_4[3]))
        .await;
    let (page, _) = late.until("OK HISTORY").await;
    assert_eq!(ids(&page), in_4[4..16]);
    late.send(&format!("HISTORY 4 AFTER {} BEFORE {}", in_4[3], in_4[6]))
        .await;
    let (page, _) = late.until("OK HISTORY").await;
    assert_eq!(ids(&page), in_4[4..6]);
    late.send(&format!("JOIN 4 SINCE {}", in_4[25])).await;
    let (since, ok) = late.until("OK JOIN").await;
    assert_eq!(ids(&since), in_4[26..]);
    assert_eq!(ok, format!("OK JOIN 4 4 {}", in_4[29]));

    // NICK recorded the users (in the background: wait for it), JOIN the rooms, and every
    // message references both.
    let db = pg::connect(&url).await;
    let mut users: Vec<String>;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        users = db
            .query("SELECT name FROM users ORDER BY name", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if users.len() == 3 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(users, ["alice", "bob", "late"]);
    let rooms: Vec<String> = db
        .query("SELECT name FROM rooms ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rooms, ["4", "other"]);
    let row = db
        .query_one(
            "SELECT count(*) FROM messages m JOIN users u ON u.id = m.user_id \
             JOIN rooms r ON r.id = m.room_id WHERE r.name = '4' AND u.name = 'alice'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 30);
    // The foreign keys hold for everyone else: no message for a room that does not exist,
    // and no deleting a room that has messages.
    let err = db
        .execute(
            "INSERT INTO messages (room_id, user_id, body) VALUES (-1, (SELECT min(id) FROM users), 'x')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
    let err = db
        .execute("DELETE FROM rooms WHERE name = '4'", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
    // And no message the server stored points anywhere it should not.
    let dangling: i64 = db
        .query_one(
            "SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM rooms r WHERE r.id = m.room_id) \
             OR NOT EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dangling, 0);
    let versions: Vec<i32> = db
        .query("SELECT version FROM schema_version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let all: Vec<i32> = linechat::store::postgres::migrations()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(versions, all);
    server.stop().await.unwrap();

    // A second start on the same database migrates nothing and keeps everything.
    let config = Config {
        store: linechat::StoreKind::Postgres,
        database_url: Some(url),
        ..memory_config()
    };
    let server = TestServer::start_with(config).await;
    let mut again = server.login("again").await;
    assert_eq!(ids(&again.join("4 LAST 30").await), in_4);
    let rows = db
        .query("SELECT version FROM schema_version", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), versions.len());
    server.stop().await.unwrap();
}

/// A database's schema as this test looks at it.
#[derive(Debug, PartialEq)]
struct Schema {
    /// `table.column type [NOT NULL] [identity] [DEFAULT ...]`, in table and column order.
    columns: Vec<String>,
    /// `table name definition` of every primary key, unique constraint and foreign key.
    keys: Vec<String>,
    /// `table index` of every index.
    indexes: Vec<String>,
    /// `schema_version`'s rows: (version, applied_at), if the table exists.
    versions: Vec<(i32, String)>,
}

async fn schema_of(db: &tokio_postgres::Client) -> Schema {
    let lines = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .filter_map(|i| r.get::<_, Option<String>>(i))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    let columns = db
        .query(
            "SELECT c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod), \
                    CASE WHEN a.attnotnull THEN 'NOT NULL' END, \
                    CASE a.attidentity WHEN 'a' THEN 'GENERATED ALWAYS AS IDENTITY' \
                                       WHEN 'd' THEN 'GENERATED BY DEFAULT AS IDENTITY' END, \
                    'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
             ORDER BY c.relname, a.attnum",
            &[],
        )
        .await
        .unwrap();
    let keys = db
        .query(
            "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) \
             FROM pg_constraint \
             WHERE connamespace = 'public'::regnamespace AND contype IN ('p', 'u', 'f', 'x') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let indexes = db
        .query(
            "SELECT tablename::text, indexname::text FROM pg_indexes \
             WHERE schemaname = 'public' ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let has_versions: bool = db
        .query_one(
            "SELECT to_regclass('public.schema_version') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let versions = if has_versions {
        db.query(
            "SELECT version, applied_at::text FROM schema_version ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    } else {
        Vec::new()
    };
    Schema {
        columns: lines(columns),
        keys: lines(keys),
        indexes: lines(indexes),
        versions,
    }
}

/// The migrations (which the server runs at start-up) make of an empty database exactly the
/// schema of schema.sql that the server's queries need, record every migration, and change
/// nothing when run again.
#[tokio::test]
async fn migrations_make_the_schema_the_server_needs_and_run_once() {
    use linechat::store::postgres::{
        migrate, migrations, DIRECTORY_STATEMENTS, HISTORY_EPOCH, INSERT_MESSAGES,
    };
    use tokio_postgres::types::Type;

    let db = pg::connect(&pg::fresh_database().await).await;
    assert_eq!(
        schema_of(&db).await,
        Schema {
            columns: vec![],
            keys: vec![],
            indexes: vec![],
            versions: vec![]
        },
        "a fresh database is empty"
    );
    migrate(&db).await.unwrap();
    let schema = schema_of(&db).await;
    assert_eq!(
        schema.columns,
        [
            "history_epoch.only_row boolean NOT NULL DEFAULT true",
            "history_epoch.epoch bigint NOT NULL",
            "live_names.key text NOT NULL",
            "live_names.name text NOT NULL",
            "live_names.node text NOT NULL",
            "live_names.conn bigint NOT NULL",
            "messages.id bigint NOT NULL GENERATED ALWAYS AS IDENTITY",
            "messages.room_id bigint NOT NULL",
            "messages.user_id bigint NOT NULL",
            "messages.body text NOT NULL",
            "messages.created_at timestamp with time zone NOT NULL DEFAULT now()",
            "nodes.origin text NOT NULL",
            "nodes.seen timestamp with time zone NOT NULL DEFAULT now()",
            "notify_channels.only_row boolean NOT NULL DEFAULT true",
            "notify_channels.messages text NOT NULL",
            "notify_channels.presence text NOT NULL",
            "presence.node text NOT NULL",
            "presence.conn bigint NOT NULL",
            "presence.room text NOT NULL",
            "presence.name text NOT NULL",
            "private_room_members.room text NOT NULL",
            "private_room_members.member text NOT NULL",
            "private_room_members.added_at timestamp with time zone NOT NULL DEFAULT now()",
            "private_rooms.room text NOT NULL",
            "private_rooms.owner text NOT NULL",
            "private_rooms.created_at timestamp with time zone NOT NULL DEFAULT now()",
            "rooms.id bigint NOT NULL GENERATED ALWAYS AS IDENTITY",
            "rooms.name text NOT NULL",
            "rooms.created_at timestamp with time zone NOT NULL DEFAULT now()",
            "schema_version.version integer NOT NULL",
            "schema_version.applied_at timestamp with time zone NOT NULL DEFAULT now()",
            "users.id bigint NOT NULL GENERATED ALWAYS AS IDENTITY",
            "users.name text NOT NULL",
            "users.created_at timestamp with time zone NOT NULL DEFAULT now()",
            "users.last_seen_at timestamp with time zone NOT NULL DEFAULT now()",
            "users.password_hash text",
        ],
        "the tables and their columns"
    );
    // The history queries scan (room_id, id); ON CONFLICT (name) needs the unique names. That
    // a message names a room and a user that exist is checked by triggers (tests/integrity.rs).
    // Private rooms are kept by name; their members go with them. A server's names and
    // presence go with its row in nodes.
    assert_eq!(
        schema.keys,
        [
            "history_epoch history_epoch_pkey PRIMARY KEY (only_row)",
            "live_names live_names_node_fkey FOREIGN KEY (node) REFERENCES nodes(origin) ON DELETE CASCADE",
            "live_names live_names_pkey PRIMARY KEY (key)",
            "messages messages_room_id_id PRIMARY KEY (room_id, id)",
            "nodes nodes_pkey PRIMARY KEY (origin)",
            "notify_channels notify_channels_pkey PRIMARY KEY (only_row)",
            "presence presence_node_fkey FOREIGN KEY (node) REFERENCES nodes(origin) ON DELETE CASCADE",
            "presence presence_pkey PRIMARY KEY (node, conn, room)",
            "private_room_members private_room_members_pkey PRIMARY KEY (room, member)",
            "private_room_members private_room_members_room_fkey FOREIGN KEY (room) REFERENCES private_rooms(room) ON DELETE CASCADE",
            "private_rooms private_rooms_pkey PRIMARY KEY (room)",
            "rooms rooms_name_key UNIQUE (name)",
            "rooms rooms_pkey PRIMARY KEY (id)",
            "schema_version schema_version_pkey PRIMARY KEY (version)",
            "users users_name_key UNIQUE (name)",
            "users users_pkey PRIMARY KEY (id)",
        ],
        "the keys"
    );
    // The keys' own indexes, and: a member's rooms (an account's removal), one registered
    // name per lower-case spelling, and a connection's held name. (room_id, id) is the only index of messages.
    assert_eq!(
        schema.indexes,
        [
            "history_epoch history_epoch_pkey",
            "live_names live_names_by_conn",
            "live_names live_names_pkey",
            "messages messages_room_id_id",
            "nodes nodes_pkey",
            "notify_channels notify_channels_pkey",
            "presence presence_pkey",
            "private_room_members private_room_members_member",
            "private_room_members private_room_members_pkey",
            "private_rooms private_rooms_pkey",
            "rooms rooms_name_key",
            "rooms rooms_pkey",
            "schema_version schema_version_pkey",
            "users users_name_key",
            "users users_pkey",
            "users users_registered_name",
        ],
        "the indexes"
    );
    let numbers: Vec<i32> = migrations().iter().map(|(n, _)| *n).collect();
    assert!(!numbers.is_empty());
    assert_eq!(
        schema.versions.iter().map(|v| v.0).collect::<Vec<_>>(),
        numbers,
        "schema_version holds every migration"
    );

    // The server's queries are prepared against these tables, with the types it reads.
    let statements = [
        (
            INSERT_MESSAGES,
            vec![
                Type::TEXT_ARRAY,
                Type::TEXT_ARRAY,
                Type::INT4_ARRAY,
                Type::INT4_ARRAY,
                Type::TEXT_ARRAY,
            ],
            vec![Type::INT8, Type::TIMESTAMPTZ, Type::INT8, Type::INT8],
        ),
        (
            PAGE_NEWEST,
            vec![Type::TEXT, Type::INT8, Type::INT8],
            vec![Type::INT8, Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT],
        ),
        (
            PAGE_OLDEST,
            vec![Type::TEXT, Type::INT8, Type::INT8, Type::INT8],
            vec![Type::INT8, Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT],
        ),
        (LATEST_ID, vec![Type::TEXT], vec![Type::INT8]),
        (
            READ_RANGES,
            vec![
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8,
            ],
            vec![
                Type::INT8,
                Type::INT8,
                Type::TIMESTAMPTZ,
                Type::TEXT,
                Type::TEXT,
            ],
        ),
        (HISTORY_EPOCH, vec![], vec![Type::INT8]),
    ];
    // The directory's statements (names and presence across servers) prepare too.
    for sql in DIRECTORY_STATEMENTS {
        db.prepare(sql).await.unwrap();
    }
    for (sql, params, columns) in statements {
        let prepared = db.prepare(sql).await.unwrap();
        assert_eq!(prepared.params(), params, "{sql}");
        let types: Vec<Type> = prepared
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        assert_eq!(types, columns, "{sql}");
    }

    // Migrating again changes nothing, not even when the migrations were recorded.
    migrate(&db).await.unwrap();
    assert_eq!(schema_of(&db).await, schema, "a second migration");
}

#[tokio::test]
async fn awkward_payloads_round_trip_byte_for_byte() {
    let (server, url) = pg_server().await;
    let mut a = server.login("a").await;
    let mut b = server.login("b").await;
    a.join("r").await;
    b.join("r").await;
    a.expect("JOINED r b").await;
    let payloads = [
        "'); DROP TABLE messages; --",
        "quote \" double \" and 'single'",
        "semi;colons;;; and back\\slashes \\n \\\\",
        "emoji 🎉👩‍💻🇳🇱 and CJK 你好",
        "RTL שלום עולם مرحبا",
        "  leading and trailing spaces  ",
        "tab\tseparated\tvalues",
        "$1 $$ %s %d {} ${var}",
        "combining e\u{301} and zero\u{200b}width",
    ];
    for p in payloads {
        let id = a.say(p).await;
        let m = parse_message(&b.line().await);
        assert_eq!((m.id, m.text.as_str()), (id, p));
    }
    let mut c = server.login("c").await;
    let hist = c.join("r").await;
    let texts: Vec<String> = hist.iter().map(|l| parse_message(l).text).collect();
    assert_eq!(texts, payloads);
    let db = pg::connect(&url).await;
    let stored: Vec<String> = db
        .query("SELECT body FROM messages ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, payloads);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn many_pipelining_clients_are_batched_in_order() {
    const CLIENTS: usize = 8;
    const EACH: usize = 250;
    let (server, url) = pg_server().await;
    let mut listener = server.login("listener").await;
    listener.join("r NONE").await;
    let mut talkers = Vec::new();
    for i in 0..CLIENTS {
        let mut c = server.login(&format!("t{i}")).await;
        c.join("r NONE").await;
        talkers.push(c);
    }
    let runs = talkers.into_iter().enumerate().map(|(i, mut c)| {
        tokio::spawn(async move {
            let texts: Vec<String> = (0..EACH).map(|n| format!("{i}:{n}")).collect();
            let acked = say_all(&mut c, &texts).await;
            assert!(acked.windows(2).all(|w| w[0] < w[1]), "acks in order");
            (c, acked)
        })
    });
    let results = futures::future::join_all(runs).await;
    let mut all: Vec<u64> = results
        .iter()
        .flat_map(|r| r.as_ref().unwrap().1.clone())
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), CLIENTS * EACH, "every id unique");
    // The listener sees them all, in id order, each sender's in its own order.
    let mut next = [0usize; CLIENTS];
    let mut last = 0;
    let mut got = 0;
    while got < CLIENTS * EACH {
        let line = listener.line().await;
        if !line.starts_with("MSG ") {
            continue;
        }
        let m = parse_message(&line);
        assert!(m.id > last);
        last = m.id;
        let (sender, n) = m.text.split_once(':').unwrap();
        let sender: usize = sender.parse().unwrap();
        assert_eq!(n, next[sender].to_string());
        next[sender] += 1;
        got += 1;
    }
    // The writer batched: fewer transactions than messages, one after another in id order.
    // Counted by the transaction that inserted each row (xmin), which is exact: timestamps
    // are not (a transaction's rows share now(), and two can commit in the same microsecond).
    let db = pg::connect(&url).await;
    let transactions: Vec<(i64, i64, i64)> = db
        .query(
            "SELECT min(id), max(id), count(*) FROM messages GROUP BY xmin::text ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let messages: i64 = transactions.iter().map(|t| t.2).sum();
    assert_eq!(messages as usize, CLIENTS * EACH);
    let commits = transactions.len() as i64;
    eprintln!("{commits} transactions for {messages} messages");
    assert!(
        commits < messages,
        "{commits} transactions for {messages} messages"
    );
    for pair in transactions.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "the ids of two transactions interleave: {pair:?}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn replay_and_live_meet_without_a_seam_in_postgres() {
    let (server, _) = pg_server().await;
    common::check_replay_seam(&server).await;
    server.stop().await.unwrap();
}

/// The lag policy with the store it was made for: the gap comes back from PostgreSQL.
#[tokio::test]
async fn a_slow_reader_catches_up_from_postgres() {
    let config = Config {
        outbound_limit: 256 * 1024,
        ..pg::config().await
    };
    let server = TestServer::start_with(config).await;
    common::check_lag_and_replay(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn replay_from_a_room_of_100000_messages_uses_the_index() {
    let (server, url) = pg_server().await;
    let mut seed = server.login("seed").await;
    seed.join("big").await;
    seed.say("first").await;
    // Another busy room first, so that the big room's ids are not simply the table's.
    seed.join("noise").await;
    seed.say("noise").await;
    db_bulk(&url, "noise", 20_000).await;
    seed.join("big").await;
    let db = pg::connect(&url).await;
    db.batch_execute(
        "INSERT INTO messages (room_id, user_id, body)
         SELECT r.id, u.id, 'bulk ' || g
         FROM rooms r, users u, generate_series(1, 99999) g
         WHERE r.name = 'big' AND u.name = 'seed';
         ANALYZE messages;",
    )
    .await
    .unwrap();
    let newest: i64 = db
        .query_one("SELECT max(id) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    let newest = newest as u64;

    let mut c = server.login("reader").await;
    c.send("JOIN big").await;
    let (hist, ok) = c.until("OK JOIN").await;
    assert_eq!(hist.len(), 50);
    assert_eq!(ok, format!("OK JOIN big 50 {newest}"));
    assert_eq!(parse_message(hist.last().unwrap()).text, "bulk 99999");
    c.send(&format!("JOIN big SINCE {}", newest - 1200)).await;
    let (hist, ok) = c.until("OK JOIN").await;
    assert_eq!(ids(&hist), ((newest - 1199)..=newest).collect::<Vec<_>>());
    assert_eq!(ok, format!("OK JOIN big 1200 {newest}"));
    c.send("HISTORY big AFTER 0 LIMIT 3").await;
    let (hist, _) = c.until("OK HISTORY").await;
    let texts: Vec<String> = hist.iter().map(|l| parse_message(l).text).collect();
    assert_eq!(texts, ["first", "bulk 1", "bulk 2"]);
    c.send("HISTORY noise LIMIT 2").await;
    let (hist, _) = c.until("OK HISTORY").await;
    let texts: Vec<String> = hist.iter().map(|l| parse_message(l).text).collect();
    assert_eq!(texts, ["bulk 19999", "bulk 20000"]);

    // Each history query is an index scan on (room_id, id), never a scan of the table, in
    // the generic plan that the server's connections use (plan_cache_mode, pool.rs).
    db.batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let plans = [
        (
            PAGE_NEWEST,
            "'big', 9223372036854775807::bigint, 50::bigint",
        ),
        (
            PAGE_OLDEST,
            "'big', 500::bigint, 9223372036854775807::bigint, 50::bigint",
        ),
        (LATEST_ID, "'big'"),
        (
            READ_RANGES,
            "ARRAY['big'], ARRAY[500::bigint], ARRAY[600::bigint], 4096::bigint",
        ),
    ];
    for (query, args) in plans {
        db.batch_execute(&format!("PREPARE q AS {query}"))
            .await
            .unwrap();
        let plan: Vec<String> = db
            .query(&format!("EXPLAIN EXECUTE q({args})"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        db.batch_execute("DEALLOCATE q").await.unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("messages_room_id_id"), "{query}\n{plan}");
        assert!(!plan.contains("Seq Scan on messages"), "{query}\n{plan}");
    }
    server.stop().await.unwrap();
}

/// A message from a user whose name was never recorded (NICK's record skipped, or not yet
/// done) is stored all the same, its name recorded then, and without a refused INSERT first:
/// an ERROR there wrote the failing row, text and all, to the database's log, and took ids
/// (from the hostile review of the change).
#[tokio::test]
async fn a_first_message_from_an_unrecorded_user_is_stored_without_a_refused_insert() {
    use linechat::store::postgres::{PgSettings, PgStore, PgTls};
    use linechat::store::{HistoryStore, NewMessage};
    let url = pg::fresh_database().await;
    let store = PgStore::connect(PgSettings {
        config: url.parse().unwrap(),
        tls: PgTls::disabled(),
        pool_size: 2,
        timeout: Duration::from_secs(10),
        startup_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    store.record_room("r").await.unwrap();
    let message = |nick: &str, text: &str| NewMessage {
        room: "r".into(),
        nick: nick.into(),
        text: text.into(),
    };
    let db = pg::connect(&url).await;
    let rollbacks = || async {
        let row = db
            .query_one(
                "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let before = rollbacks().await;
    let stored = store
        .append(&[message("fresh", "secret text"), message("newer", "more")])
        .await
        .unwrap();
    // A fresh database: the first message is id 1 unless an INSERT took ids and failed first.
    let ids: Vec<u64> = stored.iter().map(|m| m.id).collect();
    assert_eq!(ids, [1, 2]);
    let in_history: Vec<(String, String)> = db
        .query(
            "SELECT u.name, m.body FROM messages m JOIN users u ON u.id = m.user_id ORDER BY m.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        in_history,
        [
            ("fresh".to_string(), "secret text".to_string()),
            ("newer".to_string(), "more".to_string())
        ]
    );
    // Statistics reach the view once a backend reports them: wait for them a little.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    db.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    assert_eq!(rollbacks().await, before, "no statement was refused");
}

/// A crowd logging in at once (the clients of a restarted server) is recorded whole, the
/// names gathered into a few statements, so that their first messages need not record them.
/// (One upsert, one commit, per NICK, at most two at a time, skipped NICKs when busy: a third
/// of a `chat` run's batches first failed for a missing user, BENCHMARKS.md.)
#[tokio::test]
async fn a_crowd_logging_in_at_once_is_recorded_whole() {
    const CROWD: usize = 300;
    let (server, url) = pg_server().await;
    let logins = (0..CROWD).map(|i| {
        let addr = server.addr;
        tokio::spawn(async move { Client::login(addr, &format!("crowd{i}")).await })
    });
    let mut crowd = Vec::new();
    for login in logins {
        crowd.push(login.await.unwrap());
    }
    let db = pg::connect(&url).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let recorded: i64 = db
            .query_one("SELECT count(*) FROM users WHERE name LIKE 'crowd%'", &[])
            .await
            .unwrap()
            .get(0);
        if recorded == CROWD as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{recorded} of {CROWD} names recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(crowd);
    server.stop().await.unwrap();
}

/// A batch finds its rooms and users through their indexes, in its triggers' queries too,
/// with what the server's connections set (`SESSION_SETTINGS`), even in a small database (a
/// thousand rooms): left to choose, PostgreSQL's generic plan read every room for every batch
/// there (BENCHMARKS.md, "Paced traffic").
#[tokio::test]
async fn a_batch_finds_rooms_and_users_by_index_in_a_small_database() {
    let url = pg::fresh_database().await;
    let setup = pg::connect(&url).await;
    linechat::store::postgres::migrate(&setup)
        .await
        .expect("migrate");
    let db = pg::connect(&url).await;
    db.batch_execute(SESSION_SETTINGS).await.unwrap();
    let insert = db.prepare(INSERT_MESSAGES).await.unwrap();
    let batch = |rooms: Vec<&'static str>, users: Vec<&'static str>, n: usize| {
        let room_of: Vec<i32> = (0..n).map(|i| (i % rooms.len()) as i32 + 1).collect();
        let user_of: Vec<i32> = (0..n).map(|i| (i % users.len()) as i32 + 1).collect();
        let bodies: Vec<String> = (0..n).map(|i| format!("message {i}")).collect();
        (rooms, users, room_of, user_of, bodies)
    };
    // Tables of a small server, analyzed: small enough that reading them whole looks cheap.
    setup
        .batch_execute(
            "INSERT INTO rooms (name) SELECT 'room' || g FROM generate_series(0, 1000) g;
             INSERT INTO users (name) SELECT 'user' || g FROM generate_series(0, 5000) g;
             ANALYZE rooms; ANALYZE users;",
        )
        .await
        .unwrap();
    // The first batch plans the statement and its triggers' queries.
    let first = batch(vec!["room0"], vec!["user0"], 1);
    db.query(&insert, &[&first.0, &first.1, &first.2, &first.3, &first.4])
        .await
        .unwrap();
    // This session's scans not yet reported (earlier transactions' among them), read in one
    // transaction before the batch and after it.
    let scans = || async {
        let rows = db
            .query(
                "SELECT relname::text, seq_scan, coalesce(idx_scan, 0) \
                 FROM pg_stat_xact_user_tables WHERE relname IN ('rooms', 'users') \
                 ORDER BY relname",
                &[],
            )
            .await
            .unwrap();
        let scans: Vec<(String, i64, i64)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        scans
    };
    db.batch_execute("BEGIN").await.unwrap();
    let before = scans().await;
    let next = batch(
        vec!["room7", "room999"],
        vec!["user3", "user4999", "user0"],
        6,
    );
    let stored = db
        .query(&insert, &[&next.0, &next.1, &next.2, &next.3, &next.4])
        .await
        .unwrap();
    assert_eq!(stored.len(), 6);
    let after = scans().await;
    db.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(after.len(), 2, "{after:?}");
    for ((table, seq, idx), (_, seq_before, idx_before)) in after.iter().zip(&before) {
        assert_eq!(
            seq, seq_before,
            "{table} read whole: {before:?} -> {after:?}"
        );
        assert!(
            idx > idx_before,
            "{table} not read by index: {before:?} -> {after:?}"
        );
    }
}

/// Adds `n` messages to `room` straight into the database.
async fn db_bulk(url: &str, room: &str, n: i32) {
    let db = pg::connect(url).await;
    db.execute(
        "INSERT INTO messages (room_id, user_id, body)
         SELECT r.id, (SELECT min(id) FROM users), 'bulk ' || g
         FROM rooms r, generate_series(1, $2) g WHERE r.name = $1",
        &[&room, &n],
    )
    .await
    .unwrap();
}

/// A private PostgreSQL cluster under `dir` that a test may stop and restart, and a server
/// on it with `config`'s other settings.
async fn server_on_own_cluster(dir: &Path, config: Config) -> (TestServer, ManagedPostgres) {
    let (cluster, config) = pg::own_cluster(dir, Duration::from_secs(2), config).await;
    (TestServer::start_with(config).await, cluster)
}

/// The process id of the child of `parent` whose command line starts with `title` (a
/// PostgreSQL auxiliary process, such as `postgres: checkpointer`).
fn child_process(parent: i32, title: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The parent's id is the second field after the parenthesised command name.
            let ppid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (ppid == parent && cmdline.starts_with(title.as_bytes())).then_some(pid)
        })
}

/// Sends `signal` (`-STOP`, `-CONT`) to a process.
fn signal_process(pid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Dropping a running [`ManagedPostgres`] (as an async server does when start-up fails after
/// the cluster started) never waits for a process: it only asks the postmaster to shut
/// down. Proved with the postmaster frozen (SIGSTOP): a drop that waited for it to stop, as
/// `pg_ctl stop -w` does, could not return; this one does. And a server started on the
/// same data directory while that shutdown is still under way (its checkpointer frozen, so
/// the shutdown cannot finish) waits for it to end and runs a fresh PostgreSQL, rather than
/// adopt one that is about to be gone.
#[tokio::test]
async fn dropping_a_managed_postgres_asks_it_to_stop_without_waiting() {
    let dir = pg::temp_dir("drop");
    let _cleanup = pg::DirGuard(dir.clone());
    let cluster = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || pg::start_cluster(&dir)
    })
    .await
    .unwrap();
    let pid = cluster
        .postmaster_pid()
        .expect("the running postmaster is found");
    let checkpointer =
        child_process(pid, "postgres: checkpointer").expect("the postmaster's checkpointer");
    let alive = move || unsafe { libc::kill(pid, 0) } == 0;
    let pid_file = dir.join("pgdata/postmaster.pid");
    let status = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().nth(7).map(|s| s.trim().to_string()))
    };
    assert_eq!(status().as_deref(), Some("ready"));
    signal_process(checkpointer, "-STOP");
    signal_process(pid, "-STOP");
    // On a thread of its own, so that a drop that waits cannot hang the test (it would wait
    // for a minute, pg_ctl's limit, which is longer than the patience window).
    let dropping = std::thread::spawn(move || drop(cluster));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !dropping.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped = dropping.is_finished();
    let frozen_still_alive = alive();
    signal_process(pid, "-CONT");
    if !dropped {
        signal_process(checkpointer, "-CONT");
    }
    assert!(dropped, "the drop returned while the postmaster was frozen");
    assert!(
        frozen_still_alive,
        "a frozen postmaster cannot have stopped yet"
    );

    // The shutdown begins, and cannot end while the checkpointer is frozen.
    while status().as_deref() != Some("stopping") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shutdown begins"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let again = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || pg::start_cluster(&dir)
    });
    // Give the new start time to find the old postmaster stopping (if it does not get there
    // first, the test proves less, but does not fail for that).
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal_process(checkpointer, "-CONT");
    let again = again.await.unwrap();
    let fresh = again.postmaster_pid().expect("a new postmaster runs");
    assert_ne!(
        fresh, pid,
        "a fresh postmaster, not the one that was stopping"
    );
    // (pg_ctl's wait ends when the old postmaster removed its pid file, a moment before the
    // process is gone.)
    while alive() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old postmaster exits"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let db = pg::connect(&again.url("postgres")).await;
    db.simple_query("SELECT 1")
        .await
        .expect("the new cluster serves");
}

/// The database stops under a live server: SAY, JOIN and HISTORY get STORE_UNAVAILABLE,
/// connections stay up, and once the database is back the server recovers by itself with
/// every acknowledged message in place.
#[tokio::test]
async fn database_stopped_and_started_under_a_live_server() {
    let dir = pg::temp_dir("outage");
    let _cleanup = pg::DirGuard(dir.clone());
    let (server, cluster) = server_on_own_cluster(&dir, memory_config()).await;
    let mut a = server.login("a").await;
    let mut b = server.login("b").await;
    a.join("r").await;
    b.join("r").await;
    a.expect("JOINED r b").await;
    let mut acked = vec![a.say("before").await];
    let (_, msg) = b.until("MSG ").await;
    assert_eq!(parse_message(&msg).id, acked[0]);

    pg::stop_cluster(cluster).await;

    a.send("SAY during").await;
    a.expect_err("STORE_UNAVAILABLE").await;
    a.send("HISTORY r").await;
    a.expect_err("STORE_UNAVAILABLE").await;
    b.send("JOIN elsewhere").await;
    b.expect_err("STORE_UNAVAILABLE").await;
    // Live connections stay up and the rest of the protocol works.
    a.expect_nothing_pending().await;
    b.expect_nothing_pending().await;
    b.send("WHO r").await;
    b.expect("MEMBER r a").await;
    b.expect("MEMBER r b").await;
    b.expect("OK WHO r 2").await;

    pg::restart_cluster(&dir).await.detach();
    // Recovery needs no help: keep saying until the store takes messages again.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        a.send("SAY after").await;
        let reply = a.reply().await;
        if reply.starts_with("OK SAY ") {
            acked.push(reply.split(' ').nth(2).unwrap().parse().unwrap());
            break;
        }
        assert!(reply.starts_with("ERR STORE_UNAVAILABLE"), "{reply}");
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not recover"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    acked.push(a.say("and again").await);
    // b got the acked messages live, and nothing that was refused.
    let mut live = vec![acked[0]];
    while live.len() < acked.len() {
        let line = b.line().await;
        if line.starts_with("MSG ") {
            let m = parse_message(&line);
            assert_ne!(m.text, "during");
            live.push(m.id);
        }
    }
    assert_eq!(live, acked);
    let mut c = server.login("c").await;
    let hist = c.join("r").await;
    assert_eq!(ids(&hist), acked);
    server.stop().await.unwrap();
}

/// What the server logs when the store refuses a catch-up, which it then retries.
const CATCH_UP_DEFERRED: &str = "catch-up after a lag deferred";

/// A lagging member's catch-up meets a database outage: the server keeps trying (once a
/// second) without announcing the lag twice, and once the database is back the member gets
/// every message, once, in order.
///
/// A refused attempt is invisible to the client by design (`LAGGED` is sent only once the
/// store has answered), so this test reads the server's log (captured in the test process,
/// [`Logs`]) to know that the catch-up really was tried, and refused, while the database was
/// down; everything else is checked by what the client sees.
#[tokio::test]
async fn a_catch_up_waits_out_a_database_outage() {
    const TOTAL: usize = 2000;
    let logs = Logs::capture();
    let dir = pg::temp_dir("catchup");
    let _cleanup = pg::DirGuard(dir.clone());
    let config = Config {
        outbound_limit: 64 * 1024,
        ..memory_config()
    };
    let (server, cluster) = server_on_own_cluster(&dir, config).await;
    let mut talker = server.login("talker").await;
    talker.join("r").await;
    // A small receive buffer: the kernel must not hold the whole gap for it.
    let mut slow = Client::connect_small(server.addr).await;
    slow.send("NICK slow").await;
    slow.expect("OK NICK slow").await;
    slow.join("r").await;
    talker.expect("JOINED r slow").await;
    let payload = "p".repeat(3000);
    let acked = common::talk_in_chunks(&mut talker, 0..TOTAL, &payload).await;

    pg::stop_cluster(cluster).await;

    // `slow` takes what was queued for it; once all of that is written out, the server tries
    // to catch it up from the store, which is down.
    let mut lines = Vec::new();
    loop {
        tokio::select! {
            line = slow.line() => lines.push(line),
            _ = logs.wait_for(CATCH_UP_DEFERRED, 1) => break,
        }
    }
    // Whatever was written before the refusal comes before this PONG.
    slow.send("PING drained").await;
    let (rest, _) = slow.until("PONG drained").await;
    lines.extend(rest);
    let drained: Vec<Message> = lines
        .iter()
        .filter(|l| l.starts_with("MSG "))
        .map(|l| parse_message(l))
        .collect();
    assert!(
        drained.len() < TOTAL,
        "the gap cannot arrive while the database is down"
    );
    // Two more attempts are refused, and the client sees nothing of them: no message, and no
    // LAGGED for a catch-up that could not start.
    let refusals = logs.count(CATCH_UP_DEFERRED);
    logs.wait_for(CATCH_UP_DEFERRED, refusals + 2).await;
    slow.expect_nothing_pending().await;

    pg::restart_cluster(&dir).await.detach();

    // Once the database is back, the next line announces the catch-up, from the last message
    // delivered; then the rest of the gap follows.
    let last_shown = drained.last().map_or(0, |m| m.id);
    let lagged = slow.line().await;
    assert!(
        lagged.starts_with(&format!("LAGGED r {last_shown} ")),
        "{lagged}"
    );
    // Every message once, in order: what was drained (with the LAGGED lines of earlier
    // catch-ups, made while the talker talked), then the rest, with no other LAGGED.
    let mut ids = Vec::new();
    let mut drained_lines = lines.into_iter();
    let mut lagged_after_outage = 1;
    while ids.len() < TOTAL {
        let (line, after_outage) = match drained_lines.next() {
            Some(line) => (line, false),
            None => (slow.line().await, true),
        };
        if line.starts_with("LAGGED r ") {
            lagged_after_outage += usize::from(after_outage);
            continue;
        }
        let m = parse_message(&line);
        assert_eq!(m.text, format!("{} {payload}", ids.len()), "{line:.40}");
        ids.push(m.id);
    }
    assert_eq!(ids, acked);
    assert_eq!(
        lagged_after_outage, 1,
        "the lag is announced once, however many retries it takes"
    );
    slow.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

/// The real binary in zero-config mode on `data_dir`; killed if the test fails half-way.
fn zero_config(data_dir: &Path) -> Binary {
    Binary::start(
        linechat()
            .args(["--listen", "127.0.0.1:0", "--rate", "0", "--data-dir"])
            .arg(data_dir)
            .env_remove("DATABASE_URL"),
    )
}

/// Zero-config mode end to end: history survives a clean restart, and a SIGKILL right after
/// the acks loses nothing and duplicates nothing.
#[tokio::test]
async fn zero_config_history_survives_restart_and_sigkill() {
    // A space in the path, as in macOS's "Application Support".
    let dir = pg::temp_dir("zero config");
    let _cleanup = pg::DirGuard(dir.clone());
    let mut server = zero_config(&dir);
    let mut c = Client::connect(server.addr).await;
    c.send("NICK writer").await;
    c.expect("OK NICK writer").await;
    c.join("4").await;
    let texts: Vec<String> = (0..300).map(|i| format!("durable {i}")).collect();
    let mut acked = say_all(&mut c, &texts).await;
    // Killed the moment the last ack is read: no chance to flush or shut down.
    server.signal("-KILL");
    assert!(!server.wait().await.success());

    let mut server = zero_config(&dir);
    let mut c = Client::connect(server.addr).await;
    c.send("NICK reader").await;
    c.expect("OK NICK reader").await;
    let hist = c.join("4 SINCE 0").await;
    assert_eq!(ids(&hist), acked, "every acked message, once, in order");
    let stored: Vec<String> = hist.iter().map(|l| parse_message(l).text).collect();
    assert_eq!(stored, texts);
    acked.push(c.say("after the crash").await);

    // A second server on the same data dir is refused, and the first one carries on.
    let output = linechat()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another linechat server is using"),
        "{stderr}"
    );
    acked.push(c.say("still here").await);

    server.signal("-TERM");
    c.expect("BYE server shutting down").await;
    assert!(server.wait().await.success(), "SIGTERM exits 0");
    assert!(
        !dir.join("pgdata/postmaster.pid").exists(),
        "a clean shutdown stops the private PostgreSQL"
    );

    let mut server = zero_config(&dir);
    let mut c = Client::connect(server.addr).await;
    c.send("NICK third").await;
    c.expect("OK NICK third").await;
    assert_eq!(ids(&c.join("4 SINCE 0").await), acked);
    server.signal("-TERM");
    assert!(server.wait().await.success());
}

#[tokio::test]
async fn missing_postgresql_programs_say_what_to_install() {
    let dir = pg::temp_dir("nobin");
    let output = linechat()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--pg-bin-dir",
            "/nonexistent/bin",
            "--data-dir",
        ])
        .arg(&dir)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
    assert!(stderr.contains("--store memory"), "{stderr}");
    assert!(stderr.contains("/nonexistent/bin"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What one pipelining client saw of a server that was signalled under load.
struct LoadOutcome {
    acked: Vec<u64>,
    refused: usize,
    saw_bye: bool,
}

/// Four clients pipeline SAYs into room `load` as fast as the server takes them; once 2,000
/// are acked the server gets `signal`. Returns what each client saw, once the server exited.
async fn signal_under_load(
    mut server: Binary,
    signal: &str,
) -> (Vec<LoadOutcome>, std::process::ExitStatus) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let total_acked = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for k in 0..4 {
        // A raw connection per client, so that writing and reading run apart.
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let done = Arc::new(AtomicBool::new(false));
        let signal = signal.to_string();
        let writing = {
            let done = done.clone();
            tokio::spawn(async move {
                let _ = write
                    .write_all(format!("NICK w{k}\nJOIN load NONE\n").as_bytes())
                    .await;
                let mut i = 0;
                while !done.load(Ordering::Relaxed) && i < 50_000 {
                    let chunk: String = (i..i + 25)
                        .map(|n| format!("SAY {signal} w{k} {n}\n"))
                        .collect();
                    if write.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    i += 25;
                }
                let _ = write.shutdown().await;
            })
        };
        let total_acked = total_acked.clone();
        let reading = tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            let mut outcome = LoadOutcome {
                acked: Vec::new(),
                refused: 0,
                saw_bye: false,
            };
            // A reset (after SIGKILL) ends the stream like a close.
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("OK SAY ") {
                    outcome
                        .acked
                        .push(rest.split(' ').next().unwrap().parse().unwrap());
                    total_acked.fetch_add(1, Ordering::Relaxed);
                } else if line.starts_with("ERR SHUTTING_DOWN ") {
                    outcome.refused += 1;
                } else if line.starts_with("BYE ") {
                    assert_eq!(line, "BYE server shutting down");
                    outcome.saw_bye = true;
                    done.store(true, Ordering::Relaxed);
                } else {
                    assert!(
                        [
                            "HELLO ",
                            "OK NICK ",
                            "OK JOIN ",
                            "MSG load ",
                            "JOINED ",
                            "LEFT "
                        ]
                        .iter()
                        .any(|p| line.starts_with(p)),
                        "unexpected {line:.80}"
                    );
                }
            }
            done.store(true, Ordering::Relaxed);
            outcome
        });
        clients.push((writing, reading));
    }
    tokio::time::timeout(common::PATIENCE, async {
        while total_acked.load(Ordering::Relaxed) < 2000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the clients get going");
    server.signal(signal);
    let status = server.wait().await;
    let mut outcomes = Vec::new();
    for (writing, reading) in clients {
        let outcome = tokio::time::timeout(common::PATIENCE, reading)
            .await
            .expect("every client sees the end")
            .unwrap();
        writing.await.unwrap();
        outcomes.push(outcome);
    }
    (outcomes, status)
}

/// Every message in room `load` after a restart: (id, text), oldest first.
async fn stored_load(dir: &Path) -> (Binary, Vec<(u64, String)>) {
    let server = zero_config(dir);
    let mut c = Client::login(server.addr, "auditor").await;
    let stored = c
        .join("load SINCE 0")
        .await
        .iter()
        .map(|l| {
            let m = parse_message(l);
            (m.id, m.text)
        })
        .collect();
    (server, stored)
}

/// SIGTERM under load: every SAY the server read was either stored and acked or refused,
/// every client got `BYE`, the exit is clean, and history holds exactly the acked messages.
/// Then SIGKILL under load: every acked message survives, and nothing is stored twice.
#[tokio::test]
async fn sigterm_and_sigkill_under_load_lose_nothing_acked() {
    let dir = pg::temp_dir("under load");
    let _cleanup = pg::DirGuard(dir.clone());

    let (outcomes, status) = signal_under_load(zero_config(&dir), "-TERM").await;
    assert!(status.success(), "SIGTERM under load exits 0: {status:?}");
    let mut acked: Vec<u64> = outcomes.iter().flat_map(|o| o.acked.clone()).collect();
    acked.sort_unstable();
    assert!(outcomes.iter().all(|o| o.saw_bye), "every client got BYE");
    let refused: usize = outcomes.iter().map(|o| o.refused).sum();
    eprintln!(
        "SIGTERM under load: {} acked, {refused} refused",
        acked.len()
    );
    let (mut server, stored) = stored_load(&dir).await;
    let stored_ids: Vec<u64> = stored.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        stored_ids, acked,
        "history holds exactly the acked messages ({refused} refused)"
    );

    server.signal("-TERM");
    assert!(server.wait().await.success());
    let (outcomes, status) = signal_under_load(zero_config(&dir), "-KILL").await;
    assert!(!status.success());
    let (mut server, stored) = stored_load(&dir).await;
    let stored_ids: Vec<u64> = stored.iter().map(|(id, _)| *id).collect();
    assert!(
        stored_ids.windows(2).all(|w| w[0] < w[1]),
        "ids in order, none twice"
    );
    let mut texts: Vec<&String> = stored.iter().map(|(_, t)| t).collect();
    let count = texts.len();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), count, "no message stored twice");
    for o in &outcomes {
        for id in &o.acked {
            assert!(
                stored_ids.binary_search(id).is_ok(),
                "acked {id} survives SIGKILL"
            );
        }
    }
    server.signal("-TERM");
    assert!(server.wait().await.success());
}

/// A member that reads nothing while 60 MB go through its room costs the server a bounded
/// amount of memory (its queue stops at `--outbound-limit`; the rest stays in PostgreSQL),
/// the attentive member gets everything as it happens, and once the slow one reads it gets
/// all 20,000 messages too, from the store, without having been dropped.
#[tokio::test]
async fn a_slow_reader_costs_bounded_memory_and_loses_nothing() {
    const WARM_UP: usize = 1000;
    const TOTAL: usize = 20_000;
    let dir = pg::temp_dir("slow reader");
    let _cleanup = pg::DirGuard(dir.clone());
    let mut server = zero_config(&dir);
    let mut talker = Client::login(server.addr, "talker").await;
    talker.join("r").await;
    let mut reader = Client::login(server.addr, "reader").await;
    reader.join("r").await;
    let mut stuck = Client::login(server.addr, "stuck").await;
    stuck.join("r").await;
    reader.expect("JOINED r stuck").await;
    let payload = "p".repeat(3000);
    let text_of = |i: usize| format!("{i} {}", "p".repeat(3000));
    let reading = tokio::spawn(async move {
        let texts = common::read_room(&mut reader, "r", "talker", TOTAL).await;
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(*text, text_of(i), "the attentive member misses nothing");
        }
        reader
    });
    // Warm up (the first megabytes also fill `stuck`'s queue and socket buffers), measure,
    // then send the rest.
    let mut acked = common::talk_in_chunks(&mut talker, 0..WARM_UP, &payload).await;
    let before = server.rss_kib();
    acked.extend(common::talk_in_chunks(&mut talker, WARM_UP..TOTAL, &payload).await);
    let after = server.rss_kib();
    eprintln!(
        "server RSS {before} KiB -> {after} KiB while 57 MB passed a member that read nothing"
    );
    assert!(
        after < before + 16 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    let _reader = reading.await.unwrap();

    // Now it reads: every message, once, in order, then it is still a member.
    let texts = common::read_room(&mut stuck, "r", "talker", TOTAL).await;
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(*text, format!("{i} {payload}"));
    }
    stuck.expect_nothing_pending().await;
    talker.say("welcome back").await;
    assert_eq!(parse_message(&stuck.line().await).text, "welcome back");
    assert_eq!(acked.len(), TOTAL);
    server.signal("-TERM");
    assert!(server.wait().await.success());
}

/// One line of a member that lags and catches up, added to what it has seen: messages as
/// (id, text), and for each `LAGGED`, how many messages had come before it. Every `LAGGED`
/// names the last message delivered before it.
fn take_line(line: &str, got: &mut Vec<(u64, String)>, lagged: &mut Vec<usize>) {
    if let Some(rest) = line.strip_prefix("LAGGED r ") {
        let after: u64 = rest.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(
            after,
            got.last().map_or(0, |m| m.0),
            "LAGGED names the last id delivered: {line}"
        );
        lagged.push(got.len());
    } else {
        let m = parse_message(line);
        assert_eq!(m.kind, "MSG", "{line:.60}");
        got.push((m.id, m.text));
    }
}

/// The database goes away half-way through a long catch-up while the room keeps talking:
/// what was queued live meanwhile must not overtake the rest of the gap. Once the database
/// is back, the member has every acked message, once, in order.
///
/// The member stops reading half-way through the gap, so the catch-up is under way (waiting
/// for it to read) when the live messages are said and the database stops. That the
/// catch-up's next read of the store was then refused is read from the server's log, as in
/// `a_catch_up_waits_out_a_database_outage`; the client sees that nothing comes while the
/// database is down, and that the catch-up is announced again from where it was cut.
#[tokio::test]
async fn a_catch_up_cut_short_by_an_outage_loses_nothing() {
    const GAP: usize = 12_000;
    let logs = Logs::capture();
    let dir = pg::temp_dir("cutshort");
    let _cleanup = pg::DirGuard(dir.clone());
    let config = Config {
        outbound_limit: 64 * 1024,
        max_page: 100,
        ..memory_config()
    };
    let (server, cluster) = server_on_own_cluster(&dir, config).await;
    let mut talker = server.login("talker").await;
    talker.join("r").await;
    // A small receive buffer: the kernel must not hold the whole gap for it.
    let mut slow = Client::connect_small(server.addr).await;
    slow.send("NICK slow").await;
    slow.expect("OK NICK slow").await;
    slow.join("r").await;
    talker.expect("JOINED r slow").await;
    let payload = "p".repeat(3000);
    let mut acked = common::talk_in_chunks(&mut talker, 0..GAP, &payload).await;

    // `slow` reads half the gap: by then it is catching up, from the store a page (100
    // messages) at a time, each page read once the last one is written out. Then it stops
    // reading, and the catch-up waits for it, half-way.
    let (mut got, mut lagged) = (Vec::new(), Vec::new());
    while got.len() < GAP / 2 {
        take_line(&slow.line().await, &mut got, &mut lagged);
    }
    assert!(!lagged.is_empty(), "slow lagged and is catching up");
    // Live traffic queued behind the catch-up, then the outage.
    for i in 0..20 {
        acked.push(talker.say(&format!("live {i}")).await);
    }
    pg::stop_cluster(cluster).await;
    // `slow` reads again: the catch-up writes out the page it has, and its next read of the
    // store is refused.
    loop {
        tokio::select! {
            line = slow.line() => take_line(&line, &mut got, &mut lagged),
            _ = logs.wait_for(CATCH_UP_DEFERRED, 1) => break,
        }
    }
    // Whatever was written before the refusal comes before this PONG.
    slow.send("PING cut").await;
    let (rest, _) = slow.until("PONG cut").await;
    for line in &rest {
        take_line(line, &mut got, &mut lagged);
    }
    let cut_at = got.len();
    assert!(
        cut_at < GAP,
        "the catch-up was cut short: {cut_at} of {GAP} messages had come"
    );
    if let Some(i) = (0..cut_at).find(|&i| got[i].1 != format!("{i} {payload}")) {
        panic!(
            "message {i} is {:.20}: live traffic overtook the gap",
            got[i].1
        );
    }
    // While the database is down nothing more comes (a retry is refused too): not the rest of
    // the gap, and not the live messages queued behind it, which would overtake the gap.
    let refusals = logs.count(CATCH_UP_DEFERRED);
    logs.wait_for(CATCH_UP_DEFERRED, refusals + 1).await;
    slow.expect_nothing_pending().await;

    pg::restart_cluster(&dir).await.detach();
    let deadline = std::time::Instant::now() + PATIENCE;
    let end = loop {
        talker.send("SAY the end").await;
        let reply = talker.reply().await;
        if let Some(rest) = reply.strip_prefix("OK SAY ") {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
        assert!(reply.starts_with("ERR STORE_UNAVAILABLE"), "{reply}");
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not recover"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    acked.push(end);

    // The catch-up is announced again, from where it was cut, before anything else comes;
    // then the rest of the gap, the live messages and the last one, once each, in order.
    let lagged_before_outage = lagged.len();
    while got.last().is_none_or(|m| m.1 != "the end") {
        take_line(&slow.line().await, &mut got, &mut lagged);
    }
    assert_eq!(
        lagged[lagged_before_outage..],
        [cut_at],
        "one LAGGED after the outage, before any message"
    );
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, acked, "every acked message, once, in order");
    for (i, (_, text)) in got.iter().take(GAP).enumerate() {
        assert_eq!(*text, format!("{i} {payload}"));
    }
    slow.expect_nothing_pending().await;
    server.stop().await.unwrap();
}

/// What a login and a JOIN ask the database besides messages (the name's account, the
/// room's privacy, the directory's presence) is prepared on each pooled connection once:
/// counted by `pg_stat_statements` on a cluster of the test's own, every statement run for
/// each of 40 clients was planned at most once per pooled connection, not at every use.
#[tokio::test]
async fn logins_and_joins_plan_each_statement_once_per_connection() {
    const CLIENTS: usize = 40;
    let dir = pg::temp_dir("plans");
    let _cleanup = pg::DirGuard(dir.clone());
    let (cluster, config) = pg::own_cluster(&dir, Duration::from_secs(5), memory_config()).await;
    // postgresql.auto.conf is the managed cluster's own, written at every start. No
    // autovacuum: an ANALYZE during the test would have every statement planned again.
    let conf = cluster.pgdata().join("postgresql.conf");
    pg::stop_cluster(cluster).await;
    let mut settings = std::fs::OpenOptions::new().append(true).open(conf).unwrap();
    std::io::Write::write_all(
        &mut settings,
        b"shared_preload_libraries = 'pg_stat_statements'\n\
          pg_stat_statements.track_planning = on\n\
          autovacuum = off\n",
    )
    .unwrap();
    let _cluster = pg::restart_cluster(&dir).await;
    let db = pg::connect(config.database_url.as_deref().unwrap()).await;
    db.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    let pool_size = i64::from(config.pool_size);
    let server = TestServer::start_with(config).await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut client = server.login(&format!("user{i}")).await;
        client.join(&format!("room{}", i % 4)).await;
        clients.push(client);
    }
    let rows = db
        .query(
            "SELECT query, calls, plans FROM pg_stat_statements \
             WHERE toplevel AND calls >= $1 AND query NOT LIKE '%pg_stat_statements%'",
            &[&(CLIENTS as i64)],
        )
        .await
        .unwrap();
    let counted: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for part in [
        "FROM private_rooms p WHERE p.room",
        "password_hash IS NOT NULL",
        "INSERT INTO presence",
    ] {
        assert!(
            counted.iter().any(|(query, _, _)| query.contains(part)),
            "no statement with {part:?} ran for every client: {counted:#?}"
        );
    }
    for (query, calls, plans) in &counted {
        assert!(
            *plans <= pool_size,
            "planned {plans} times in {calls} runs on {pool_size} connections: {query}"
        );
    }
    drop(clients);
    server.stop().await.unwrap();
}

/// A column changed under a running server (a newer server's migration, an operator) makes
/// the statements its pooled connections prepared return another type, which PostgreSQL
/// refuses to run: each is prepared again, and no login, JOIN, replay or HISTORY fails for
/// it, whether the statement was prepared at its first use (accounts, privacy) or when the
/// pool opened the connection (the messages' pages).
#[tokio::test]
async fn statements_prepared_before_a_column_changed_type_are_prepared_again() {
    let (server, url) = pg_server().await;
    let db = pg::connect(&url).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut client = server.login(&format!("early{i}")).await;
        client.join("before").await;
        client.say(&format!("said early by {i}")).await;
        clients.push(client);
    }
    db.batch_execute(
        "ALTER TABLE users ALTER COLUMN password_hash TYPE varchar(400); \
         ALTER TABLE private_rooms ALTER COLUMN owner TYPE varchar(64); \
         ALTER TABLE messages ALTER COLUMN body TYPE varchar; \
         ALTER TABLE messages ALTER COLUMN created_at TYPE timestamptz(3); \
         ALTER TABLE users ALTER COLUMN name TYPE varchar(64)",
    )
    .await
    .unwrap();
    for i in 0..8 {
        let mut client = server.login(&format!("late{i}")).await;
        let hist = client.join("after").await;
        assert!(hist.is_empty(), "{hist:?}");
        let hist = client.join("before LAST 100").await;
        assert_eq!(hist.len(), 8 + i, "{hist:?}");
        assert_eq!(parse_message(&hist[0]).text, "said early by 0");
        client.send("HISTORY before AFTER 0 LIMIT 3").await;
        let (hist, _) = client.until("OK HISTORY").await;
        assert_eq!(parse_message(&hist[2]).text, "said early by 2");
        client.say(&format!("said late by {i}")).await;
        clients.push(client);
    }
    // The INSERT, stale too (it returns created_at), stored each message once.
    let mut reader = server.login("reader").await;
    let texts: Vec<String> = reader
        .join("before LAST 100")
        .await
        .iter()
        .map(|l| parse_message(l).text)
        .collect();
    let late: Vec<String> = (0..8).map(|i| format!("said late by {i}")).collect();
    assert_eq!(texts[8..], late[..], "{texts:?}");
    drop(clients);
    server.stop().await.unwrap();
}

/// A column changed under the running server to a type it cannot read (here `created_at`
/// loses its time zone, which both the INSERT and history pages return) fails what reads
/// it, with the cause logged: the writer and the sessions live on (reading the column with
/// `Row::get` panicked them), and all works again once the column is changed back.
#[tokio::test]
async fn a_column_the_server_cannot_read_fails_reads_without_stopping_anything() {
    let logs = Logs::capture();
    let (server, url) = pg_server().await;
    let db = pg::connect(&url).await;
    let mut alice = server.login("alice").await;
    alice.join("r").await;
    alice.say("before").await;
    const PASSWORD: &str = "correct-horse-battery-9";
    drop(common::accounts::registered(server.addr, "carol", PASSWORD).await);
    db.batch_execute(
        "ALTER TABLE messages ALTER COLUMN created_at TYPE timestamp \
         USING created_at AT TIME ZONE 'UTC'; \
         ALTER TABLE users ALTER COLUMN password_hash TYPE bytea \
         USING convert_to(password_hash, 'UTF8')",
    )
    .await
    .unwrap();
    // The INSERT commits, then its rows cannot be read: the sender is told so, and is shown
    // the message from the database's notification, as any member would be.
    alice.send("SAY during").await;
    let mut told = [alice.line().await, alice.line().await];
    told.sort();
    assert!(told[0].starts_with("ERR OUTCOME_UNKNOWN "), "{told:?}");
    assert!(!told[0].contains("writer stopped"), "{told:?}");
    assert_eq!(parse_message(&told[1]).text, "during", "{told:?}");
    logs.wait_for("the stored rows cannot be read", 1).await;
    // A replay cannot read history; the connection stays usable.
    let mut bob = server.login("bob").await;
    bob.send("JOIN r").await;
    bob.expect_err("STORE_UNAVAILABLE").await;
    bob.expect_nothing_pending().await;
    logs.wait_for("PostgreSQL returned a column the server cannot read", 1)
        .await;
    // Nor can a login read the account's password hash.
    let mut carol = server.client().await;
    carol.send(&format!("NICK carol {PASSWORD}")).await;
    carol.expect_err("STORE_UNAVAILABLE").await;
    carol.expect_nothing_pending().await;
    db.batch_execute(
        "ALTER TABLE messages ALTER COLUMN created_at TYPE timestamptz \
         USING created_at AT TIME ZONE 'UTC'; \
         ALTER TABLE users ALTER COLUMN password_hash TYPE text \
         USING convert_from(password_hash, 'UTF8')",
    )
    .await
    .unwrap();
    alice.say("after").await;
    let texts: Vec<String> = bob
        .join("r")
        .await
        .iter()
        .map(|l| parse_message(l).text)
        .collect();
    assert_eq!(texts, ["before", "during", "after"]);
    alice.expect("JOINED r bob").await;
    alice.expect_nothing_pending().await;
    carol.send(&format!("NICK carol {PASSWORD}")).await;
    carol.expect("OK NICK carol").await;
    server.stop().await.unwrap();
}

/// The directory of names and presence reads a column the server cannot read (here the
/// connection ids of live names, made `integer`): its write fails and is logged as such, and
/// the database is not taken for unreachable (which would fail every store operation until
/// a probe reached it).
#[tokio::test]
async fn an_unreadable_directory_column_does_not_mark_the_database_down() {
    let logs = Logs::capture();
    let (server, url) = pg_server().await;
    let db = pg::connect(&url).await;
    let mut alice = server.login("alice").await;
    alice.join("r").await;
    db.batch_execute("ALTER TABLE live_names ALTER COLUMN conn TYPE integer")
        .await
        .unwrap();
    // Claiming bob's name reads the claimed rows' connection ids back.
    let mut bob = server.client().await;
    bob.send("NICK bob").await;
    let answer = bob.line().await;
    assert!(
        answer == "OK NICK bob" || answer.starts_with("ERR STORE_UNAVAILABLE "),
        "{answer}"
    );
    logs.wait_for("PostgreSQL returned a column the server cannot read", 1)
        .await;
    alice.say("still stored").await;
    assert_eq!(logs.count("PostgreSQL is unreachable"), 0);
    db.batch_execute("ALTER TABLE live_names ALTER COLUMN conn TYPE bigint")
        .await
        .unwrap();
    server.stop().await.unwrap();
}

/// A statement the database refuses (here: a table renamed under the running server) is
/// logged with PostgreSQL's own message, which tokio-postgres's error text ("db error")
/// leaves out, and only once for a burst; the client is told only that the store is
/// unavailable.
#[tokio::test]
async fn a_refused_statement_is_logged_with_its_cause_once_for_a_burst() {
    let logs = Logs::capture();
    let (server, url) = pg_server().await;
    let db = pg::connect(&url).await;
    db.batch_execute("ALTER TABLE private_rooms RENAME TO private_rooms_gone")
        .await
        .unwrap();
    let mut client = server.login("asker").await;
    for _ in 0..5 {
        client.send("JOIN lobby").await;
        let refusal = client.expect_err("STORE_UNAVAILABLE").await;
        assert!(!refusal.contains("private_rooms"), "{refusal}");
    }
    let cause = r#"PostgreSQL refused a statement error=ERROR: relation "private_rooms" does not exist (SQLSTATE 42P01)"#;
    logs.wait_for(cause, 1).await;
    assert_eq!(logs.count("PostgreSQL refused a statement"), 1);
    server.stop().await.unwrap();
}

/// A refusal's DETAIL may quote the failing row: here a check that no password is stored
/// makes `REGISTER` fail, and PostgreSQL's DETAIL holds the new row, hash and all. The log
/// says what was refused, and never the hash.
#[tokio::test]
async fn a_refused_statement_is_logged_without_the_row_it_quotes() {
    let logs = Logs::capture();
    let (server, url) = pg_server().await;
    let db = pg::connect(&url).await;
    db.batch_execute(
        "ALTER TABLE users ADD CONSTRAINT no_passwords_here CHECK (password_hash IS NULL)",
    )
    .await
    .unwrap();
    let mut client = server.login("careful").await;
    client.send("REGISTER correct-horse-battery").await;
    client.expect_err("STORE_UNAVAILABLE").await;
    logs.wait_for(r#"violates check constraint "no_passwords_here""#, 1)
        .await;
    assert_eq!(logs.count("argon2"), 0);
    assert_eq!(logs.count("careful,"), 0);
    server.stop().await.unwrap();
}
