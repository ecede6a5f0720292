#!/usr/bin/env python3
"""Medians of bench/ws.sh's ws.jsonl as the Markdown table in BENCHMARKS.md.

    python3 bench/ws_table.py target/bench-ws/ws.jsonl [--check]

--check exits non-zero if a measurement is missing or lost a delivery."""
import json
import statistics
import sys

fanouts, idle = [], {"plain": [], "ws": []}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["scenario"] == "fanout":
        fanouts.append(r)
    elif r["scenario"] == "idle":
        idle[r["transport"]].append(r)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec="{:,.0f}", unit=""):
    return "n/a" if v is None else spec.format(v) + unit


rows = []
for label, key in [("deliveries/s", "deliveries_per_sec"), ("lost deliveries", "lost_deliveries"),
                   ("server CPU per delivery", "server_cpu_ns_per_delivery"),
                   ("server CPU share", "server_cpu_share")]:
    cells = [med([r[k].get(key) for r in fanouts if k in r]) for k in ("result", "ws")]
    if key == "server_cpu_ns_per_delivery":
        cells = [fmt(c, "{:.0f}", " ns") for c in cells]
    elif key == "server_cpu_share":
        cells = [fmt(c and c * 100, "{:.0f}", "%") for c in cells]
    else:
        cells = [fmt(c) for c in cells]
    rows.append((f"fanout: {label}", *cells))
rows.append(("fanout: latency p99", *[
    fmt(med([r[k]["latency_us"]["p99"] / 1000 for r in fanouts if k in r]), "{:.2f}", " ms")
    for k in ("result", "ws")]))
ratio = med([r.get("ws_vs_plain") for r in fanouts])
rows.append(("fanout: WebSocket / plain (median of the runs' ratios)", "", fmt(ratio, "{:.2f}")))
n_idle = next((r["connections"] for rs in idle.values() for r in rs), 0)
rows.append((f"idle {n_idle:,}: server RSS per connection", *[
    fmt(med([r["rss_bytes_per_connection"] for r in idle[t]]), "{:,.0f}", " bytes")
    for t in ("plain", "ws")]))

n = max(len(fanouts), *(len(v) for v in idle.values()))
print(f"| linechat, memory store (median of {n}) | plain TCP | WebSocket |")
print("|---|---:|---:|")
for row in rows:
    print("| " + " | ".join(row) + " |")

if "--check" in sys.argv:
    problems = []
    if not fanouts or any("ws" not in r for r in fanouts):
        problems.append("no fanout over both transports")
    for r in fanouts:
        for k in ("result", "ws"):
            if r.get(k, {}).get("lost_deliveries"):
                problems.append(f"fanout over {k} lost {r[k]['lost_deliveries']} deliveries")
    for t, rs in idle.items():
        if not rs:
            problems.append(f"no idle result over {t}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print("ws check: fanout and idle ran over both transports, no delivery lost", file=sys.stderr)
