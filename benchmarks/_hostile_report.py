"""What `hostile.py` prints, and the checks its run must pass."""

from __future__ import annotations

import json

DEADLINE_S = 0.25  # a ping not answered within this is a gap


def verdict(result: dict) -> dict[str, bool]:
    """The checks the run must pass."""
    internal = result["internal_replies_seen"] + sum(
        v["errors_by_code"].get("INTERNAL", 0) for v in result["service_side"].values()
    )
    return {
        "no INTERNAL reply (seen by the sender, and counted by the services)": internal == 0,
        "every reply as expected": result["unexpected_total"] == 0,
        "every $SRV.PING of every service answered within 0.25 s (no gap)": all(
            gap == 0 for gap in result["longest_gap_s"].values()
        ),
        "no service restarted": not result["restarted"],
        "the state is what the valid orders alone make it": not any(result["state_differences"].values()),
        "the stream's consumers are back to what they were": result["consumers_after_settle"]
        <= result["baseline_consumers"],
        "every valid order CONFIRMED, its repeat the same order": all(
            o["status"] == "CONFIRMED" and o["repeat_same"] for o in result["valid_orders"]
        ),
        "the server refused exactly what the permissions say (nats-py messages and raw frames)": (
            result["denied"]["expected"] == result["denied"]["server_said"]
            and result["raw"]["denied_expected"] == result["raw"]["denied_by_server"]
        ),
        "the audit finds no violation": result["audit"]["ok"],
    }


def table(counts: dict[str, int], title: str) -> None:
    print(f"\n{title}")
    rows: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        user, kind = key.split("/", 1)
        rows.setdefault(kind, {})[user] = n
    print(f"  {'kind':<28} {'cli':>7} {'admin':>7}")
    for kind, by_user in rows.items():
        print(f"  {kind:<28} {by_user.get('cli', 0):>7,} {by_user.get('admin', 0):>7,}")
    print(f"  {'total':<28} {sum(v.get('cli', 0) for v in rows.values()):>7,} "
          f"{sum(v.get('admin', 0) for v in rows.values()):>7,}")  # fmt: skip


def report(result: dict, checks: dict[str, bool]) -> None:
    print(f"hostile run, seed {result['seed']} (plan sha256 {result['plan_sha256'][:16]}, "
          f"raw frames {result['raw_frames_sha256'][:16]}), "
          f"{result['storm_seconds']} s of storm")  # fmt: skip
    table(
        result["sent"],
        f"messages sent through nats-py: {result['sent_total']:,} to {result['subjects_covered']} subjects",
    )
    table(
        result["raw"]["frames"],
        f"raw frames: {result['raw']['frames_total']:,} on {result['raw']['connections']} connections",
    )
    print(f"  server's answers to the raw connections: {result['raw']['outcomes']}")
    print(f"  -ERR lines: {result['raw']['server_errors']}")
    print("\nreplies by code:", ", ".join(f"{k} {v:,}" for k, v in result["replies_by_code"].items()))
    print("requests never answered, why:", result["unanswered_by_cause"] or "none")
    denied = result["denied"]
    print(f"denied by permissions: expected {denied['expected']}, the server said {denied['server_said']}")
    rawd = result["raw"]
    print(f"raw frames denied: expected {rawd['denied_expected']}, the server said {rawd['denied_by_server']}")
    print("requests the services counted:", json.dumps(result["service_side"]))
    print("during the run, from /metrics:", json.dumps(result["metrics_during_run"]))
    print(f"INTERNAL replies: {result['internal_replies_seen']} seen")
    print(
        "\nlongest unanswered gap per service:", ", ".join(f"{k} {v:.3f} s" for k, v in result["longest_gap_s"].items())
    )
    for key, p in result["probes"].items():
        if not key.startswith("_"):
            print(f"  {key:<18} {p['pings']:>5} pings, {p['unanswered_in_time']} not answered within "
                  f"{DEADLINE_S * 1000:.0f} ms, p50 {p['latency_ms']['p50']} ms, p99 {p['latency_ms']['p99']} ms, "
                  f"max {p['latency_ms']['max']} ms, prober timer lag max {p['max_timer_lag_ms']} ms")  # fmt: skip
    print(f"\nvalid orders: {len(result['valid_orders'])}, "
          f"{sum(o['status'] == 'CONFIRMED' for o in result['valid_orders'])} CONFIRMED")  # fmt: skip
    print(f"consumers on the stream: {result['baseline_consumers']} before, {result['consumers_after_settle']} after "
          f"(ephemeral ones given 15 s to go); created by admin's requests:")  # fmt: skip
    for consumer in result["consumers_created"]:
        print(f"  {consumer}")
    for section, found in result["state_differences"].items():
        print(f"state, {section}: {'as expected' if not found else found}")
    audit = result["audit"]
    print(f"audit: {audit['violations']} violations over {audit['orders']} orders and {audit['events']} events")
    for problem in result["unexpected_replies"][:10]:
        print("unexpected:", problem)
    for name, lines in result["logs"].items():
        if lines["counts"]:
            print(f"{name} logged: {lines['counts']}")
    print()
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
