#!/usr/bin/env bash
# What the PostgreSQL store's writer does at paced traffic: the `chat` scenario (5,000
# connections, 1,000 rooms, 500 messages/s) against each linechat binary given, each on a
# fresh managed PostgreSQL, taking turns for ROUNDS rounds. Reported per run: the bench's
# latency and server CPU, and from the server and its database afterwards: how long the
# writer was busy storing (linechat_store_commit_seconds_sum, of a 20 s run), how many batches
# it stored, how often rooms and users were read whole (pg_stat_user_tables), and how long
# each connection took to log in and join its rooms.
# The server and its PostgreSQL on core 0, the bench on core 1.
#
#   BINS="/tmp/before/linechat target/release/linechat" ROUNDS=2 bash bench/pg-writer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
BINS=${BINS:-target/release/linechat}
BENCH=${BENCH:-target/release/linechat-bench}
OUT=$(realpath -m "${OUT:-target/bench-pg-writer}")
mkdir -p "$OUT"
chmod 755 "$OUT"
as=()
[ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
wait_port() { for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; wait 2>/dev/null' EXIT

for round in $(seq 1 "$ROUNDS"); do
  for bin in $BINS; do
    rm -rf "$OUT/pg"
    taskset -c 0 "$bin" --store postgres --data-dir "$OUT/pg" --rate 0 \
      --listen 127.0.0.1:7982 --http-listen 127.0.0.1:7983 2>>"$OUT/linechat.log" &
    server=$!
    wait_port 7982
    taskset -c 1 "$BENCH" chat --addr 127.0.0.1:7982 --server-pid "$server" >"$OUT/bench.out"
    metrics=$(curl -s 127.0.0.1:7983/metrics)
    busy=$(grep '^linechat_store_commit_seconds_sum' <<<"$metrics" | awk '{printf "%.1f", $2}')
    batches=$(grep '^linechat_store_commit_seconds_count' <<<"$metrics" | awk '{print $2}')
    scans=$("${as[@]}" psql -X -q -At -h "$OUT/pg/run" -U linechat linechat -c \
      "SELECT string_agg(relname || ' ' || seq_scan || ' (' || seq_tup_read || ' rows)', ', ' ORDER BY relname)
       FROM pg_stat_user_tables WHERE relname IN ('rooms', 'users')")
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
    echo "round $round $bin:$(grep -E '^  latency' "$OUT/bench.out" | sed 's/  latency *//') |" \
      "$(grep -E '^  server CPU' "$OUT/bench.out" | sed 's/  server CPU *//') |" \
      "writer busy ${busy} s, ${batches} batches | read whole: ${scans} |" \
      "connect + join $(grep -E '^  connect \+ join' "$OUT/bench.out" | sed 's/  connect + join *each //')"
  done
done
rm -rf "$OUT/pg"
