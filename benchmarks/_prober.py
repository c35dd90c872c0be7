"""The prober of `hostile.py`: `$SRV.PING.<service>` every 50 ms for each service, as each user, in a
process of its own (so the sender's work never delays a ping), recording every ping not answered in time.

    python benchmarks/_prober.py   # stdin: one JSON line {url, users: {user: password}, services,
                                   #        interval_s, deadline_s}; prints "ready", then on "stop"
                                   #        (or end of input) one JSON line with the figures

A ping answered later than `deadline_s` (250 ms) counts as unanswered; a gap is the time from the first
ping of a run of unanswered ones to the next ping answered in time. `lag` is how late the prober's own
timer fired: a large one means the machine, not a service, held the ping back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus import loop
from bus.connect import connect
from bus.settings import Settings

GIVE_UP_S = 5.0  # a ping's answer is awaited this long, to know how late it came


async def probe(nc, service: str, interval_s: float, stop: asyncio.Event, pings: list, lags: list) -> None:
    subject = f"$SRV.PING.{service}"
    pending: set[asyncio.Task] = set()

    async def one(sent: float) -> None:
        try:
            msg = await nc.request(subject, b"", timeout=GIVE_UP_S)
            answered = json.loads(msg.data).get("name") == service
        except Exception:
            answered = False
        pings.append((sent, time.monotonic() - sent if answered else None))

    due = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        lags.append(now - due)
        task = asyncio.create_task(one(now))
        pending.add(task)
        task.add_done_callback(pending.discard)
        due += interval_s
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
        except TimeoutError:
            pass
    if pending:
        await asyncio.wait(pending, timeout=GIVE_UP_S + 1)


def figures(pings: list, lags: list, deadline_s: float, ended: float) -> dict:
    pings.sort()
    latencies = sorted(lat for _, lat in pings if lat is not None)
    gaps: list[tuple[float, float]] = []
    started = pings[0][0] if pings else ended
    run_from = None
    for sent, latency in pings:
        if latency is None or latency > deadline_s:
            run_from = sent if run_from is None else run_from
        elif run_from is not None:
            gaps.append((run_from - started, sent - run_from))
            run_from = None
    if run_from is not None:
        gaps.append((run_from - started, ended - run_from))
    late = [lat for _, lat in pings if lat is not None and lat > deadline_s]
    return {
        "pings": len(pings),
        "unanswered_in_time": sum(1 for _, lat in pings if lat is None or lat > deadline_s),
        "never_answered": sum(1 for _, lat in pings if lat is None),
        "longest_gap_s": round(max((g for _, g in gaps), default=0.0), 3),
        "gaps": [{"at_s": round(at, 3), "length_s": round(g, 3)} for at, g in sorted(gaps, key=lambda x: -x[1])[:5]],
        "latency_ms": {
            "p50": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
            "p99": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2) if latencies else None,
            "max": round(latencies[-1] * 1000, 2) if latencies else None,
        },
        "late_answers_ms": sorted(round(lat * 1000, 1) for lat in late)[-5:],
        "max_timer_lag_ms": round(max(lags, default=0.0) * 1000, 1),
    }


async def main() -> None:
    logging.getLogger("bus.connect").setLevel(logging.ERROR)  # its own connections' end is no news
    config = json.loads(sys.stdin.readline())
    settings = Settings(nats_url=config["url"])
    stop = asyncio.Event()
    conns, tasks, records = [], [], {}
    for user, password in config["users"].items():
        nc = await connect(settings, f"hostile-prober-{user}", user=user, password=password)
        conns.append(nc)
        for service in config["services"]:
            pings, lags = records.setdefault((user, service), ([], []))
            tasks.append(asyncio.create_task(probe(nc, service, config["interval_s"], stop, pings, lags)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "stop", or end of input
    ended = time.monotonic()
    stop.set()
    await asyncio.gather(*tasks)
    result = {
        f"{user}/{service}": figures(pings, lags, config["deadline_s"], ended)
        for (user, service), (pings, lags) in records.items()
    }
    for nc in conns:
        result.setdefault("_reconnects", {})[nc.options["name"]] = nc.stats["reconnects"]
        await nc.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    loop.run(main())
