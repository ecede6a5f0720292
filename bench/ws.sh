#!/usr/bin/env bash
# WebSocket against plain TCP on one linechat server (memory store, both listeners): fanout
# over each side by side in one run, and the server's memory per idle connection over each.
# A fresh server per measurement, RUNS times, the transports alternating; prints the medians
# that BENCHMARKS.md shows.
#
#   bash bench/ws.sh                      # full size, about 2 minutes
#   RUNS=1 SCALE=tiny bash bench/ws.sh    # seconds, to check that it all works
#   BUILD=0 bash bench/ws.sh              # the release binaries already built
#
# The server runs on core 0 and the load generator on core 1 (taskset), with --rate 0, as in
# bench/suite.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SCALE=${SCALE:-full}
OUT=${OUT:-target/bench-ws}
SERVER_CORE=${SERVER_CORE:-0}
BENCH_CORE=${BENCH_CORE:-1}
mkdir -p "$OUT"
rm -f "$OUT/ws.jsonl"

if [ "${BUILD:-1}" != 0 ]; then
  cargo build --release --quiet -p linechat --bin linechat
  cargo build --release --quiet -p linechat-bench
fi
LINECHAT=${LINECHAT:-${CARGO_TARGET_DIR:-target}/release/linechat}
BENCH=${CARGO_TARGET_DIR:-target}/release/linechat-bench

if [ "$SCALE" = tiny ]; then
  fanout=(--rooms 2 --clients 5 --senders 2 --messages 50)
  idle=(--connections 200)
else
  fanout=()
  idle=(--connections 10000)
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

# run SCENARIO ARGS...: a fresh server, one measurement.
run() {
  local scenario=$1; shift
  taskset -c "$SERVER_CORE" "$LINECHAT" --store memory --rate 0 \
    --listen 127.0.0.1:7941 --http-listen 127.0.0.1:7942 2>>"$OUT/linechat.log" &
  local pid=$!
  pids+=("$pid")
  wait_port 7941
  wait_port 7942
  echo "== $scenario: $*" >&2
  taskset -c "$BENCH_CORE" "$BENCH" "$scenario" --addr 127.0.0.1:7941 \
    --ws-addr 127.0.0.1:7942 --server-pid "$pid" --json "$@" >>"$OUT/ws.jsonl"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

for i in $(seq 1 "$RUNS"); do
  run fanout "${fanout[@]}"
  if [ $((i % 2)) = 1 ]; then
    run idle "${idle[@]}"
    run idle --ws-only "${idle[@]}"
  else
    run idle --ws-only "${idle[@]}"
    run idle "${idle[@]}"
  fi
done

python3 bench/ws_table.py "$OUT/ws.jsonl" ${CHECK:+--check}
