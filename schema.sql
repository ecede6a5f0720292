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

-- Until migration 2, these foreign keys held for every session but the server's own, which
-- ran in replica mode to skip their per-row checks; migration 2 replaces them with checks, one
-- per statement, that hold for every session (see there).
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

-- migration 2
-- Integrity enforced for every writer, this server included (migration 1's foreign keys were
-- skipped by the server's own sessions, in replica mode): the per-row foreign-key checks
-- become one check per statement, and the server no longer runs in replica mode.
--
-- A foreign key checks each inserted row with a query of its own (1.27 s for 100,000 rows,
-- 0.35 s without). These triggers see a whole statement's rows at once (a transition table)
-- and check each distinct room and user once, locking it FOR KEY SHARE as a foreign key
-- does, so that a concurrent DELETE or TRUNCATE waits for the inserting transaction and then
-- sees its messages. The other side: a room or user that messages reference cannot be
-- deleted, truncated away or given another id. All are ENABLE ALWAYS, so they also run in
-- sessions with session_replication_role = replica.
--
-- The functions keep the search_path they were created with, so that a session with another
-- one cannot point them at other tables.
--
-- Deletes and truncates of rooms and users must run in READ COMMITTED (the default): in a
-- transaction with an older snapshot, a message committed meanwhile would not be seen, so
-- they are refused there rather than risk a dangling reference.

-- Existing rows first: a database written in replica mode may hold messages whose room or
-- user was deleted (a TRUNCATE or a restore while the server ran). Each such id gets a
-- placeholder row (lost-room-<id>, lost-user-<id>: valid names, so the messages show up in
-- history again) instead of being lost or failing the migration.
INSERT INTO rooms (id, name) OVERRIDING SYSTEM VALUE
SELECT DISTINCT m.room_id, 'lost-room-' || m.room_id FROM messages m
WHERE NOT EXISTS (SELECT FROM rooms r WHERE r.id = m.room_id);
INSERT INTO users (id, name) OVERRIDING SYSTEM VALUE
SELECT DISTINCT m.user_id, 'lost-user-' || m.user_id FROM messages m
WHERE NOT EXISTS (SELECT FROM users u WHERE u.id = m.user_id);
-- Ids given explicitly above must not be handed out again.
SELECT setval(pg_get_serial_sequence('rooms', 'id'), max(id)) FROM rooms
HAVING max(id) > (SELECT last_value FROM rooms_id_seq);
SELECT setval(pg_get_serial_sequence('users', 'id'), max(id)) FROM users
HAVING max(id) > (SELECT last_value FROM users_id_seq);

ALTER TABLE messages DROP CONSTRAINT messages_room_id_fkey;
ALTER TABLE messages DROP CONSTRAINT messages_user_id_fkey;

-- Every room and user that the new rows of messages reference exists; each is locked FOR KEY
-- SHARE until the transaction ends.
CREATE FUNCTION linechat_messages_check_refs() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    want_rooms bigint[];
    want_users bigint[];
    found bigint;
BEGIN
    SELECT array_agg(DISTINCT room_id), array_agg(DISTINCT user_id)
      INTO want_rooms, want_users FROM added;
    IF want_rooms IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT count(*) INTO found
      FROM (SELECT FROM rooms WHERE id = ANY (want_rooms) FOR KEY SHARE) locked;
    IF found <> cardinality(want_rooms) THEN
        RAISE EXCEPTION 'insert or update on table "messages" names a room that does not exist'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('missing room ids: %s', (SELECT array_agg(w) FROM unnest(want_rooms) w
                                  WHERE NOT EXISTS (SELECT FROM rooms WHERE id = w)));
    END IF;
    SELECT count(*) INTO found
      FROM (SELECT FROM users WHERE id = ANY (want_users) FOR KEY SHARE) locked;
    IF found <> cardinality(want_users) THEN
        RAISE EXCEPTION 'insert or update on table "messages" names a user that does not exist'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('missing user ids: %s', (SELECT array_agg(w) FROM unnest(want_users) w
                                  WHERE NOT EXISTS (SELECT FROM users WHERE id = w)));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_check_refs_on_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION linechat_messages_check_refs();
CREATE TRIGGER messages_check_refs_on_update AFTER UPDATE ON messages
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION linechat_messages_check_refs();
ALTER TABLE messages ENABLE ALWAYS TRIGGER messages_check_refs_on_insert;
ALTER TABLE messages ENABLE ALWAYS TRIGGER messages_check_refs_on_update;

-- No room or user that messages reference is deleted (statement-level: one check per DELETE).
-- Its column is the trigger's argument (room_id or user_id).
CREATE FUNCTION linechat_refuse_referenced_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    referenced bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'rows of "%" may only be deleted in a READ COMMITTED transaction', TG_TABLE_NAME
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF TG_ARGV[0] = 'room_id' THEN
        SELECT m.room_id INTO referenced FROM messages m WHERE m.room_id IN (SELECT id FROM removed) LIMIT 1;
    ELSE
        SELECT m.user_id INTO referenced FROM messages m WHERE m.user_id IN (SELECT id FROM removed) LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'update or delete on table "%" violates the reference from table "messages"', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (id)=(%s) is still referenced from table "messages".', referenced);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER rooms_refuse_referenced_delete AFTER DELETE ON rooms
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION linechat_refuse_referenced_delete('room_id');
CREATE TRIGGER users_refuse_referenced_delete AFTER DELETE ON users
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION linechat_refuse_referenced_delete('user_id');
ALTER TABLE rooms ENABLE ALWAYS TRIGGER rooms_refuse_referenced_delete;
ALTER TABLE users ENABLE ALWAYS TRIGGER users_refuse_referenced_delete;

-- TRUNCATE rooms or users only together with messages (or once messages is empty): checked
-- after the statement, when every table it names has been emptied.
CREATE FUNCTION linechat_refuse_truncate_while_referenced() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION '"%" may only be truncated in a READ COMMITTED transaction', TG_TABLE_NAME
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF EXISTS (SELECT FROM messages) THEN
        RAISE EXCEPTION 'cannot truncate "%": table "messages" references it', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Truncate messages in the same statement: TRUNCATE messages, rooms, users.';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER rooms_refuse_truncate AFTER TRUNCATE ON rooms
    FOR EACH STATEMENT EXECUTE FUNCTION linechat_refuse_truncate_while_referenced();
CREATE TRIGGER users_refuse_truncate AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION linechat_refuse_truncate_while_referenced();
ALTER TABLE rooms ENABLE ALWAYS TRIGGER rooms_refuse_truncate;
ALTER TABLE users ENABLE ALWAYS TRIGGER users_refuse_truncate;

-- A room's or user's id never changes (only UPDATE ... SET id = DEFAULT could change it).
CREATE FUNCTION linechat_refuse_id_change() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    RAISE EXCEPTION 'the id of a row of "%" never changes', TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation';
END $$;

CREATE TRIGGER rooms_refuse_id_change BEFORE UPDATE OF id ON rooms
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION linechat_refuse_id_change();
CREATE TRIGGER users_refuse_id_change BEFORE UPDATE OF id ON users
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION linechat_refuse_id_change();
ALTER TABLE rooms ENABLE ALWAYS TRIGGER rooms_refuse_id_change;
ALTER TABLE users ENABLE ALWAYS TRIGGER users_refuse_id_change;

-- migration 3
-- The history's epoch: made once, when this database's history begins, and never changed. A
-- client that saved a resume point (a message id) along with the epoch can tell whether the
-- ids it holds still belong to this history (PROTOCOL.md, HELLO).
CREATE TABLE history_epoch (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    epoch    bigint  NOT NULL
);
INSERT INTO history_epoch (epoch)
VALUES ((random() * 9007199254740991)::bigint + 1);

-- migration 4
-- Accounts: a user with a password hash (argon2id, a PHC string) is registered, and only its
-- password takes its name. Names are matched without regard to ASCII case, as live names are:
-- at most one registered name per lower-case spelling.
ALTER TABLE users ADD COLUMN password_hash text;
-- lower() under the "C" collation folds ASCII only, whatever the database's locale (in a
-- Turkish one, lower('I') is not 'i'), as the server does.
CREATE UNIQUE INDEX users_registered_name ON users (lower(name COLLATE "C"))
    WHERE password_hash IS NOT NULL;

-- Private rooms: only their members (registered names, by lower-case name) may join them,
-- read their history or list their members, and only members see them in ROOMS. Kept by
-- name, with no reference to rooms or users, so that emptying the history (TRUNCATE
-- messages, rooms, users) leaves them private.
CREATE TABLE private_rooms (
    room       text        PRIMARY KEY,
    owner      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE private_room_members (
    room     text        NOT NULL REFERENCES private_rooms (room) ON DELETE CASCADE,
    member   text        NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, member)
);
CREATE INDEX private_room_members_member ON private_room_members (member);

-- migration 5
-- Several servers on one database (README, "Running several servers"). Every server learns
-- of every stored batch, its own included, from this trigger's notifications, which
-- PostgreSQL delivers at commit and in commit order; it delivers a room's messages in that
-- order. For that order to be the rooms' id order, a batch's INSERT locks its rooms' rows
-- (FOR NO KEY UPDATE, in id order, before it takes any id: see INSERT_MESSAGES in
-- src/store/postgres/pool.rs), so that within a room ids are taken in the order their
-- transactions commit, and one statement's ids in a room are consecutive among that room's.
--
-- A notification reads "<origin> <room> <first id> <last id> ...": the storing session's
-- application_name (a linechat server's name for itself), then each room's range, at most
-- 64 rooms a notification (a payload is at most 8000 bytes; a room name at most 64).
CREATE FUNCTION linechat_notify_messages() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    origin text := coalesce(
        nullif(translate(current_setting('application_name'), ' ', '_'), ''), '-');
BEGIN
    PERFORM pg_notify('linechat_messages', origin || ' ' || part.ranges)
    FROM (
        SELECT string_agg(g.room || ' ' || g.first || ' ' || g.last, ' ' ORDER BY g.first)
               AS ranges
        FROM (
            SELECT r.name AS room, min(n.id) AS first, max(n.id) AS last,
                   (row_number() OVER (ORDER BY min(n.id)) - 1) / 64 AS chunk
            FROM new_messages n JOIN rooms r ON r.id = n.room_id
            GROUP BY r.name
        ) g
        GROUP BY g.chunk
    ) part;
    RETURN NULL;
END $$;
CREATE TRIGGER messages_notify AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION linechat_notify_messages();
ALTER TABLE messages ENABLE ALWAYS TRIGGER messages_notify;

-- migration 6
-- Who is online, across every server sharing the database (README, "Running several
-- servers"). Each server has a row in nodes, refreshed every quarter of its --node-timeout;
-- its connections' names (live_names: a name, whatever its case, is held by one connection
-- of one server) and their rooms (presence) hang off that row, so that deleting it (the
-- server stopped, or others found it silent for --node-timeout) frees everything it held.
-- nodes and live_names are logged, so that a crash of the database never frees a name that
-- a connected user holds; presence is unlogged (it changes with every JOIN and PART): after
-- a crash PostgreSQL empties it, and each server, finding none of its rooms there, writes
-- them again.
--
-- Every change to presence is notified at commit, in commit order, on linechat_presence
-- (which servers listen to with linechat_messages): "J <node> <conn> <room> <name>" (joined),
-- "L <node> <conn> <room> <name>" (left), "N <node> <conn> <room> <old> <new>" (renamed).
CREATE TABLE nodes (
    origin text PRIMARY KEY,
    seen timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE live_names (
    key text PRIMARY KEY,
    name text NOT NULL,
    node text NOT NULL REFERENCES nodes (origin) ON DELETE CASCADE,
    conn bigint NOT NULL
);
CREATE INDEX live_names_by_conn ON live_names (node, conn);
CREATE UNLOGGED TABLE presence (
    node text NOT NULL REFERENCES nodes (origin) ON DELETE CASCADE,
    conn bigint NOT NULL,
    room text NOT NULL,
    name text NOT NULL,
    PRIMARY KEY (node, conn, room)
);
CREATE FUNCTION linechat_notify_presence() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('linechat_presence',
            concat_ws(' ', 'J', NEW.node, NEW.conn, NEW.room, NEW.name));
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('linechat_presence',
            concat_ws(' ', 'N', NEW.node, NEW.conn, NEW.room, OLD.name, NEW.name));
    ELSE
        PERFORM pg_notify('linechat_presence',
            concat_ws(' ', 'L', OLD.node, OLD.conn, OLD.room, OLD.name));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER presence_notify AFTER INSERT OR UPDATE OR DELETE ON presence
    FOR EACH ROW EXECUTE FUNCTION linechat_notify_presence();
ALTER TABLE presence ENABLE ALWAYS TRIGGER presence_notify;

-- migration 7
-- Notifications carry the messages, so that other servers need not read them back (that
-- read was most of what a second and third server cost the database: BENCHMARKS.md, "Three
-- servers against one"). A transaction's messages are notified in parts, in id order, each
-- part a payload (at most 8000 bytes) of its own:
--   "<origin> + (<room> <first> <last> <count> (<id> <millis> <nick> <length> <text>)*)*"
-- each room's messages of the part in id order, its rooms in order of their first id; from
-- <first> to <last>, every id of the room is this transaction's and in this part.
-- <millis> counts since the Unix epoch; <length> counts the text's characters (not bytes:
-- a payload is converted to each listener's encoding). A part that does not fit after all
-- (a very long message) is notified as migration 5 says, ranges only, to be read from the
-- table. So is everything in a SQL_ASCII database: it has no characters to count (length()
-- counts bytes there, and no conversion makes them characters for the listener).
--
-- And the notifications go to channels whose names no other login can know. Anyone who can
-- connect to a database may NOTIFY any channel; on the well-known ones, a login with no
-- privilege at all could have made every server deliver a message nobody stored, in the name
-- of anyone, with an id that hid the room's real messages from its members. The names are in
-- notify_channels, which only the schema's owner (linechat's login) may read; the servers
-- listen on them, and the triggers notify on them (an INSERT by a login that may not read
-- them is notified to nobody: another program's rows are history only anyway).
--
-- Servers older than this migration cannot read these notifications: all servers sharing a
-- database must be of one version (README, "Running several servers").
CREATE TABLE notify_channels (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    messages text NOT NULL,
    presence text NOT NULL
);
REVOKE ALL ON notify_channels FROM PUBLIC;
INSERT INTO notify_channels (messages, presence)
SELECT 'linechat_messages_' || secret, 'linechat_presence_' || secret
FROM (SELECT replace(gen_random_uuid()::text, '-', '') AS secret) s;

CREATE OR REPLACE FUNCTION linechat_notify_presence() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    channel text;
BEGIN
    IF NOT has_table_privilege('notify_channels', 'SELECT') THEN
        RETURN NULL;
    END IF;
    SELECT presence INTO channel FROM notify_channels;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify(channel,
            concat_ws(' ', 'J', NEW.node, NEW.conn, NEW.room, NEW.name));
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify(channel,
            concat_ws(' ', 'N', NEW.node, NEW.conn, NEW.room, OLD.name, NEW.name));
    ELSE
        PERFORM pg_notify(channel,
            concat_ws(' ', 'L', OLD.node, OLD.conn, OLD.room, OLD.name));
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION linechat_notify_messages() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    origin text := coalesce(
        nullif(translate(current_setting('application_name'), ' ', '_'), ''), '-');
    carried text;
    carry boolean := getdatabaseencoding() <> 'SQL_ASCII';
    channel text;
BEGIN
    IF NOT has_table_privilege('notify_channels', 'SELECT') THEN
        RETURN NULL;
    END IF;
    SELECT messages INTO channel FROM notify_channels;
    -- Most transactions fit in one part, built without the parts' running sum (which costs
    -- a third of the INSERT). 40 bytes a message at least besides its text.
    IF carry AND (SELECT sum(octet_length(body) + 40) FROM new_messages) < 8000 THEN
        SELECT origin || ' +' || string_agg(c.carried, '' ORDER BY c.first) INTO carried
        FROM (
            SELECT min(n.id) AS first,
                   concat_ws(' ', '', r.name, min(n.id), max(n.id), count(*))
                   || string_agg(concat_ws(' ', '', n.id,
                                           floor(extract(epoch FROM n.created_at) * 1000)::bigint,
                                           u.name, length(n.body), n.body),
                                 '' ORDER BY n.id) AS carried
            FROM new_messages n
            JOIN rooms r ON r.id = n.room_id
            JOIN users u ON u.id = n.user_id
            GROUP BY r.name
        ) c;
        IF octet_length(carried) < 8000 THEN
            PERFORM pg_notify(channel, carried);
            RETURN NULL;
        END IF;
    END IF;
    PERFORM pg_notify(channel,
                      CASE WHEN carry AND octet_length(p.carried) < 8000 THEN p.carried
                           ELSE p.ranges END)
    FROM (
        SELECT origin || ' +' || string_agg(c.carried, '' ORDER BY c.first) AS carried,
               origin || ' ' || string_agg(c.room || ' ' || c.first || ' ' || c.last, ' '
                                           ORDER BY c.first) AS ranges
        FROM (
            SELECT m.part, m.room, min(m.id) AS first, max(m.id) AS last,
                   concat_ws(' ', '', m.room, min(m.id), max(m.id), count(*))
                   || string_agg(concat_ws(' ', '', m.id, m.millis, m.nick, length(m.body),
                                           m.body), '' ORDER BY m.id) AS carried
            FROM (
                -- Parts of about 6000 bytes, counting each message's room too: a part
                -- may overrun by its first message.
                SELECT n.id, n.body, r.name AS room, u.name AS nick,
                       floor(extract(epoch FROM n.created_at) * 1000)::bigint AS millis,
                       (sum(octet_length(n.body) + octet_length(u.name) + octet_length(r.name) + 96)
                            OVER (ORDER BY n.id) - 1) / 6000 AS part
                FROM new_messages n
                JOIN rooms r ON r.id = n.room_id
                JOIN users u ON u.id = n.user_id
            ) m
            GROUP BY m.part, m.room
        ) c
        GROUP BY c.part
        ORDER BY c.part
    ) p;
    RETURN NULL;
END $$;
