"""The outbox: the table of committed events, and the relay that publishes them to JetStream in order,
pipelined, exactly once.

A unit of work writes its events as outbox rows in its own transaction
(`bus.unit.Tx.emit`). Rows reach the relay straight from the writer after
commit (the relay is the database's `Publisher`), and from the table at start.
Each is published with `Nats-Msg-Id` = event id, so a resend within the
stream's duplicate window is dropped by the stream.
Writers wait on `published(seq)` before answering their caller.

What the outbox holds at start may be in the stream already (a process killed
between an ack and the delete that follows it), and after an outage longer
than the duplicate window the stream would store it again. So before sending
anything, the relay looks those rows up in the stream by event id after the
outbox's floor (bus.stored) and drops the ones found; until that lookup
succeeds nothing is sent (it is retried like a failed publish).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import nats.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import Error as JsError

from bus.stored import Stored, stored_events, stream_end
from bus.subjects import service_events_subject

log = logging.getLogger(__name__)

BATCH = 256
ACK_TIMEOUT_S = 5.0
BACKOFF_CAP_S = 2.0
LOOKUP_FAILED = "cannot tell which outbox events the stream holds; will look again before sending any"

# Part of the kernel's first migration (bus.db.KERNEL): never change it, write a new one.
OUTBOX_TABLE = """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        body BLOB NOT NULL
    );
"""
# Meta row: a stream sequence at or below which the stream holds none of the events still in the outbox
# (written with every delete of acknowledged rows). What a relay looks up before it sends rows again starts
# after it (bus.stored).
OUTBOX_FLOOR = "outbox_floor_seq"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    event_id: str
    subject: str
    body: bytes


# -- the table ----------------------------------------------------------------


def insert(conn: sqlite3.Connection, event_id: str, subject: str, body: bytes) -> OutboxRow:
    cur = conn.execute("INSERT INTO outbox (event_id, subject, body) VALUES (?, ?, ?)", (event_id, subject, body))
    return OutboxRow(cur.lastrowid or 0, event_id, subject, body)


def outbox_rows(conn: sqlite3.Connection) -> list[OutboxRow]:
    """The events a file has committed and not yet seen acknowledged, in commit order."""
    return [OutboxRow(*row) for row in conn.execute("SELECT seq, event_id, subject, body FROM outbox ORDER BY seq")]


def outbox_floor(conn: sqlite3.Connection) -> int | None:
    """The file's OUTBOX_FLOOR; None when it never recorded one (a new file, or one from before the floor)."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (OUTBOX_FLOOR,)).fetchone()
    return int(row[0]) if row is not None else None


def set_outbox_floor(conn: Executes, seq: int) -> None:
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (OUTBOX_FLOOR, str(seq)),
    )


def forget(conn: Executes, up_to_seq: int, floor: int) -> None:
    """Delete the rows up to `up_to_seq`, acknowledged; the rows left were sent after them, so the stream
    holds them later than `floor` if at all."""
    conn.execute("DELETE FROM outbox WHERE seq <= ?", (up_to_seq,))
    set_outbox_floor(conn, floor)


def forget_found(conn: Executes, seqs: Sequence[int], floor: int) -> None:
    """Delete the rows `seqs`, found in the stream already; no row left is in it at or below `floor`."""
    for seq in seqs:
        conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
    set_outbox_floor(conn, floor)


class Executes(Protocol):
    """An SQLite connection, or a unit of work's `Tx`."""

    def execute(self, sql: str, params: Sequence[object] = ..., /) -> object: ...


# -- the relay ----------------------------------------------------------------


class Publisher(Protocol):
    """Where a database hands its committed rows, and asks how far the stream has acknowledged them."""

    @property
    def enqueued_seq(self) -> int: ...
    def enqueue(self, rows: Iterable[OutboxRow]) -> None: ...
    def published(self, seq: int) -> Awaitable[None]: ...


class OutboxFile(Protocol):
    """What the relay needs of the database whose outbox it sends (`bus.db.Database`)."""

    service: str

    def publish_with(self, publisher: Publisher) -> None: ...
    def unsent_events(self) -> Awaitable[list[OutboxRow]]: ...
    def outbox_floor(self) -> Awaitable[int | None]: ...
    def forget_sent(self, up_to_seq: int, stream_seq: int) -> None: ...
    def forget_stored(self, seqs: Sequence[int], floor: int) -> Awaitable[None]: ...


class Relay:
    """Moves outbox rows to the stream; tracks the highest sequence acknowledged without gaps."""

    def __init__(self, js: JetStreamContext, db: OutboxFile, stream: str) -> None:
        self.js = js
        self.db = db
        self.stream = stream
        self.acked_seq = 0
        self.enqueued_seq = 0  # the highest sequence handed to the relay: every event committed so far
        self.published_total = 0
        self.duplicates = 0
        self.failures = 0  # rounds that failed (publishes refused, unanswered, disconnected; lookups) and were retried
        self.found_stored = 0  # rows of the outbox at start that the stream held already (not sent again)
        self.lookup: Stored | None = None  # how that was found out
        self.last_ack_at = 0.0
        self._pending: deque[OutboxRow] = deque()
        self._resend: list[OutboxRow] = []  # the outbox at start, to be looked up in the stream first
        self._floor: int | None = None
        self._wake = asyncio.Event()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = 0
        self._task: asyncio.Task[None] | None = None
        db.publish_with(self)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    @property
    def oldest_pending_age_s(self) -> float:
        """How long the oldest unpublished event has waited (0 when none)."""
        return 0.0 if not self._pending else max(0.0, time.monotonic() - self.last_ack_at)

    async def start(self) -> None:
        rows = await self.db.unsent_events()
        self._floor = await self.db.outbox_floor()
        if rows:
            self.acked_seq = rows[0].seq - 1
            self.enqueue(rows)
        self._resend = rows
        self.last_ack_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"relay-{self.db.service}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        for _, _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

    def enqueue(self, rows: Iterable[OutboxRow]) -> None:
        self._pending.extend(rows)
        if self._pending:  # rows come in commit order: the last pending one is the newest
            self.enqueued_seq = max(self.enqueued_seq, self._pending[-1].seq)
        self._wake.set()

    async def published(self, seq: int) -> None:
        """Wait until every event up to `seq` is acknowledged by JetStream."""
        if seq <= self.acked_seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter_ids += 1
        heapq.heappush(self._waiters, (seq, self._waiter_ids, fut))
        await fut

    async def drain(self, timeout: float) -> bool:
        """Wait (bounded) until nothing is pending; True if the outbox is empty."""
        if self._pending:
            try:
                await asyncio.wait_for(self.published(self._pending[-1].seq), timeout)
            except TimeoutError:
                return False
        return not self._pending

    async def _run(self) -> None:
        failures = 0
        while True:  # nothing is sent before the outbox found at start is looked up in the stream
            try:
                await self._drop_stored()
                break
            except Exception as exc:
                failures += 1
                await self._back_off(exc, failures, LOOKUP_FAILED)
        failures = 0
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
            try:
                stored_at = await self._publish(batch)
            except Exception as exc:
                failures += 1
                await self._back_off(exc, failures, "event publish failed; will retry")
                continue
            failures = 0
            for _ in batch:
                self._pending.popleft()
            self.acked_seq = batch[-1].seq
            self.last_ack_at = time.monotonic()
            self._release_waiters()
            self.db.forget_sent(batch[-1].seq, stored_at)

    async def _back_off(self, exc: Exception, failures: int, what: str) -> None:
        """After a failed round (a lookup, a publish): count it, say so, wait a capped, jittered backoff."""
        self.failures += 1
        delay = random.uniform(0, min(BACKOFF_CAP_S, 0.05 * 2**failures))
        log.warning(what, extra={"service": self.db.service, "error": repr(exc), "retry_in_s": round(delay, 3)})
        await asyncio.sleep(delay)

    async def _drop_stored(self) -> None:
        """Take what the outbox held at start and the stream holds already out of the resend, and out of
        the outbox; then every row left is sent. A new file notes the stream's end as its floor."""
        rows = self._resend
        if not rows:
            if self._floor is None:  # nothing of a new file is in the stream yet
                self._floor = await stream_end(self.js, self.stream)
                await self.db.forget_stored((), self._floor)
            return
        stored = await stored_events(
            self.js, self.stream, service_events_subject(self.db.service), [r.event_id for r in rows], self._floor
        )
        if stored.found:
            self._pending = deque(row for row in self._pending if row.event_id not in stored.found)
        # The rows not found are in the stream nowhere up to its end then, and nothing was sent since.
        await self.db.forget_stored([r.seq for r in rows if r.event_id in stored.found], stored.through_seq)
        self._resend, self._floor = [], stored.through_seq
        self.found_stored, self.lookup = self.found_stored + len(stored.found), stored
        log.info(
            "outbox resend",
            extra={
                "service": self.db.service,
                "events": len(rows),
                "already_stored": len(stored.found),
                "read": stored.read,
                "lookup_ms": round(stored.seconds * 1000, 1),
            },
        )
        # Every row before the first one still to send is in the stream now.
        first_unsent = self._pending[0].seq if self._pending else self.enqueued_seq + 1
        self.acked_seq = max(self.acked_seq, first_unsent - 1)
        self._release_waiters()

    async def _publish(self, batch: list[OutboxRow]) -> int:
        """Publish a batch and wait for every ack; returns the highest stream sequence they name."""
        futures: list[asyncio.Future[js_api.PubAck]] = []
        try:
            for row in batch:
                futures.append(
                    await self.js.publish_async(
                        row.subject,
                        row.body,
                        stream=self.stream,
                        headers={"Nats-Msg-Id": row.event_id},
                        # No stall wait (it costs a task per message): a batch is far below the
                        # client's limit of pending acks, and every batch ends before the next starts.
                        wait_stall=None,
                    )
                )
            acks = await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT_S)
        except (nats.errors.Error, JsError, TimeoutError):
            for fut in futures:
                fut.cancel()  # frees publish_async's in-flight slot
            raise
        self.published_total += len(acks)
        self.duplicates += sum(1 for ack in acks if ack.duplicate)
        return max(ack.seq for ack in acks)

    def _release_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.acked_seq:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
