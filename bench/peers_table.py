#!/usr/bin/env python3
"""bench/peers.sh's results: one line per run, or the medians per target as a Markdown table.

    python3 bench/peers_table.py target/bench-peers/peers.jsonl            # a line per run
    python3 bench/peers_table.py target/bench-peers/peers.jsonl --medians [--check]

A path of - reads standard input. --check exits non-zero if a run lost a delivery."""
import json
import statistics
import sys
from collections import defaultdict

NAMES = {"before-memory": "linechat before, memory", "memory": "linechat, memory",
         "before-postgres": "linechat before, PostgreSQL", "postgres": "linechat, PostgreSQL",
         "nats": "NATS", "redis": "Redis pub/sub", "irc": "InspIRCd"}


def result(r):
    """The run's one load result: latency's single point, or fanout's plain run."""
    return r["points"][0]["result"] if r["scenario"] == "latency" else r["result"]


def fmt(spec, scale=1):
    """A formatter of values divided by `scale` (n/a for none)."""
    return lambda v: "n/a" if v is None else spec.format(v / scale)


ms, cpu, rate = fmt("{:.2f} ms", 1000), fmt("{:.2f} us", 1000), fmt("{:,.0f}")


source = sys.stdin if sys.argv[1] == "-" else open(sys.argv[1])
runs = [json.loads(line) for line in source if line.strip()]

if "--medians" not in sys.argv:
    for r in runs:
        x = result(r)
        lat = x["latency_us"]
        print(f"{r['scenario']:8} {NAMES.get(r['peer'], r['peer']):22} round {r['round']}: "
              f"p50 {ms(lat['p50'])} p99 {ms(lat['p99'])} p99.9 {ms(lat['p999'])}, "
              f"server CPU {cpu(x['server_cpu_ns_per_delivery'])} per delivery, "
              f"{rate(x['deliveries_per_sec'])} deliveries/s, {x['lost_deliveries']} lost",
              flush=True)
    sys.exit(0)

by = defaultdict(list)
for r in runs:
    by[(r["scenario"], r["peer"])].append(result(r))
peers = [p for p in NAMES if any(k[1] == p for k in by)]


def med(scenario, peer, pick):
    values = [pick(x) for x in by.get((scenario, peer), [])]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


rows = []
for scenario in ["latency", "chat", "fanout", "bigroom"]:
    if not any(k[0] == scenario for k in by):
        continue
    for key, label in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]:
        rows.append([f"{scenario}: latency {label}"] + [
            ms(med(scenario, p, lambda x, k=key: x["latency_us"][k])) for p in peers])
    rows.append([f"{scenario}: server CPU per delivery"] + [
        cpu(med(scenario, p, lambda x: x["server_cpu_ns_per_delivery"])) for p in peers])
    rows.append([f"{scenario}: deliveries/s"] + [
        rate(med(scenario, p, lambda x: x["deliveries_per_sec"])) for p in peers])
n_runs = max((len(v) for v in by.values()), default=0)
print(f"| scenario (median of {n_runs}) | " + " | ".join(NAMES[p] for p in peers) + " |")
print("|---|" + "---:|" * len(peers))
for row in rows:
    print("| " + " | ".join(row) + " |")

if "--check" in sys.argv:
    lost = [f"{s} on {p}: {x['lost_deliveries']} lost" for (s, p), xs in by.items() for x in xs
            if x["lost_deliveries"]]
    for problem in lost:
        print(problem, file=sys.stderr)
    sys.exit(1 if lost else 0)
