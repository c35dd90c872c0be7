"""One SQLite file per service: WAL, versioned migrations, and group-committed units of work.

A *unit of work* is a plain synchronous function `fn(tx) -> value` that runs
inside its own savepoint. Units submitted by concurrent requests are committed
together in one transaction (group commit): one COMMIT for the whole batch
instead of one per write. Because a unit never awaits, it is atomic with
respect to every other unit, which is what makes "check then change" logic
(stock, idempotency keys) safe under any concurrency.

A unit ends in one of three ways: it returns its value (kept); it raises
(rolled back to its savepoint, the rest of the batch commits); or it returns
`Rejected(error)`: its writes are kept *and* the error is answered (a declined
payment is recorded, then answered 402). What must happen once the unit has
committed (start a saga, wake one, set a gauge) it registers with
`tx.after_commit`; the writer runs it right after COMMIT.

`Database.run(fn, wait=...)` runs a unit and waits, as `wait` says, for the
stream to acknowledge events (`Acked`): a reply that reports a change is sent
only once the change's events are in JetStream (design decision 10).

Batches run on the event loop's thread, on a connection of their own: a batch
is short, and handing it to another thread cost more than it saved (a thread
hop per batch, and the two threads taking the GIL from each other on every
statement). Reads, which can be long (listings, the audit), run on a thread of
their own on a second connection and see only committed data. The price: if
another process held the file's write lock, the loop would wait for it (up to
busy_timeout); nothing in OMS writes a service's file while the service runs:
an open database holds its lock file exclusively (`bus.filelock`), so a second
instance, or a rebuild, is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from bus import outbox as ob
from bus.filelock import Holder, hold_lock, release_lock
from bus.home import private_dir, private_file
from bus.migrations import Migrations, Schema, migrate
from bus.outbox import OutboxRow, Publisher
from bus.sqlite import connect, require_sqlite
from bus.unit import Rejected, Tx

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 512
FORGET_AFTER_S = 0.5  # the longest acknowledged outbox rows wait for a batch to delete them

# Tables every service has; a service's own follow. A migration is never changed: write a new one.
KERNEL = Migrations(
    "kernel",
    (
        ob.OUTBOX_TABLE
        + """
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        reply BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    ),
)


class Acked(StrEnum):
    """What `Database.run` waits for, once its unit has committed, before it returns."""

    NONE = "none"  # nothing: the unit's events are on their way
    OWN = "own"  # the unit's own events are in JetStream (a unit that emitted none does not wait)
    # Everything committed up to the unit is in JetStream: its own events, or, when it emitted none, those
    # of whatever it answers from (a repeated idempotency key, a participant's repeat by order id).
    ALL = "all"


@dataclass(slots=True)
class _Unit:
    fn: Callable[[Tx], Any]
    future: asyncio.Future[Any]
    events: list[OutboxRow] = field(default_factory=list)
    after: list[Callable[[], None]] | None = None


class Database:
    """A service's SQLite file, written through one group-committing writer."""

    def __init__(
        self,
        path: Path | str,
        service: str,
        schema: Schema = Schema(),
        *,
        holder: Holder = Holder.SERVICE,
        forget_after_s: float = FORGET_AFTER_S,
        fsync: bool = True,
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync  # every commit reaches the disk before it returns (OMS_DURABILITY=fsync)
        self.service = service
        self.holder = holder
        self.forget_after_s = forget_after_s
        self.schema = schema
        self.publisher: Publisher | None = None  # where committed rows go (the relay), `publish_with`
        self._reader: ThreadPoolExecutor | None = None  # reads, on a thread of their own ...
        self._rconn: sqlite3.Connection | None = None  # ... on this connection
        self._wconn: sqlite3.Connection | None = None  # batches of units, on the loop's thread
        self._queue: asyncio.Queue[_Unit] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._forget_upto = 0  # outbox rows up to here are acknowledged: the next batch deletes them
        self._forget_floor = 0  # ... and the stream sequence of the last of them: the floor that delete writes
        self._forgotten = 0
        self._forget_timer: asyncio.TimerHandle | None = None
        self.commits = 0
        self.units = 0
        self._lock: int | None = None  # the file's lock (`hold_lock`) while it is open

    async def open(self) -> Database:
        require_sqlite(sqlite3.sqlite_version_info)
        private_dir(self.path.parent)
        self._lock = hold_lock(self.path, self.service, self.holder)
        private_file(self.path)  # before SQLite creates it: SQLite gives its -wal, -shm and -journal its mode
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-read-{self.service}")
        self._rconn = await self._on_reader(lambda _: self._connect())
        await self._on_reader(self._prepare)
        self._wconn = self._connect()
        self._writer = asyncio.create_task(self._write_loop(), name=f"db-writer-{self.service}")
        return self

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, self.fsync)

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done() and self._forget_upto > self._forgotten:
            # Acknowledged rows leave with a clean stop, so that the next start has nothing to look up.
            with contextlib.suppress(Exception):
                await self.commit(_nothing)
        await self._stop_writing()
        if self._reader is not None:
            if self._rconn is not None:
                await self._on_reader(lambda conn: conn.close())
                self._rconn = None
            self._reader.shutdown(wait=False)
            self._reader = None
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None

    async def _stop_writing(self) -> None:
        if self._forget_timer is not None:
            self._forget_timer.cancel()
            self._forget_timer = None
        if self._writer:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._wconn:
            self._wconn.close()
            self._wconn = None

    async def standalone(self) -> None:
        """Stop writing, fold the WAL into the file and leave WAL mode: one self-contained file."""
        await self._stop_writing()
        await self._on_reader(lambda conn: conn.execute("PRAGMA journal_mode=DELETE").fetchone())

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn, KERNEL, self.schema, self.service)

    async def _on_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a synchronous function on the reader's thread, with its connection: one hop for all of it."""
        assert self._reader is not None, "database is not open"
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, self._rconn)

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run a read-only function on the reader's thread and connection (committed data only)."""
        return await self._on_reader(lambda conn: fn(Tx(conn, self.service)))

    async def run(self, fn: Callable[[Tx], T | Rejected], *, wait: Acked = Acked.ALL) -> T:
        """Run a unit of work, commit it with its batch, wait for the stream as `wait` says; returns the
        unit's value. Raises what the unit raised, or the error it returned `Rejected` (after the wait)."""
        value, events = await self.commit(fn)
        if wait is Acked.ALL or (wait is Acked.OWN and events):
            await self.published(events[-1].seq if events else self.horizon)
        if isinstance(value, Rejected):
            raise value.error
        return value

    async def commit(self, fn: Callable[[Tx], T]) -> tuple[T, list[OutboxRow]]:
        """Run and commit a unit of work; returns its value as it is (a `Rejected` too) and its outbox rows.
        What `run` is built on, for callers that look at the rows themselves (tests, benchmarks); waits for
        nothing. A service says how long it waits by `run`'s `wait` alone."""
        if self._writer is None:
            raise RuntimeError("database is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        unit = _Unit(fn, future)
        self._queue.put_nowait(unit)
        value = await future
        return value, unit.events

    def publish_with(self, publisher: Publisher) -> None:
        """Hand every batch's committed rows to `publisher` (a relay), and wait on it in `run`."""
        self.publisher = publisher

    @property
    def horizon(self) -> int:
        """The outbox sequence of the last event committed so far (0 when nothing publishes them)."""
        return self.publisher.enqueued_seq if self.publisher is not None else 0

    async def published(self, seq: int) -> None:
        """Wait until JetStream acknowledged every event up to outbox sequence `seq`."""
        if self.publisher is not None and seq:
            await self.publisher.published(seq)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(0)  # one turn of the loop: units from requests that are ready join this batch
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            assert self._wconn is not None
            try:
                outcomes = self._run_batch(self._wconn, batch)
            except Exception as exc:  # the COMMIT itself failed: nothing in the batch happened
                log.exception("commit failed", extra={"service": self.service})
                for unit in batch:
                    if not unit.future.done():
                        unit.future.set_exception(exc)
                continue
            self.commits += 1
            self.units += len(batch)
            committed = [row for unit in batch for row in unit.events]
            if committed and self.publisher is not None:
                self.publisher.enqueue(committed)
            for unit, (ok, value) in zip(batch, outcomes, strict=True):
                if ok and unit.after:
                    ok, value = _after_commit(unit.after, value)
                if unit.future.done():
                    continue
                if ok:
                    unit.future.set_result(value)
                else:
                    unit.future.set_exception(value)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Unit]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for unit in batch:
                tx = Tx(conn, self.service)
                conn.execute("SAVEPOINT unit")
                try:
                    value = unit.fn(tx)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                    outcomes.append((False, exc))
                    continue
                conn.execute("RELEASE unit")
                unit.events, unit.after = tx.events, tx._after
                outcomes.append((True, value))
            upto = self._forget_upto
            if upto > self._forgotten:
                ob.forget(conn, upto, self._forget_floor)
            conn.execute("COMMIT")
            self._forgotten = max(self._forgotten, upto)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for unit in batch:
                unit.events, unit.after = [], None
            raise
        return outcomes

    async def unsent_events(self) -> list[OutboxRow]:
        return await self._on_reader(ob.outbox_rows)

    async def outbox_floor(self) -> int | None:
        """The outbox's floor (bus.outbox.OUTBOX_FLOOR); None for a file that never recorded one."""
        return await self._on_reader(ob.outbox_floor)

    def forget_sent(self, up_to_seq: int, stream_seq: int) -> None:
        """Drop outbox rows the stream has acknowledged (history lives in JetStream, not here); `stream_seq`
        is where the stream stored the last of them, the outbox's floor once they are deleted.

        The delete rides along with the next batch of writes; when none comes soon (`forget_after_s`), an
        empty unit carries it. A row still there after a crash is looked up in the stream before it is sent
        again (bus.outbox), so the stream stores it once however long the outage.
        """
        self._forget_upto = max(self._forget_upto, up_to_seq)
        # The latest, not the highest: each batch is stored after the one before, and a stream made anew
        # (deleted and created again) starts its sequences over.
        self._forget_floor = stream_seq
        if self._forget_timer is None and self._writer is not None:
            loop = asyncio.get_running_loop()
            self._forget_timer = loop.call_later(self.forget_after_s, self._forget_now)

    async def forget_stored(self, seqs: Sequence[int], floor: int) -> None:
        """Drop the outbox rows `seqs`, found in the stream already, and set the floor to `floor`: the caller
        knows that no row left is in the stream at or below it."""
        await self.commit(lambda tx: ob.forget_found(tx, seqs, floor))

    def _forget_now(self) -> None:
        self._forget_timer = None
        if self._forget_upto > self._forgotten and self._writer is not None:
            self._queue.put_nowait(_Unit(_nothing, asyncio.get_running_loop().create_future()))


def _after_commit(hooks: list[Callable[[], None]], value: Any) -> tuple[bool, Any]:
    """Run a committed unit's hooks; the first that raises fails the unit's caller instead."""
    try:
        for hook in hooks:
            hook()
    except Exception as exc:
        log.exception("after-commit hook failed; its unit stays committed")
        return False, exc
    return True, value


def _nothing(tx: Tx) -> None:
    return None
