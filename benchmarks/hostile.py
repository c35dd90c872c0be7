"""Hostile input against a throwaway stack: every subject a client can name, as `cli` and as `admin`.

    python benchmarks/hostile.py [--messages 20000] [--seed 1] [--raw-connections 120]
                                 [--frames-per-connection 30] [--valid-orders 24] [--out DIR]

Sends `--messages` hostile messages through nats-py (`_hostile_inputs.py`: garbage JSON, wrong types,
huge numbers, NaN, deep nesting, oversized and non-UTF-8 bodies, bad and huge Idempotency-Keys, junk
headers, reply subjects aimed at events.> and at other inboxes, events published by hand, the stream's
API, $SRV with and without names) and raw protocol frames over sockets of their own
(`_hostile_frames.py`). Meanwhile a prober (`_prober.py`) pings every service every 50 ms; valid orders
(each sent twice under its key) go through the same storm. At the end: what was sent, the replies by code,
INTERNAL replies (must be 0), the longest unanswered gap per service, whether the state is what the valid
requests alone make it (stock, reservations, payments, orders, sagas, chaos, the stream), and the audit.
Prints the figures and writes DIR/hostile.json; exits 1 when a check fails. Same seed, same messages
(the plan's digest says so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _hostile_inputs import SKUS, plan, seed_key, seed_order
from _hostile_report import DEADLINE_S, report, verdict
from _hostile_sender import Sender, raw_frames, storm, valid_orders
from _hostile_state import compare, delta, scrape, service_stats, snapshot, stats_delta
from _stack import embedded_stack, pids, restock

from bus import auth, loop, natsserver
from bus.accounts import JS_PREFIX
from bus.audit import run_audit
from bus.client import Client
from bus.connect import connect
from bus.settings import SERVICES, Settings
from bus.stream import jetstream
from bus.subjects import ORDERS_PLACE

PING_EVERY_S = 0.05


async def prober(settings: Settings) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("_prober.py")),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    users = {user: auth.load(settings, user).password for user in ("admin", "cli")}
    config = {"url": settings.resolved_nats_url(), "users": users, "services": list(SERVICES),
              "interval_s": PING_EVERY_S, "deadline_s": DEADLINE_S}  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(config).encode() + b"\n")
    await proc.stdin.drain()
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
    return proc


async def stop_prober(proc: asyncio.subprocess.Process) -> dict:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"stop\n")
    await proc.stdin.drain()
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    await proc.wait()
    return json.loads(line)


async def seed_orders(client: Client) -> list[dict]:
    seeds = []
    for i in range(4):
        order = await client.call(ORDERS_PLACE, seed_order(i), idempotency_key=seed_key(i))
        seeds.append({"order_id": order["order_id"], "saga_id": "saga_" + order["order_id"].removeprefix("ord_")})
    return seeds


async def consumers_left(nc: Any, stream: str, created: list[dict]) -> list[dict]:
    """What became of the consumers admin's requests created: alive or gone, and what they delivered."""
    found = []
    for consumer in created:
        reply = json.loads(
            (await nc.request(f"{JS_PREFIX}.CONSUMER.INFO.{stream}.{consumer['name']}", b"", timeout=5)).data
        )
        if "error" in reply:
            found.append({**consumer, "alive": False})
        else:
            delivered = reply.get("delivered", {}).get("consumer_seq")
            found.append(
                {**consumer, "alive": True, "deliveries": delivered, "redelivered": reply.get("num_redelivered")}
            )
    return found


async def settle_consumers(js: Any, stream: str, want: int, timeout_s: float = 15.0) -> int:
    """Ephemeral consumers go away 5 s after their last use: wait for them, up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = (await js.stream_info(stream)).state.consumer_count
        if count <= want or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.5)


def log_lines(settings: Settings, offsets: dict[str, int]) -> dict[str, dict]:
    """What the services logged during the run, by message, from where their logs stood before it."""
    found = {}
    for name in SERVICES:
        path = settings.home / "logs" / f"{name}.log"
        counts: Counter[str] = Counter()
        examples: dict[str, dict] = {}
        with open(path, "rb") as f:
            f.seek(offsets.get(name, 0))
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    counts["(not JSON)"] += 1
                    continue
                event = str(record.get("event", ""))
                if record.get("level") in ("warning", "error", "critical") or "nats" in event:
                    reason = f" ({record['reason']})" if "reason" in record else ""
                    what = f"{record.get('level')}: {event}{reason}"
                    counts[what] += 1
                    if what not in examples:
                        examples[what] = {k: str(v)[:300] for k, v in record.items() if k not in ("ts", "service")}
        found[name] = {"counts": dict(counts.most_common(20)), "examples": examples}
    return found


async def run(args: argparse.Namespace) -> dict:
    ports = {f"OMS_METRICS_PORT_{name.upper()}": str(natsserver.free_port()) for name in SERVICES}
    async with embedded_stack(**ports) as settings:
        admin = await connect(auth.login(settings, "admin"), "hostile-control", persistent=False)
        control = Client(admin, timeout_s=10)
        js = await jetstream(admin, settings.stream_name)
        await restock(settings, 2000, SKUS)
        cli = await connect(auth.login(settings, "cli"), "hostile-seed", persistent=False)
        seeds = await seed_orders(Client(cli, timeout_s=30))
        await cli.close()

        sender = Sender(settings, args.concurrency, args.timeout)
        sender.seeds = seeds
        await sender.open()
        procs_before = pids(settings)
        before = await snapshot(control, js, settings.stream_name)
        stats_before = await service_stats(admin)
        metrics_before = scrape(settings)
        offsets = {name: (settings.home / "logs" / f"{name}.log").stat().st_size for name in SERVICES}
        probe = await prober(settings)
        await asyncio.sleep(1.0)  # pings before the storm, for comparison

        messages = plan(args.seed, args.messages, settings.limits, push_consumers=not args.no_push_consumers)
        started = time.monotonic()
        storm_task = asyncio.create_task(storm(sender, messages, args.messages))
        raw_task = asyncio.create_task(
            raw_frames(settings, sender, args.seed, args.raw_connections, args.frames_per_connection, args.messages)
        )
        valid_task = asyncio.create_task(valid_orders(settings, sender, args.valid_orders, args.seed, args.messages))
        took = await storm_task
        tally, raw_denials = await raw_task
        placed = await valid_task
        attack_s = time.monotonic() - started
        await sender.close()
        await asyncio.sleep(1.0)  # pings after the storm
        probes = await stop_prober(probe)

        consumers = await settle_consumers(js, settings.stream_name, before["stream"]["consumers"])
        left = await consumers_left(admin, settings.stream_name, sender.created_consumers)
        after = await snapshot(control, js, settings.stream_name)
        stats_after = await service_stats(admin)
        metrics_after = scrape(settings)
        procs_after = pids(settings)
        audit = await run_audit(control, js, settings.stream_name, settings.saga)
        logs = log_lines(settings, offsets)
        await admin.close()

    differences = compare(before, after, placed)
    return {
        "seed": args.seed,
        "plan_sha256": sender.digest.hexdigest(),
        "raw_frames_sha256": sender.raw_digest.hexdigest(),
        "storm_seconds": round(took, 1),
        "attack_seconds": round(attack_s, 1),
        "push_consumers": not args.no_push_consumers,
        "sent": {f"{user}/{kind}": n for (user, kind), n in sorted(sender.sent.items())},
        "sent_total": sum(sender.sent.values()),
        "subjects_covered": len(sender.subjects),
        "sent_by_subject": dict(sorted(sender.subjects.items())),
        "replies_by_code": dict(sender.codes.most_common()),
        "replies_by_kind": {k: dict(v.most_common()) for k, v in sorted(sender.codes_by_kind.items())},
        "denied": {
            "expected": dict(sender.expected_denials),
            "server_said": dict(sender.denials),
            "by_subject": dict(sender.denied_subjects.most_common()),
        },
        "unexpected_replies": sender.unexpected[:50],
        "unexpected_total": len(sender.unexpected),
        "unanswered_by_cause": dict(sender.unanswered_by_cause),
        "unanswered_samples": sender.unanswered,
        "internal_replies_seen": sender.codes["INTERNAL"],
        "raw": {
            "connections": tally.connections,
            "frames": {f"{user}/{kind}": n for (user, kind), n in sorted(tally.frames.items())},
            "frames_total": sum(tally.frames.values()),
            "outcomes": dict(tally.outcomes),
            "server_errors": dict(tally.errors.most_common()),
            "denied_expected": sum(raw_denials.values()),
            "denied_by_server": tally.denied,
        },
        "valid_orders": [
            {
                "key": p["key"],
                "order_id": p["order"]["order_id"],
                "status": p["order"]["status"],
                "repeat_same": p["repeat_same"],
            }
            for p in placed
        ],
        "probes": probes,
        "longest_gap_s": {
            name: max(v["longest_gap_s"] for k, v in probes.items() if k.endswith(f"/{name}")) for name in SERVICES
        },
        "service_side": stats_delta(stats_before, stats_after),
        "metrics_during_run": delta(metrics_before, metrics_after),
        "restarted": sorted(n for n in procs_before if procs_after.get(n) != procs_before[n]),
        "consumers_created": left,
        "consumers_after_settle": consumers,
        "baseline_consumers": before["stream"]["consumers"],
        "state_differences": differences,
        "audit": audit.to_dict(),
        "logs": logs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="hostile messages through nats-py")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--raw-connections", type=int, default=120, help="raw socket connections (each logs in)")
    parser.add_argument("--frames-per-connection", type=int, default=30)
    parser.add_argument("--valid-orders", type=int, default=24, help="valid orders placed during the storm")
    parser.add_argument("--concurrency", type=int, default=128, help="requests awaiting their answer at a time")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds a request waits for its answer")
    parser.add_argument(
        "--no-push-consumers",
        action="store_true",
        help="leave out admin's requests for push consumers (each may leave one behind, delivering into OMS)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    result = loop.run(run(args))
    checks = verdict(result)
    result["checks"] = checks
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile.json").write_text(json.dumps(result, indent=2))
    report(result, checks)
    print(f"wrote {args.out / 'hostile.json'}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
