"""The client side of `hostile.py`: the storm of nats-py messages, the raw connections, the valid orders,
and what each answer was (`classify`) and whether it was the answer it had to be."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import _hostile_frames as raw
import nats.errors
from _hostile_inputs import ENDPOINTS, ORDER, OTHER_INBOX, OWN_INBOX, SAGA, SKUS, Message, is_valid

from bus import auth
from bus.client import Client
from bus.connect import connect
from bus.frames import MAX_HEADER_BYTES
from bus.settings import Settings
from bus.subjects import ORDERS_PLACE

ENDPOINT_OF = {e.subject: e for e in ENDPOINTS}
IN_FLIGHT = 256  # messages handed to tasks and not finished yet, at most


class Progress:
    """How many messages the storm has sent; the valid orders and the raw frames wait for their turn."""

    def __init__(self) -> None:
        self.sent = 0
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    def advance(self, sent: int) -> None:
        self.sent = sent
        for n, future in [w for w in self._waiting if w[0] <= sent]:
            self._waiting.remove((n, future))
            if not future.done():
                future.set_result(None)

    async def reached(self, n: int) -> None:
        if self.sent < n:
            future = asyncio.get_running_loop().create_future()
            self._waiting.append((n, future))
            await future


class Sender:
    """The client side of the storm: two connections per user (each one's inbox is the other's target)."""

    def __init__(self, settings: Settings, concurrency: int, timeout_s: float) -> None:
        self.settings = settings
        self.slots = asyncio.Semaphore(concurrency)
        self.timeout_s = timeout_s
        self.conns: dict[str, list[Any]] = {}
        self.sent: Counter[tuple[str, str]] = Counter()  # (user, kind)
        self.subjects: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.codes_by_kind: dict[str, Counter[str]] = {}
        self.denials: Counter[str] = Counter()  # the server's permission violations, by user
        self.expected_denials: Counter[str] = Counter()
        self.denied_subjects: Counter[str] = Counter()  # what the server said it refused, by user and subject
        self.unexpected: list[dict] = []  # replies a check refused (an INTERNAL, an OK to an invalid command...)
        self.created_consumers: list[str] = []
        self.unanswered_by_cause: Counter[str] = Counter()
        self.unanswered: list[dict] = []  # samples of requests that got no answer: what they were
        self.progress = Progress()
        self.seeds: list[dict] = []
        self.digest = hashlib.sha256()
        self.raw_digest = hashlib.sha256()

    async def open(self) -> None:
        for user in ("cli", "admin"):
            creds = auth.login(self.settings, user)
            for n in range(2):
                nc = await connect(creds, f"hostile-{user}-{n}", persistent=False, on_error=self._on_error(user))
                await nc.request("$SRV.PING", b"", timeout=5)  # makes its reply inbox, a target of the other
                self.conns.setdefault(user, []).append(nc)

    def _on_error(self, user: str):
        def heard(exc: Exception) -> None:
            text = str(exc)
            if "permissions violation" in text.lower():
                self.denials[user] += 1
                self.denied_subjects[f"{user} {text.split(' to ', 1)[-1]}"] += 1

        return heard

    async def close(self) -> None:
        for conns in self.conns.values():
            for nc in conns:
                await nc.flush()
                await nc.close()

    def fill(self, m: Message, index: int) -> tuple[str, bytes, dict | None, str | None, Any]:
        seed = self.seeds[index % len(self.seeds)]
        conns = self.conns[m.user]
        nc, other = conns[index % 2], conns[(index + 1) % 2]

        def text(value: str) -> str:
            value = value.replace(ORDER, seed["order_id"]).replace(SAGA, seed["saga_id"])
            return value.replace(OTHER_INBOX, inbox(other)).replace(OWN_INBOX, inbox(nc))

        body = m.body.replace(ORDER.encode(), seed["order_id"].encode()).replace(
            SAGA.encode(), seed["saga_id"].encode()
        )
        headers = {k: text(v) for k, v in m.headers.items()} if m.headers else None
        return text(m.subject), body, headers, text(m.reply) if m.reply is not None else None, nc

    async def send(self, m: Message, index: int) -> None:
        self.digest.update(m.digest_text())
        subject, body, headers, reply, nc = self.fill(m, index)
        self.sent[(m.user, m.kind)] += 1
        self.subjects[subject] += 1
        if m.denied:
            self.expected_denials[m.user] += 1
            await nc.publish(subject, body, reply=reply or "", headers=headers)
            self._count(m, "DENIED")
            return
        if m.reply is not None:
            await nc.publish(subject, body, reply=reply, headers=headers)
            self._count(m, "NO_REPLY_ASKED")
            return
        async with self.slots:
            try:
                msg = await nc.request(subject, body, timeout=self.timeout_s, headers=headers)
            except nats.errors.NoRespondersError:
                self._count(m, "NO_RESPONDERS")
                return
            except nats.errors.TimeoutError:
                self._count(m, "NO_REPLY")
                size = sum(len(k) + len(v) + 4 for k, v in (headers or {}).items()) + 12
                self.unanswered_by_cause[
                    f"header block over {MAX_HEADER_BYTES} bytes (bus.frames drops it)"
                    if size > MAX_HEADER_BYTES
                    else "other"
                ] += 1
                if len(self.unanswered) < 40:
                    names = {k: len(v) for k, v in (headers or {}).items()}
                    self.unanswered.append({"kind": m.kind, "user": m.user, "subject": subject, "headers": names,
                                            "body_bytes": len(body)})  # fmt: skip
                return
        self._check(m, subject, body, msg)

    def _count(self, m: Message, code: str) -> None:
        self.codes[code] += 1
        self.codes_by_kind.setdefault(m.kind, Counter())[code] += 1

    def _check(self, m: Message, subject: str, body: bytes, msg: Any) -> None:
        code, reply = classify(msg)
        self._count(m, code)
        endpoint = ENDPOINT_OF.get(subject)
        problem = None
        if code == "INTERNAL":
            problem = "INTERNAL"
        elif endpoint is not None and code not in ("OK", "VALIDATION_ERROR", "NOT_FOUND", "CONFLICT"):
            problem = f"unexpected code {code}"
        elif endpoint is not None and isinstance(reply, dict) and reply.get("ok") is False:
            if not (msg.headers or {}).get("Nats-Service-Error-Code"):
                problem = "an error reply without the micro error headers"
        if m.kind == "key_repeat" and (code != "OK" or reply["result"]["order_id"] not in self.seed_ids()):
            problem = f"a repeat under a seed key answered {code}"
        elif m.kind == "key_conflict" and code != "CONFLICT":
            problem = f"another request under a seed key answered {code}"
        elif m.kind == "bad_key" and code != "VALIDATION_ERROR":
            problem = f"a bad Idempotency-Key answered {code}"
        elif endpoint is not None and code == "OK" and not m.valid:
            if endpoint.mutating or not is_valid(endpoint, body, self.settings.limits):
                problem = "OK to a request that is not valid"
        if code == "JS_OK" and isinstance(reply, dict) and reply.get("type", "").endswith("consumer_create_response"):
            config = reply.get("config", {})
            self.created_consumers.append(
                {
                    "name": reply.get("name"),
                    "deliver": config.get("deliver_subject"),
                    "group": config.get("deliver_group"),
                }
            )
        if problem:
            self.unexpected.append({"problem": problem, "kind": m.kind, "user": m.user, "subject": subject,
                                    "body": body[:120].decode("utf-8", "backslashreplace"),
                                    "reply": msg.data[:300].decode("utf-8", "backslashreplace")})  # fmt: skip

    def seed_ids(self) -> set[str]:
        return {seed["order_id"] for seed in self.seeds}


def inbox(nc: Any) -> str:
    return bytes(nc._resp_sub_prefix).decode().rstrip(".")


def classify(msg: Any) -> tuple[str, Any]:
    """A reply's code: the OMS envelope's, or what $SRV, JetStream or the server answered."""
    status = (msg.headers or {}).get("Status")
    if status and not msg.data:
        return f"STATUS_{status}", None
    try:
        reply = json.loads(msg.data)
    except ValueError:
        return ("JS_MSG" if (msg.headers or {}).get("Nats-Stream") else "NOT_JSON"), None
    if isinstance(reply, dict) and isinstance(reply.get("ok"), bool):
        return ("OK" if reply["ok"] else str(reply.get("error", {}).get("code"))), reply
    if not isinstance(reply, dict):
        return "OTHER", reply
    kind = str(reply.get("type", ""))
    if kind.startswith("io.nats.micro."):
        return "SRV_OK", reply
    if kind.startswith("io.nats.jetstream."):
        error = reply.get("error")
        return (f"JS_ERR_{error.get('err_code')}" if isinstance(error, dict) else "JS_OK"), reply
    if (msg.headers or {}).get("Nats-Stream"):
        return "JS_MSG", reply
    if "server" in reply:
        return ("SYS_ERR" if reply.get("error") else "SYS_OK"), reply
    return "OTHER", reply


async def storm(sender: Sender, messages: Iterable[Message], total: int) -> float:
    started = time.monotonic()
    pending: set[asyncio.Task] = set()
    for index, m in enumerate(messages):
        task = asyncio.create_task(sender.send(m, index))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sender.progress.advance(index + 1)
        if len(pending) >= IN_FLIGHT:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if index % 64 == 63:
            await asyncio.sleep(0)  # let the valid orders and the raw frames in
    await asyncio.gather(*pending)
    return time.monotonic() - started


async def raw_frames(settings: Settings, sender: Sender, seed: int, connections: int, per: int, total: int):
    host, port = settings.nats_servers()[0].removeprefix("nats://").rsplit(":", 1)
    passwords = {user: auth.load(settings, user).password for user in ("cli", "admin")}
    tally = raw.RawTally()
    found = raw.batches(seed + 1, connections, per)
    for batch in found:
        sender.raw_digest.update(
            batch.user.encode() + b"".join(f for _, f in batch.frames) + (batch.fatal or ("", b""))[1]
        )
    expected_denials = Counter()
    for n, batch in enumerate(found):
        await sender.progress.reached(min(total, n * total // max(1, connections)))
        expected_denials[batch.user] += raw.denied_frames(batch)
        await raw.send_batch(host, int(port), batch, passwords[batch.user], tally)
    return tally, expected_denials


async def valid_orders(settings: Settings, sender: Sender, count: int, seed: int, total: int) -> list[dict]:
    """Orders placed through the storm, each sent twice with its key: the only changes the run may make."""
    nc = await connect(auth.login(settings, "cli"), "hostile-valid", persistent=False)
    client = Client(nc, timeout_s=30)
    placed = []
    try:
        for j in range(count):
            await sender.progress.reached((j + 1) * total // (count + 1))
            body = {"customer_id": f"hostile-valid-{j}", "items": [{"sku": SKUS[j % 3], "qty": 1 + j % 3}]}
            key = f"hostile-valid-{seed}-{j}"
            first = await client.call(ORDERS_PLACE, body, idempotency_key=key)
            again = await client.call(ORDERS_PLACE, body, idempotency_key=key)
            placed.append(
                {"body": body, "key": key, "order": first, "repeat_same": again["order_id"] == first["order_id"]}
            )
    finally:
        await nc.close()
    return placed
