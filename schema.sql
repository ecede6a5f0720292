-- linechat's PostgreSQL schema.
--
-- The server applies this file at start-up, in one transaction under an advisory lock. It is a
-- list of numbered migrations, each starting at a line that reads "-- migration" and its
-- number. Each runs once, in order, and its number is recorded in schema_version, so an
-- existing database is brought up to date and a current one is left alone. Never edit a
-- migration that has shipped; add the next one.

-- migration 1
CREATE TABLE users (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rooms (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The foreign keys below are enforced for every session but the linechat server's own, which
-- runs with session_replication_role = replica when it may (a superuser, as in zero-config
-- mode): it only writes room and user ids that it has just read back from those tables or
-- that messages already reference, and the per-row checks would otherwise cost most of an
-- insert. Deleting a referenced room or user is refused for everyone. Replica mode turns off
-- ordinary triggers and rules for the server's writes: a trigger added to messages must be
-- created ENABLE ALWAYS to see them.
--
-- Message ids come from one identity sequence: unique everywhere, increasing within every
-- room. The key is (room_id, id) and it is the table's only index: it serves "the last N of a
-- room" (a backward scan), "N before / after id X in a room" (a range scan) and a room's
-- newest id, and with no index on id alone the planner cannot pick a scan of all rooms'
-- newest messages for a quiet room. One index also keeps inserts cheap.
CREATE TABLE messages (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    room_id    bigint      NOT NULL REFERENCES rooms (id),
    user_id    bigint      NOT NULL REFERENCES users (id),
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_room_id_id PRIMARY KEY (room_id, id)
);
