#!/usr/bin/env bash
# Runs every benchmark scenario against linechat (memory store), linechat (PostgreSQL store,
# its own cluster) and NATS, three times each, and prints the table of medians that
# BENCHMARKS.md shows, plus the latency plot.
#
#   bash bench/suite.sh                 # full size, about 15 minutes
#   RUNS=1 SCALE=tiny bash bench/suite.sh   # seconds, to check that it all works
#
# The servers run on core 0 and the load generator on core 1 (taskset); linechat runs with
# flood control off (--rate 0), as a load generator is a flood by design. Needs nats-server
# (apt-get install nats-server) and the PostgreSQL programs.
#
# The chat scenario opens 5,000 connections from loopback: linechat needs no flag for that
# (loopback counts against neither --max-per-ip nor --new-rooms-per-minute unless
# --limit-loopback; --max-connections is 16,384, --max-rooms-per-connection 100; it raises
# its own open-file limit), nor does NATS (64K connections by default).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SCALE=${SCALE:-full}
OUT=${OUT:-target/bench}
SERVER_CORE=${SERVER_CORE:-0}
BENCH_CORE=${BENCH_CORE:-1}
mkdir -p "$OUT"
rm -rf "$OUT"/results.jsonl "$OUT/pgdata"

cargo build --release --quiet --workspace --bins
LINECHAT=target/release/linechat
BENCH=target/release/linechat-bench
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Scenario sizes: the issue's, or tiny ones for CI.
if [ "$SCALE" = tiny ]; then
  fanout=(--rooms 2 --clients 5 --senders 2 --messages 50)
  bigroom=(--rooms 1 --clients 20 --senders 1 --messages 100)
  latency=(--rooms 2 --clients 5 --senders 1 --rate 100 --duration 1)
  sweep=(--sweep 50,100)
  idle=(200 400)
  replay=(--history 2000 --replay 100 --joins 20)
  persist=(--rooms 4 --clients 1 --senders 1 --messages 200)
  chat=(--rooms 20 --clients 5 --duration 4)
  memory_history=10000
else
  fanout=()
  bigroom=()
  latency=()
  sweep=(--sweep 100,200,500,1000,2000,4000)
  idle=(5000 10000)
  replay=()
  persist=()
  chat=()
  memory_history=1000000
fi

wait_port() { for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

# Starts a server; sets $server_pid. Every run of a scenario gets a fresh server, so that
# memory figures start from the same place.
start() {
  local target=$1
  case $target in
    memory)
      taskset -c "$SERVER_CORE" "$LINECHAT" --store memory --memory-history "$memory_history" \
        --rate 0 --listen 127.0.0.1:7911 --http-listen 127.0.0.1:7921 2>>"$OUT/linechat-memory.log" &
      server_pid=$!; addr=127.0.0.1:7911; kind=linechat; wait_port 7921 ;;
    postgres)
      taskset -c "$SERVER_CORE" "$LINECHAT" --store postgres --data-dir "$OUT/pgdata" \
        --rate 0 --listen 127.0.0.1:7912 --http-listen 127.0.0.1:7922 2>>"$OUT/linechat-postgres.log" &
      server_pid=$!; addr=127.0.0.1:7912; kind=linechat ;;
    nats)
      taskset -c "$SERVER_CORE" nats-server -a 127.0.0.1 -p 7913 2>>"$OUT/nats.log" &
      server_pid=$!; addr=127.0.0.1:7913; kind=nats ;;
  esac
  pids+=("$server_pid")
  wait_port "${addr##*:}"
}

stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

# run TARGET SCENARIO ARGS...: one measurement appended to results.jsonl.
run() {
  local target=$1 scenario=$2; shift 2
  start "$target"
  echo "== $scenario on $target: $*" >&2
  taskset -c "$BENCH_CORE" "$BENCH" "$scenario" --target "$kind" --addr "$addr" \
    --server-pid "$server_pid" --json "$@" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); r["store"]=sys.argv[1]; print(json.dumps(r))' "$target" \
    >>"$OUT/results.jsonl"
  stop
}

for i in $(seq 1 "$RUNS"); do
  for target in memory postgres nats; do
    # On the memory store, fanout runs over WebSocket too, after plain TCP (bench/ws.sh
    # compares the two; here it is checked that nothing is lost).
    ws=()
    [ "$target" = memory ] && ws=(--ws-addr 127.0.0.1:7921)
    run "$target" fanout "${fanout[@]}" "${ws[@]}"
    run "$target" bigroom "${bigroom[@]}"
    run "$target" latency "${latency[@]}"
    for n in "${idle[@]}"; do run "$target" idle --connections "$n"; done
    run "$target" chat "${chat[@]}"
  done
  for target in memory postgres; do
    run "$target" persist "${persist[@]}"
    run "$target" replay "${replay[@]}"
  done
done

# The plot: one latency sweep per target.
for target in memory postgres nats; do
  start "$target"
  taskset -c "$BENCH_CORE" "$BENCH" latency --target "$kind" --addr "$addr" "${latency[@]}" \
    "${sweep[@]}" --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
r["target"] = {"memory": "linechat (memory)", "postgres": "linechat (PostgreSQL)", "nats": "NATS"}[sys.argv[1]]
print(json.dumps(r))' "$target" >"$OUT/sweep-$target.json"
  stop
done
"$BENCH" latency --plot-only --plot "$OUT/latency.svg" \
  --plot-with "$OUT/sweep-memory.json" --plot-with "$OUT/sweep-postgres.json" \
  --plot-with "$OUT/sweep-nats.json"

python3 bench/table.py "$OUT/results.jsonl" ${CHECK:+--check}
echo "plot: $OUT/latency.svg" >&2
