"""The transport's limit: raw nats-py request-reply round trips/s against a trivial responder.

    python benchmarks/rr_baseline.py [--requests N]

The responder runs in its own process (as a service would, on the same event loop); 1 and 64
requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from asyncio.subprocess import PIPE
from pathlib import Path

import nats
from _stack import cpu_seconds

from bus import loop, natsserver
from bus.connect import inbox_prefix

RESPONDER = """
import asyncio, sys, nats
from bus import loop
async def main():
    nc = await nats.connect(sys.argv[1], user=sys.argv[2] or None, password=sys.argv[3] or None)
    async def echo(msg):
        await msg.respond(b'{"ok":true,"result":{}}')
    await nc.subscribe("bench.echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
loop.run(main())  # the services' loop: uvloop when installed
"""


async def round_trips(url: str, in_flight: int, requests: int, user: str | None, password: str | None) -> float:
    """Round trips per second with `in_flight` requests outstanding."""
    nc = await nats.connect(url, user=user, password=password, inbox_prefix=inbox_prefix(user))
    slots = asyncio.Semaphore(in_flight)
    body = json.dumps({"customer_id": "c1", "items": [{"sku": "KB-101", "qty": 1}]}).encode()

    async def one() -> None:
        async with slots:
            await nc.request("bench.echo", body, timeout=10)

    for _ in range(200):  # warm up
        await one()
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    elapsed = time.perf_counter() - started
    await nc.close()
    return requests / elapsed


async def measure(
    url: str,
    requests: int = 20_000,
    user: str | None = None,
    password: str | None = None,
    server_pid: int | None = None,
) -> dict[str, float]:
    """Start a responder process against `url` and measure 1 and 64 in flight (as `user`, if given).

    Also the CPU time of one round trip at 64 in flight: requester, responder and (given its pid)
    nats-server together, the transport's share of what a saga's messages cost."""
    responder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RESPONDER, url, user or "", password or "", stdout=PIPE
    )
    try:
        assert responder.stdout is not None
        await responder.stdout.readline()
        rr_1 = await round_trips(url, 1, max(1000, requests // 10), user, password)
        pids = [responder.pid, *([server_pid] if server_pid else [])]
        cpu0, own0 = sum(cpu_seconds(pid) for pid in pids), time.process_time()
        rr_64 = await round_trips(url, 64, requests, user, password)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0 + time.process_time() - own0
        return {"rr_1_per_s": rr_1, "rr_64_per_s": rr_64, "cpu_us_per_rr_64": round(cpu / (requests + 200) * 1e6, 1)}
    finally:
        responder.kill()
        await responder.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server, url = natsserver.start(Path(tmp))
        try:
            result = loop.run(measure(url, args.requests, server_pid=server.pid))
        finally:
            server.terminate()
            server.wait()
    print(f"raw request-reply, 1 in flight : {result['rr_1_per_s']:>9,.0f} round trips/s")
    print(f"raw request-reply, 64 in flight: {result['rr_64_per_s']:>9,.0f} round trips/s")
    print(f"CPU per round trip at 64 in flight (requester, responder, nats-server): {result['cpu_us_per_rr_64']} us")


if __name__ == "__main__":
    main()
