"""One SQLite file per service: WAL, versioned migrations, and group-committed units of work.

A *unit of work* is a plain synchronous function `fn(tx) -> value` that runs
inside its own savepoint. Units submitted by concurrent requests are committed
together in one transaction (group commit): one COMMIT for the whole batch
instead of one per write. Because a unit never awaits, it is atomic with
respect to every other unit, which is what makes "check then change" logic
(stock, idempotency keys) safe under any concurrency.

Batches run on the event loop's thread, on a connection of their own: a batch
is short, and handing it to another thread cost more than it saved (a thread
hop per batch, and the two threads taking the GIL from each other on every
statement). Reads, which can be long (listings, the audit), run on aiosqlite's
thread on a second connection and see only committed data. The price: if
another process held the file's write lock, the loop would wait for it (up to
busy_timeout); nothing in OMS writes a service's file while the service runs:
an open database holds its lock file exclusively (`hold_lock`), so a second
instance, or a rebuild, is refused at once.

A unit that wants its changes kept *and* an error answered returns the error
instead of raising it (a declined payment is recorded, then answered 402).
A unit that raises is rolled back to its savepoint; the rest of the batch commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite

from bus import jsonb
from bus.errors import OmsError
from bus.home import private_dir, private_file
from bus.ids import new_id, now_iso
from bus.subjects import event_subject

if TYPE_CHECKING:
    from bus.outbox import Relay

log = logging.getLogger(__name__)
T = TypeVar("T")

# UPDATE ... RETURNING (3.35) and the JSON functions built in (3.38): a Python linked against an older
# SQLite is refused at start, with this reason, instead of failing in the middle of a saga.
SQLITE_NEEDED = (3, 38, 0)

MAX_BATCH = 512
FORGET_AFTER_S = 0.5  # the longest acknowledged outbox rows wait for a batch to delete them
# Meta row: a stream sequence at or below which the stream holds none of the events still in the outbox
# (written with every delete of acknowledged rows). What a relay looks up before it sends rows again starts
# after it (bus.outbox, bus.stored).
OUTBOX_FLOOR = "outbox_floor_seq"

# Tables every service has; a service's own migrations follow these.
KERNEL_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        reply BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    event_id: str
    subject: str
    body: bytes


class Holder(StrEnum):
    """What holds a database's lock: the one instance that serves it, or a rebuild by replay replacing it."""

    SERVICE = "service"
    REBUILD = "rebuild"


class Tx:
    """What a unit of work sees: SQL on the open transaction, and `emit` for events."""

    __slots__ = ("_conn", "events", "service")

    def __init__(self, conn: sqlite3.Connection, service: str) -> None:
        self._conn = conn
        self.service = service
        self.events: list[OutboxRow] = []

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> sqlite3.Cursor:
        return self._conn.executemany(sql, rows)

    def one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        return self._conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    def undo(self) -> None:
        """Undo everything this unit of work has done so far (its rows and its events); it goes on from there."""
        self._conn.execute("ROLLBACK TO unit")
        self.events.clear()

    def emit(
        self,
        event_type: str,
        key: str,
        data: dict[str, Any],
        *,
        order_id: str | None = None,
        saga_id: str | None = None,
    ) -> dict[str, Any]:
        """Record an event in the outbox, in this transaction; the relay publishes it after commit."""
        event_id = new_id("evt")
        body = {
            "event_id": event_id,
            "type": event_type,
            "occurred_at": now_iso(),
            "service": self.service,
            "order_id": order_id,
            "saga_id": saga_id,
            "data": data,
        }
        raw = jsonb.dumps(body)
        subject = event_subject(self.service, event_type, key)
        cur = self._conn.execute(
            "INSERT INTO outbox (event_id, subject, body) VALUES (?, ?, ?)", (event_id, subject, raw)
        )
        self.events.append(OutboxRow(cur.lastrowid or 0, event_id, subject, raw))
        return body


@dataclass(slots=True)
class _Unit:
    fn: Callable[[Tx], Any]
    future: asyncio.Future[Any]
    events: list[OutboxRow]


class Database:
    """A service's SQLite file, written through one group-committing writer."""

    def __init__(
        self,
        path: Path | str,
        service: str,
        migrations: Sequence[str] = (),
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
        self.migrations = (*KERNEL_MIGRATIONS, *migrations)
        self.relay: Relay | None = None
        self._conn: aiosqlite.Connection | None = None  # reads, on aiosqlite's thread
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
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        self._conn = conn
        await self._on_db_thread(self._prepare)
        wconn = sqlite3.connect(self.path, isolation_level=None)
        wconn.row_factory = sqlite3.Row
        _tune(wconn, self.fsync)
        self._wconn = wconn
        self._writer = asyncio.create_task(self._write_loop(), name=f"db-writer-{self.service}")
        return self

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done() and self._forget_upto > self._forgotten:
            # Acknowledged rows leave with a clean stop, so that the next start has nothing to look up.
            with contextlib.suppress(Exception):
                await self.commit(_nothing)
        await self._stop_writing()
        if self._conn:
            await self._conn.close()
            self._conn = None
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
        await self._on_db_thread(lambda conn: conn.execute("PRAGMA journal_mode=DELETE").fetchone())

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        _tune(conn, self.fsync)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(self.migrations[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("migrated", extra={"service": self.service, "version": number})

    async def _on_db_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a synchronous function on aiosqlite's database thread: one hop for all of it."""
        assert self._conn is not None, "database is not open"
        conn = self._conn
        return await conn._execute(lambda: fn(conn._conn))  # aiosqlite's thread-dispatch primitive

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run a read-only function on aiosqlite's thread, on the reader connection (committed data only)."""
        return await self._on_db_thread(lambda conn: fn(Tx(conn, self.service)))

    async def write(self, fn: Callable[[Tx], T], *, settle: bool = True) -> T:
        """Run a unit of work, commit it with its batch, and wait until its events are in JetStream.

        A unit that emitted nothing may still answer from state an earlier unit committed (a repeated
        idempotency key, a participant's repeat by order id): with `settle`, it waits until every event
        committed before it is in JetStream too, so that no success is answered on state whose events a
        lost database could still take with it (design decision 10). Returns the unit's value; raises
        what it raised, or the OmsError it returned.
        """
        value, events = await self.commit(fn)
        if events or settle:
            await self.settled(events)
        if isinstance(value, OmsError):
            raise value
        return value

    async def settled(self, events: Sequence[OutboxRow] = ()) -> None:
        """Wait until `events`, or without them every event committed so far, are acknowledged by JetStream."""
        await self.published(events[-1].seq if events else self.horizon)

    @property
    def horizon(self) -> int:
        """The outbox sequence of the last event committed so far (0 when nothing publishes them)."""
        return self.relay.enqueued_seq if self.relay is not None else 0

    async def published(self, seq: int) -> None:
        """Wait until JetStream acknowledged every event up to outbox sequence `seq`."""
        if self.relay is not None and seq:
            await self.relay.published(seq)

    async def commit(self, fn: Callable[[Tx], T]) -> tuple[T, list[OutboxRow]]:
        """Run and commit a unit of work without waiting for its events to be published."""
        if self._writer is None:
            raise RuntimeError("database is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        unit = _Unit(fn, future, [])
        self._queue.put_nowait(unit)
        value = await future
        return value, unit.events

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
            committed: list[OutboxRow] = []
            for unit, (ok, value) in zip(batch, outcomes, strict=True):
                committed.extend(unit.events)
                if unit.future.done():
                    continue
                if ok:
                    unit.future.set_result(value)
                else:
                    unit.future.set_exception(value)
            if committed and self.relay is not None:
                self.relay.enqueue(committed)

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
                unit.events = tx.events
                outcomes.append((True, value))
            upto = self._forget_upto
            if upto > self._forgotten:
                conn.execute("DELETE FROM outbox WHERE seq <= ?", (upto,))
                # The rows left were sent after the last one deleted, so the stream holds them later if at all.
                set_outbox_floor(conn, self._forget_floor)
            conn.execute("COMMIT")
            self._forgotten = max(self._forgotten, upto)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for unit in batch:
                unit.events = []
            raise
        return outcomes

    async def unsent_events(self) -> list[OutboxRow]:
        return await self._on_db_thread(outbox_rows)

    async def outbox_floor(self) -> int | None:
        """The outbox's floor (OUTBOX_FLOOR); None for a file that never recorded one."""
        return await self._on_db_thread(outbox_floor)

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

        def unit(tx: Tx) -> None:
            tx.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])
            set_outbox_floor(tx, floor)

        await self.commit(unit)

    def _forget_now(self) -> None:
        self._forget_timer = None
        if self._forget_upto > self._forgotten and self._writer is not None:
            self._queue.put_nowait(_Unit(_nothing, asyncio.get_running_loop().create_future(), []))


def outbox_rows(conn: sqlite3.Connection) -> list[OutboxRow]:
    """The events a file has committed and not yet seen acknowledged, in commit order."""
    return [OutboxRow(*row) for row in conn.execute("SELECT seq, event_id, subject, body FROM outbox ORDER BY seq")]


def outbox_floor(conn: sqlite3.Connection) -> int | None:
    """The file's OUTBOX_FLOOR; None when it never recorded one (a new file, or one from before the floor)."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (OUTBOX_FLOOR,)).fetchone()
    return int(row[0]) if row is not None else None


def set_outbox_floor(conn: sqlite3.Connection | Tx, seq: int) -> None:
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (OUTBOX_FLOOR, str(seq)),
    )


class SqliteTooOld(RuntimeError):
    """The SQLite library behind Python's sqlite3 lacks statements OMS runs."""


def require_sqlite(version: tuple[int, ...]) -> None:
    """Refuse an SQLite library older than the statements OMS runs need."""
    if tuple(version) < SQLITE_NEEDED:
        have, need = ".".join(map(str, version)), ".".join(map(str, SQLITE_NEEDED))
        raise SqliteTooOld(
            f"SQLite {have} is too old: OMS needs {need} or later (UPDATE ... RETURNING, JSON functions). "
            "Use a Python linked against a newer SQLite (python.org builds and the python:3.11 images are)"
        )


class DatabaseInUse(RuntimeError):
    """The file is held by another process (a serving instance, or a rebuild by replay)."""


def hold_lock(path: Path, service: str, holder: Holder) -> int:
    """Take the lock on `path`'s lock file (`<name>.lock`), exclusively, and return its descriptor (close it
    to release).

    One process at a time has a service's database: the instance that serves it or a rebuild that replaces
    it, whoever started them and wherever they keep their home (two instances writing one file would each
    answer from state the other changes). The holder writes its pid and what it is into the lock file, so
    that whoever is refused can say who holds it. Raises DatabaseInUse instead of waiting."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held_by = _holder(fd)
        os.close(fd)
        raise DatabaseInUse(_in_use(path, service, holder, held_by)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {holder} {service}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    """Give the lock back; the lock file no longer names a holder."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)


def _holder(fd: int) -> tuple[int, Holder] | None:
    """Who the lock file says holds it; None while the holder has not written yet (or is an older OMS)."""
    try:
        pid, what, *_ = os.pread(fd, 256, 0).decode().split()
        return int(pid), Holder(what)
    except (OSError, UnicodeError, ValueError):
        return None


def _in_use(path: Path, service: str, wanted: Holder, held_by: tuple[int, Holder] | None) -> str:
    pid, holder = held_by if held_by is not None else (None, None)
    who = f" (pid {pid})" if pid is not None else ""
    if holder is Holder.REBUILD:
        if wanted is Holder.REBUILD:
            return f"{path} is being rebuilt by replay already{who}"
        return f"{path} is being rebuilt by replay{who}: start the service when that is done"
    if wanted is Holder.REBUILD:
        return f"{path} is open in a running {service} service{who}: stop it first"
    if holder is Holder.SERVICE:
        return f"{path} is in use by another {service} instance{who}; one instance per database: stop it first"
    return f"{path} is in use by another process; one instance per database: stop it first"


def _nothing(tx: Tx) -> None:
    return None


def _tune(conn: sqlite3.Connection, fsync: bool = True) -> None:
    """Settings of each connection (WAL mode is the file's and stays)."""
    # FULL syncs the WAL at every commit (one per group of units): a commit survives power loss. NORMAL
    # syncs only at checkpoints: it survives a killed process, and may lose the last commits on power loss.
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=5000")
    # Each unit runs in a savepoint, whose undo journal would otherwise spill to a temp file:
    # hundreds of page writes per batch that nothing ever reads unless a unit fails.
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA foreign_keys=ON")


def statements(script: str) -> list[str]:
    """The statements of a migration script."""
    return [s.strip() for s in script.split(";") if s.strip()]
