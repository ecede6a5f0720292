#!/usr/bin/env bash
# The latency scenario (10 rooms x 50 members, one sender per room at 200 messages/s, 10 s)
# on the PostgreSQL store, for two builds of linechat side by side: runs alternate before,
# after, before, ... (RUNS of each), each on a fresh data directory. The server runs on core 0
# (its own PostgreSQL inherits that core), the load generator on core 1. Prints each run's
# deliveries, latency percentiles and server CPU per delivery.
#
#   BEFORE=/path/to/old/release AFTER=target/release RUNS=3 bash bench/latency-ab.sh
set -euo pipefail
RUNS=${RUNS:-3}
OUT=${OUT:-target/bench-latency-ab}
BEFORE=${BEFORE:?a directory with the old linechat binary}
AFTER=${AFTER:-target/release}
BENCH=${BENCH:-$AFTER/linechat-bench}
rm -rf "$OUT"
mkdir -p "$OUT"

wait_port() { for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

for i in $(seq 1 "$RUNS"); do
  for build in before after; do
    dir=$BEFORE
    [ "$build" = after ] && dir=$AFTER
    taskset -c 0 "$dir/linechat" --store postgres --data-dir "$OUT/pg-$build-$i" --rate 0 \
      --listen 127.0.0.1:7951 --http-listen off 2>>"$OUT/$build.log" &
    pid=$!
    wait_port 7951
    echo "== $build, run $i"
    taskset -c 1 "$BENCH" latency --addr 127.0.0.1:7951 --server-pid "$pid" |
      grep -E "deliveries |latency |server CPU"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
