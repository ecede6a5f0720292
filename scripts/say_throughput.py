#!/usr/bin/env python3
"""Acknowledged-write throughput of a running linechat server.

C connections each pipeline M SAYs (keeping at most W unacknowledged) into one of R rooms and
wait for every OK SAY. Prints messages acknowledged per second. A stop-gap until the
linechat-bench tool exists (issue 4).

    python3 scripts/say_throughput.py --addr 127.0.0.1:7777 --clients 50 --messages 2000
"""
import argparse
import asyncio
import time


async def client(host, port, n, room, messages, window, payload):
    reader, writer = await asyncio.open_connection(host, port)
    await reader.readline()  # HELLO
    writer.write(f"NICK load{n}\nJOIN {room} NONE\n".encode())
    await writer.drain()
    for _ in range(2):
        line = await reader.readline()
        assert line.startswith(b"OK "), line
    sent = acked = errors = 0
    while acked < messages:
        burst = min(window - (sent - acked), messages - sent)
        if burst > 0:
            writer.write((f"SAY {payload}\n" * burst).encode())
            sent += burst
            await writer.drain()
        line = await reader.readline()
        if line.startswith(b"OK SAY "):
            acked += 1
        elif line.startswith(b"ERR "):
            acked += 1
            errors += 1
        elif not line:
            raise RuntimeError("connection closed")
    writer.write(b"QUIT\n")
    await writer.drain()
    writer.close()
    return errors


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", default="127.0.0.1:7777")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--messages", type=int, default=2000, help="per client")
    p.add_argument("--window", type=int, default=200, help="unacknowledged SAYs per client")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    a = p.parse_args()
    host, port = a.addr.rsplit(":", 1)
    payload = "x" * a.size
    start = time.perf_counter()
    errors = await asyncio.gather(*[
        client(host, int(port), n, f"load{n % a.rooms}", a.messages, a.window, payload)
        for n in range(a.clients)
    ])
    elapsed = time.perf_counter() - start
    total = a.clients * a.messages
    print(f"{total} messages from {a.clients} clients in {elapsed:.2f}s: "
          f"{total / elapsed:,.0f} acknowledged/s, {sum(errors)} refused")


asyncio.run(main())
