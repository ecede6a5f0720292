#!/usr/bin/env bash
# Issue 15's peers side by side: the latency scenario (10 rooms x 50 members, one sender per
# room at 200 messages/s for 10 s) and fanout (2 senders per room, full speed) against
# linechat (memory store), linechat (PostgreSQL store, its own cluster), NATS, Redis pub/sub
# and InspIRCd. RUNS rounds; in each the targets take turns, starting one further along each
# round, a fresh server per measurement. The server runs on core 0 (PostgreSQL inherits it),
# the load generator on core 1. Prints each run's p50/p99/p99.9 latency and server CPU per
# delivery, then the medians per target.
#
#   bash bench/peers.sh                                   # full size, about 10 minutes
#   RUNS=1 SCALE=tiny bash bench/peers.sh                 # seconds, to check it all works
#   TARGETS="memory redis irc" SCENARIOS=latency bash bench/peers.sh
#   BUILD=0 bash bench/peers.sh                           # the release binaries already built
#   SWEEP=100,200,500,1000,2000 bash bench/peers.sh       # also latency against offered load,
#                                                         # every target on one plot
#   BEFORE=/tmp/old TARGETS="before-memory memory before-postgres postgres" \
#     SCENARIOS="latency chat" bash bench/peers.sh        # an older build (its linechat in
#                                                         # /tmp/old) beside this one
#
# Scenarios: latency, fanout, bigroom and chat (chat: linechat and NATS only).
#
# Needs nats-server, redis-server and inspircd (apt-get install nats-server redis-server
# inspircd) and the PostgreSQL programs. Every server is set up to take a flood from one
# address: linechat with --rate 0 (as in bench/suite.sh); Redis without persistence and
# without its pub/sub output buffer limit; InspIRCd with bench/inspircd.conf (no flood or
# connection limits, no DNS; it listens on 127.0.0.1:7914).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SCALE=${SCALE:-full}
OUT=${OUT:-target/bench-peers}
TARGETS=${TARGETS:-memory postgres nats redis irc}
SCENARIOS=${SCENARIOS:-latency fanout}
SERVER_CORE=${SERVER_CORE:-0}
BENCH_CORE=${BENCH_CORE:-1}
mkdir -p "$OUT"
rm -f "$OUT/peers.jsonl"
touch "$OUT/peers.jsonl"

if [ "${BUILD:-1}" != 0 ]; then
  cargo build --release --quiet -p linechat --bin linechat
  cargo build --release --quiet -p linechat-bench
fi
LINECHAT=${LINECHAT:-${CARGO_TARGET_DIR:-target}/release/linechat}
BENCH=${BENCH:-${CARGO_TARGET_DIR:-target}/release/linechat-bench}
for program in nats-server redis-server inspircd; do
  command -v "$program" >/dev/null || { echo "$program is not installed" >&2; exit 1; }
done

if [ "$SCALE" = tiny ]; then
  latency=(--rooms 2 --clients 5 --duration 2)
  fanout=(--rooms 2 --clients 5 --senders 2 --messages 50)
  bigroom=(--rooms 1 --clients 20 --senders 1 --messages 100)
  chat=(--rooms 20 --clients 5 --duration 4)
else
  latency=()
  fanout=()
  bigroom=()
  chat=()
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

# start TARGET: a fresh server on core $SERVER_CORE; sets $server_pid, $addr and $kind.
start() {
  local on=(taskset -c "$SERVER_CORE") linechat=$LINECHAT
  case $1 in
    before-*)
      linechat=${BEFORE:?BEFORE must name a directory holding the older linechat}/linechat ;;
  esac
  case ${1#before-} in
    memory)
      "${on[@]}" "$linechat" --store memory --rate 0 --listen 127.0.0.1:7911 \
        --http-listen off 2>>"$OUT/memory.log" &
      addr=127.0.0.1:7911; kind=linechat ;;
    postgres)
      rm -rf "$OUT/pgdata"
      "${on[@]}" "$linechat" --store postgres --data-dir "$OUT/pgdata" --rate 0 \
        --listen 127.0.0.1:7912 --http-listen off 2>>"$OUT/postgres.log" &
      addr=127.0.0.1:7912; kind=linechat ;;
    nats)
      "${on[@]}" nats-server -a 127.0.0.1 -p 7913 2>>"$OUT/nats.log" &
      addr=127.0.0.1:7913; kind=nats ;;
    redis)
      "${on[@]}" redis-server --bind 127.0.0.1 --port 7915 --save '' --appendonly no \
        --protected-mode no --maxclients 10000 --client-output-buffer-limit "pubsub 0 0 0" \
        >>"$OUT/redis.log" 2>&1 &
      addr=127.0.0.1:7915; kind=redis ;;
    irc)
      "${on[@]}" inspircd --nofork --nopid --runasroot --config="$PWD/bench/inspircd.conf" \
        >>"$OUT/irc.log" 2>&1 &
      addr=127.0.0.1:7914; kind=irc ;;
    *) echo "unknown target $1" >&2; exit 1 ;;
  esac
  server_pid=$!
  pids+=("$server_pid")
  wait_port "${addr##*:}"
}

stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

# run TARGET SCENARIO ROUND ARGS...: one measurement, appended to peers.jsonl and printed.
run() {
  local target=$1 scenario=$2 round=$3; shift 3
  start "$target"
  taskset -c "$BENCH_CORE" "$BENCH" "$scenario" --target "$kind" --addr "$addr" \
    --server-pid "$server_pid" --json "$@" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); r["peer"], r["round"] = sys.argv[1], int(sys.argv[2]); print(json.dumps(r))' \
      "$target" "$round" >>"$OUT/peers.jsonl" ||
    echo "$scenario on $target: the bench reported lost, duplicated or unexpected deliveries" >&2
  stop
  tail -n 1 "$OUT/peers.jsonl" | python3 bench/peers_table.py -
}

read -ra targets <<<"$TARGETS"
for i in $(seq 1 "$RUNS"); do
  for j in "${!targets[@]}"; do
    target=${targets[$(((i - 1 + j) % ${#targets[@]}))]}
    for scenario in $SCENARIOS; do
      case $scenario in
        latency) run "$target" latency "$i" "${latency[@]}" ;;
        fanout) run "$target" fanout "$i" "${fanout[@]}" ;;
        bigroom) run "$target" bigroom "$i" "${bigroom[@]}" ;;
        chat)
          case $target in redis | irc) continue ;; esac
          run "$target" chat "$i" "${chat[@]}" ;;
        *) echo "peers.sh runs latency, fanout, bigroom and chat, not $scenario" >&2; exit 1 ;;
      esac
    done
  done
done

python3 bench/peers_table.py "$OUT/peers.jsonl" --medians ${CHECK:+--check}

# SWEEP=100,200,500 (per-sender rates): a latency sweep per target, drawn on one plot.
if [ -n "${SWEEP:-}" ]; then
  withs=()
  for target in "${targets[@]}"; do
    start "$target"
    taskset -c "$BENCH_CORE" "$BENCH" latency --target "$kind" --addr "$addr" "${latency[@]}" \
      --sweep "$SWEEP" --json | python3 -c '
import json, sys
names = {"before-memory": "linechat before (memory)", "memory": "linechat (memory)",
         "before-postgres": "linechat before (PostgreSQL)", "postgres": "linechat (PostgreSQL)",
         "nats": "NATS", "redis": "Redis pub/sub", "irc": "InspIRCd"}
r = json.load(sys.stdin)
r["target"] = names[sys.argv[1]]
print(json.dumps(r))' "$target" >"$OUT/sweep-$target.json"
    stop
    withs+=(--plot-with "$OUT/sweep-$target.json")
  done
  "$BENCH" latency --plot-only --plot "$OUT/latency.svg" "${withs[@]}"
  echo "plot: $OUT/latency.svg" >&2
fi
