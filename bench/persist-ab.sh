#!/usr/bin/env bash
# The persist scenario of bench/suite.sh (PostgreSQL store, its own cluster), for two builds of
# linechat side by side: runs alternate before, after, before, ... (RUNS of each), each build
# on its own data directory (so "before" never runs on a schema "after" migrated). The server
# runs on core 0, the load generator on core 1. Prints acked messages/s per run and the CPU
# time the server and its PostgreSQL (postmaster and its children) spent per message.
#
#   BEFORE=/path/to/old/release AFTER=target/release RUNS=3 bash bench/persist-ab.sh
#
# BEFORE and AFTER are directories holding a `linechat` binary; the load generator is
# $AFTER/linechat-bench unless BENCH says otherwise.
set -euo pipefail
RUNS=${RUNS:-3}
OUT=${OUT:-target/bench-persist-ab}
BEFORE=${BEFORE:?a directory with the old linechat binary}
AFTER=${AFTER:-target/release}
BENCH=${BENCH:-$AFTER/linechat-bench}
rm -rf "$OUT"
mkdir -p "$OUT"

wait_port() { for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

# CPU clock ticks used so far by the server ($1) and its PostgreSQL (postmaster pid file $2).
cpu_ticks() {
  python3 - "$1" "$2" <<'PY'
import os, sys
pm = int(open(sys.argv[2]).readline())
total = 0
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{p}/stat").read()
    except OSError:
        continue
    fields = stat[stat.rindex(")") + 2:].split()
    if int(p) in (int(sys.argv[1]), pm) or int(fields[1]) == pm:
        total += int(fields[11]) + int(fields[12])
print(total)
PY
}

for _ in $(seq 1 "$RUNS"); do
  for build in before after; do
    bin=$BEFORE; [ "$build" = after ] && bin=$AFTER
    data="$OUT/pgdata-$build"
    LINECHAT_HTTP_LISTEN=off taskset -c 0 "$bin/linechat" --store postgres --data-dir "$data" --rate 0 \
      --listen 127.0.0.1:7912 >>"$OUT/linechat-$build.log" 2>&1 &
    pid=$!
    wait_port 7912
    for _ in $(seq 1 300); do [ -f "$data/pgdata/postmaster.pid" ] && break; sleep 0.1; done
    cpu_before=$(cpu_ticks "$pid" "$data/pgdata/postmaster.pid")
    taskset -c 1 "$BENCH" persist --target linechat --addr 127.0.0.1:7912 --server-pid "$pid" --json |
      python3 -c 'import json,sys; r=json.load(sys.stdin); r["build"]=sys.argv[1]; print(json.dumps(r))' "$build" \
      >>"$OUT/results.jsonl"
    cpu_after=$(cpu_ticks "$pid" "$data/pgdata/postmaster.pid")
    echo "$build $((cpu_after - cpu_before))" >>"$OUT/cpu.txt"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done

python3 - "$OUT" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl")]
cpu = [l.split() for l in open(f"{out}/cpu.txt")]
hz = os.sysconf("SC_CLK_TCK")
for build in ("before", "after"):
    rate = [r["result"]["messages_per_sec"] for r in rows if r["build"] == build]
    acked = [r["result"]["messages_acked"] for r in rows if r["build"] == build]
    us = [int(t) / hz * 1e6 / n for (b, t), n in zip([c for c in cpu if c[0] == build], acked)]
    print(f"{build}: acked/s {', '.join(f'{x:,.0f}' for x in rate)} (median {statistics.median(rate):,.0f}); "
          f"server + PostgreSQL CPU per message {', '.join(f'{x:.1f}' for x in us)} us (median {statistics.median(us):.1f})")
PY
