"""Leases in a JetStream KV bucket: which instance holds a key (a service's partition), fenced by revision.

A lease is one key of the bucket OMS_LEASES, written with a per-message TTL. It is taken with `create`
(refused while anyone holds it), kept by writing it again before the TTL runs out, each write expecting
the revision the holder last wrote (`Nats-Expected-Last-Subject-Sequence`), and let go by deleting it at
that revision. An instance paused past its TTL finds, on its next write, that the key moved on: the write
is refused and it knows it lost the lease. The server counts TTLs in whole seconds and drops an expired
key at its next check, so a lease ends between TTL and about TTL + 1.5 s after its last renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

BUCKET = "OMS_LEASES"
WRONG_LAST_SEQUENCE = (10071, 10164)


@dataclass(frozen=True)
class Held:
    """A lease this instance holds: its key, the revision it last wrote, and when that write was made."""

    key: str
    holder: str
    revision: int
    written_at: float  # time.monotonic() of the write


def instance_id() -> str:
    """This process, as a lease holder names it: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Leases:
    """The bucket and the three moves on a key: acquire, renew, release."""

    def __init__(self, js: JetStreamContext, *, ttl_s: float, replicas: int = 1, bucket: str = BUCKET) -> None:
        self.js = js
        self.ttl_s = max(1, math.ceil(ttl_s))  # the server's TTLs are whole seconds
        self.replicas = replicas
        self.bucket = bucket
        self._kv: KeyValue | None = None

    async def open(self) -> Leases:
        try:
            self._kv = await self.js.key_value(self.bucket)
        except BucketNotFoundError:
            config = js_api.KeyValueConfig(
                bucket=self.bucket,
                history=1,
                replicas=self.replicas,
                storage=js_api.StorageType.FILE,
                limit_marker_ttl=self.ttl_s,  # lets keys carry a TTL of their own
            )
            self._kv = await self.js.create_key_value(config)
        return self

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "open the leases first"
        return self._kv

    def _body(self, holder: str) -> bytes:
        return json.dumps({"holder": holder, "ttl_s": self.ttl_s, "at": time.time()}).encode()

    async def acquire(self, key: str, holder: str) -> Held | None:
        """The lease on `key`, or None while someone else holds it."""
        try:
            revision = await self.kv.create(key, self._body(holder), msg_ttl=self.ttl_s)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            # KeyNotFoundError: the create met the holder's entry, which expired before nats-py looked at it
            # (to tell a live entry from a deletion marker); the next try finds the key free.
            return None
        return Held(key, holder, revision, time.monotonic())

    async def renew(self, held: Held) -> Held | None:
        """Write the lease again before it runs out; None when it was lost (expired, and maybe taken)."""
        subject = f"$KV.{self.bucket}.{held.key}"
        headers = {js_api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(held.revision)}
        try:
            ack = await self.js.publish(subject, self._body(held.holder), headers=headers, msg_ttl=self.ttl_s)
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return None
            raise
        return Held(held.key, held.holder, ack.seq, time.monotonic())

    async def release(self, held: Held) -> None:
        """Let the lease go at once (only the revision this holder wrote: never someone else's)."""
        with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError, APIError):
            await self.kv.delete(held.key, last=held.revision)

    async def holder(self, key: str) -> tuple[str, int] | None:
        """Who holds `key` now, and at which revision."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return str(json.loads(entry.value).get("holder")), int(entry.revision or 0)


class Keeper:
    """Keeps one lease: renews it every third of its TTL; when a renewal is refused, or none succeeded for
    the TTL (this process was paused, or cut off), it calls `on_lost` once and stops."""

    def __init__(self, leases: Leases, held: Held, on_lost: Callable[[Held], None]) -> None:
        self.leases = leases
        self.held = held
        self.on_lost = on_lost
        self.lost = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Keeper:
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.held.key}")
        return self

    async def stop(self, *, release: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if release and not self.lost:
            await self.leases.release(self.held)

    def still_held(self) -> bool:
        """Whether the lease can be trusted now: not lost, and its last write younger than its TTL."""
        return not self.lost and time.monotonic() - self.held.written_at < self.leases.ttl_s

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.leases.ttl_s / 3)
            if not self.still_held():
                return self._lose("no renewal within the TTL")
            try:
                renewed = await self.leases.renew(self.held)
            except Exception as exc:  # the cluster is electing, or we are cut off: try again until the TTL
                log.warning("lease renewal failed", extra={"key": self.held.key, "error": repr(exc)})
                continue
            if renewed is None:
                return self._lose("the key moved on")
            self.held = renewed

    def _lose(self, why: str) -> None:
        self.lost = True
        log.warning("lease lost", extra={"key": self.held.key, "why": why})
        self.on_lost(self.held)
