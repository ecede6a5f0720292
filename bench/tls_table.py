#!/usr/bin/env python3
"""Medians of bench/tls.sh's tls.jsonl as the Markdown table in BENCHMARKS.md.

    python3 bench/tls_table.py target/bench-tls/tls.jsonl [--check]

--check exits non-zero if a measurement is missing, lost a delivery or failed a connection."""
import json
import statistics
import sys

fanouts, handshakes = [], {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["scenario"] == "fanout":
        fanouts.append(r)
    elif r["scenario"] == "handshakes":
        for h in r["results"]:
            handshakes.setdefault((r["key"], h["transport"]), []).append(h)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def count(v):
    return "n/a" if v is None else f"{v:,.0f}"


rows = []
for transport, key in [("plain", "result"), ("TLS", "tls")]:
    pick = lambda k, key=key: med([r[key][k] for r in fanouts])
    rows.append((f"fanout over {transport}: deliveries/s", count(pick("deliveries_per_sec"))))
    rows.append((f"fanout over {transport}: lost deliveries", count(pick("lost_deliveries"))))
    rows.append((f"fanout over {transport}: latency p99",
                 "n/a" if not fanouts else f"{med([r[key]['latency_us']['p99'] for r in fanouts]) / 1000:.2f} ms"))
    ns = pick("server_cpu_ns_per_delivery")
    rows.append((f"fanout over {transport}: server CPU per delivery", "n/a" if ns is None else f"{ns:.0f} ns"))
ratio = med([r.get("tls_vs_plain") for r in fanouts])
rows.append(("fanout: TLS / plain deliveries per second", "n/a" if ratio is None else f"{ratio:.2f}"))
for (key, transport), label in [
    (("ec", "plain"), "plain TCP connections"),
    (("ec", "tls"), "TLS handshakes, ECDSA P-256 certificate"),
    (("rsa", "tls"), "TLS handshakes, RSA 2048 certificate"),
]:
    hs = handshakes.get((key, transport), [])
    rows.append((f"{label}: per second", count(med([h["per_sec"] for h in hs]))))
    us = med([h["server_cpu_us_per_connection"] for h in hs])
    rows.append((f"{label}: server CPU each", "n/a" if us is None else f"{us:.0f} µs"))
    p99 = med([h["latency_us"]["p99"] for h in hs])
    rows.append((f"{label}: connect to HELLO p99", "n/a" if p99 is None else f"{p99 / 1000:.2f} ms"))

n = max([len(fanouts)] + [len(v) for v in handshakes.values()])
print(f"| linechat, memory store (median of {n}) | |")
print("|---|---:|")
for label, value in rows:
    print(f"| {label} | {value} |")

if "--check" in sys.argv:
    problems = []
    if not fanouts:
        problems.append("no fanout result")
    for r in fanouts:
        for key in ("result", "tls"):
            if key not in r:
                problems.append(f"fanout has no {key} run")
            elif r[key]["lost_deliveries"]:
                problems.append(f"fanout ({key}) lost {r[key]['lost_deliveries']} deliveries")
    for want in [("ec", "plain"), ("ec", "tls"), ("rsa", "tls")]:
        if want not in handshakes:
            problems.append(f"no handshakes result for {want}")
    for want, hs in handshakes.items():
        for h in hs:
            if h["failures"]:
                problems.append(f"handshakes {want}: {h['failures']} failed")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print("tls bench check: fanout over both, handshakes with both keys, nothing lost", file=sys.stderr)
