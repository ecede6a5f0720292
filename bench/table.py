#!/usr/bin/env python3
"""Medians of bench/suite.sh's results.jsonl as the Markdown table in BENCHMARKS.md.

    python3 bench/table.py target/bench/results.jsonl [--check]

--check exits non-zero if a scenario is missing a result or lost a delivery (CI)."""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    key = (r["scenario"], r["store"], r.get("connections"))
    runs[key].append(r)


def med(key, pick):
    values = [pick(r) for r in runs.get(key, [])]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def count(v):
    return "n/a" if v is None else f"{v:,.0f}"


def ms(v):
    return "n/a" if v is None else f"{v / 1000:.2f} ms"


def us(v):
    return "n/a" if v is None else f"{v / 1000:.1f} µs"


def kib(v):
    return "n/a" if v is None else f"{v / 1024:.2f} KiB"


stores = ["memory", "postgres", "nats"]
rows = []


def row(label, scenario, pick, fmt, connections=None):
    rows.append([label] + [fmt(med((scenario, s, connections), pick)) for s in stores])


res = lambda k: (lambda r: r["result"][k])
lat = lambda k: (lambda r: r["result"]["latency_us"][k])
row("fanout: deliveries/s", "fanout", res("deliveries_per_sec"), count)
row("fanout: lost deliveries", "fanout", res("lost_deliveries"), count)
row("fanout: latency p99", "fanout", lat("p99"), ms)
row("fanout over WebSocket: deliveries/s", "fanout",
    lambda r: r.get("ws", {}).get("deliveries_per_sec"), count)
row("bigroom: deliveries/s", "bigroom", res("deliveries_per_sec"), count)
row("bigroom: latency p99", "bigroom", lat("p99"), ms)
for k, label in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]:
    row(f"latency (200 msg/s per room): {label}", "latency",
        lambda r, k=k: r["points"][0]["result"]["latency_us"][k], ms)
for k, label in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]:
    row(f"chat (1,000 rooms x 10, a message/2 s each): {label}", "chat", lat(k), ms)
row("chat: server CPU per delivery", "chat", res("server_cpu_ns_per_delivery"), us)
connections = sorted({k[2] for k in runs if k[0] == "idle"})
for n in connections:
    row(f"idle {n:,}: RSS per connection", "idle", lambda r: r["rss_bytes_per_connection"], kib, n)
row("persist: messages acknowledged/s", "persist", res("messages_per_sec"), count)
row("replay: JOIN p50", "replay", lambda r: r["result"]["join_us"]["p50"], ms)
row("replay: JOIN p99", "replay", lambda r: r["result"]["join_us"]["p99"], ms)

n_runs = max((len(v) for v in runs.values()), default=0)
print(f"| scenario (median of {n_runs}) | linechat, memory | linechat, PostgreSQL | NATS |")
print("|---|---:|---:|---:|")
for r in rows:
    print("| " + " | ".join(r) + " |")

if "--check" in sys.argv:
    problems = []
    for scenario in ["fanout", "bigroom", "latency", "idle", "chat", "persist", "replay"]:
        for store in stores:
            if store == "nats" and scenario in ("persist", "replay"):
                continue
            if not any(k[0] == scenario and k[1] == store for k in runs):
                problems.append(f"no {scenario} result for {store}")
    if not any("ws" in r for r in runs.get(("fanout", "memory", None), [])):
        problems.append("no fanout over WebSocket for memory")
    for key, results in runs.items():
        for r in results:
            lost = r.get("result", {}).get("lost_deliveries") or 0
            lost += r.get("ws", {}).get("lost_deliveries") or 0
            lost += sum(p["result"]["lost_deliveries"] for p in r.get("points", []))
            if lost:
                problems.append(f"{key[0]} on {key[1]} lost {lost} deliveries")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print("bench check: every scenario ran on every target, no delivery lost", file=sys.stderr)
