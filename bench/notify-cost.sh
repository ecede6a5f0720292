#!/usr/bin/env bash
# What the room lock, the trigger and its NOTIFY cost the writer's INSERT, at its batch sizes
# (BATCHES rows a transaction) and with 1 and 3 concurrent writers (one per server). pgbench
# runs linechat's batch INSERT (INSERT_MESSAGES in src/store/postgres/pool.rs, its arrays
# built in SQL) against linechat's own schema (schema.sql, through a linechat server's
# managed PostgreSQL, which stays up and LISTENs as a server does) in four configurations,
# alternating within each round:
#
#   shipped   rooms locked (FOR NO KEY UPDATE) + trigger + NOTIFY  (what servers run)
#   no-notify rooms locked, trigger messages_notify disabled
#   no-lock   trigger + NOTIFY, rooms not locked
#   neither   neither (as before issue 14)
#
# Reported per configuration: rows stored a second (pgbench's transactions a second times N),
# the transaction's average latency, and PostgreSQL's CPU time per row (the postmaster and
# every process it started, from /proc; less noisy than the rate on a shared machine).
#
# A batch of N rows goes to min(N, 10) rooms of 10 (rotating from a random one), 64-byte
# bodies. messages is emptied and a checkpoint taken before each run. PostgreSQL (with the
# idle linechat) on core 0, pgbench on core 1.
#
#   ROUNDS=2 SECONDS_EACH=5 bash bench/notify-cost.sh
set -euo pipefail
ROUNDS=${ROUNDS:-2}
SECONDS_EACH=${SECONDS_EACH:-5}
BATCHES=${BATCHES:-1 16 128 1024}
WRITERS=${WRITERS:-1 3}
BIN=${BIN:-target/release}
OUT=$(realpath -m "${OUT:-target/bench-notify-cost}")
rm -rf "$OUT"
mkdir -p "$OUT"
chmod 755 "$OUT"

wait_port() { for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }
taskset -c 0 "$BIN/linechat" --store postgres --data-dir "$OUT/pg" --listen 127.0.0.1:7981 \
  --http-listen off 2>>"$OUT/linechat.log" &
server=$!
trap 'kill $server 2>/dev/null; wait 2>/dev/null' EXIT
wait_port 7981

# As root, the managed PostgreSQL runs as postgres and only it may enter its socket directory.
as=()
[ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
conn=(-h "$OUT/pg/run" -U linechat linechat)
sql() { "${as[@]}" psql -X -q -At "${conn[@]}" -c "$1"; }
sql "INSERT INTO rooms (name) SELECT 'bench' || k FROM generate_series(0, 9) k ON CONFLICT DO NOTHING;
     INSERT INTO users (name) VALUES ('benchuser') ON CONFLICT DO NOTHING;"

# script N LOCK: the writer's INSERT of N rows, with or without the room lock.
script() {
  local n=$1 lock=$2 r=$(( $1 < 10 ? $1 : 10 ))
  cat <<SQL
\\set r random(0, 9)
WITH p AS MATERIALIZED (SELECT
    ARRAY(SELECT 'bench' || ((:r + k) % 10) FROM generate_series(0, $r - 1) k) AS rooms,
    ARRAY['benchuser'] AS users,
    ARRAY(SELECT (g % $r) + 1 FROM generate_series(0, $n - 1) g) AS r,
    array_fill(1, ARRAY[$n]) AS u,
    array_fill(repeat('x', 64), ARRAY[$n]) AS body),
  locked AS MATERIALIZED (SELECT id, name FROM rooms
    WHERE name = ANY((SELECT rooms FROM p)::text[]) ORDER BY id $lock)
INSERT INTO messages (room_id, user_id, body)
SELECT ids.rooms[batch.r], ids.users[batch.u], batch.body
FROM (SELECT
    ARRAY(SELECT (SELECT id FROM locked WHERE name = n.name)
          FROM unnest((SELECT rooms FROM p)) WITH ORDINALITY AS n(name, i) ORDER BY n.i) AS rooms,
    ARRAY(SELECT (SELECT id FROM users WHERE name = n.name)
          FROM unnest((SELECT users FROM p)) WITH ORDINALITY AS n(name, i) ORDER BY n.i) AS users) ids,
  unnest((SELECT r FROM p), (SELECT u FROM p), (SELECT body FROM p)) WITH ORDINALITY AS batch(r, u, body, n)
ORDER BY batch.n
RETURNING id, created_at, room_id, user_id;
SQL
}

for n in $BATCHES; do
  script "$n" "FOR NO KEY UPDATE" >"$OUT/lock-$n.sql"
  script "$n" "" >"$OUT/nolock-$n.sql"
done
chmod 644 "$OUT"/*.sql

postmaster=$(head -1 "$OUT/pg/pgdata/postmaster.pid")
# CPU clock ticks used so far by the postmaster and its children (live, and exited ones).
pg_ticks() {
  python3 - "$postmaster" <<'PY'
import os, sys
pm, total = int(sys.argv[1]), 0
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{p}/stat").read()
    except OSError:
        continue
    f = stat[stat.rindex(")") + 2:].split()
    if int(p) == pm:
        total += sum(int(x) for x in f[11:15])
    elif int(f[1]) == pm:
        total += int(f[11]) + int(f[12])
print(total)
PY
}
hz=$(getconf CLK_TCK)

echo "round config batch writers tps latency_ms rows_per_s pg_cpu_us_per_row" >"$OUT/results.txt"
for round in $(seq 1 "$ROUNDS"); do
  for n in $BATCHES; do
    for w in $WRITERS; do
      for config in shipped no-notify no-lock neither; do
        case $config in
          shipped | no-lock) sql "ALTER TABLE messages ENABLE ALWAYS TRIGGER messages_notify" ;;
          *) sql "ALTER TABLE messages DISABLE TRIGGER messages_notify" ;;
        esac
        file=$OUT/lock-$n.sql
        case $config in no-lock | neither) file=$OUT/nolock-$n.sql ;; esac
        sql "TRUNCATE messages"
        sql "CHECKPOINT"
        log=$OUT/run-$round-$config-$n-$w.log
        before=$(pg_ticks)
        taskset -c 1 "${as[@]}" pgbench -n -M prepared -c "$w" -j 1 -T "$SECONDS_EACH" \
          -f "$file" "${conn[@]}" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
        after=$(pg_ticks)
        rows=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
        tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$log")
        lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$log")
        echo "$round $config $n $w $tps $lat $(python3 -c "print(round($tps * $n), round(($after - $before) / $hz * 1e6 / ($rows * $n), 1))")" |
          tee -a "$OUT/results.txt"
      done
    done
  done
done
sql "ALTER TABLE messages ENABLE ALWAYS TRIGGER messages_notify"

python3 - "$OUT/results.txt" <<'PY'
import collections, statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
by = collections.defaultdict(list)
for _, config, n, w, tps, lat, rps, cpu in rows:
    by[(int(n), int(w), config)].append((float(tps), float(lat), float(cpu)))
configs = ["shipped", "no-notify", "no-lock", "neither"]
print("medians: rows/s, ms per transaction, PostgreSQL CPU us per row")
print("| rows/tx | writers | " + " | ".join(configs) + " |")
print("|---|---|" + "---|" * len(configs))
for n, w in sorted({(n, w) for n, w, _ in by}):
    cells = []
    for c in configs:
        runs = by[(n, w, c)]
        tps, lat, cpu = (statistics.median(x[i] for x in runs) for i in range(3))
        cells.append(f"{tps * n:,.0f}/s, {lat:.2f} ms, {cpu:.1f} us")
    print(f"| {n} | {w} | " + " | ".join(cells) + " |")
PY
