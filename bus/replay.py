"""Recovery by replay: rebuild a service's SQLite file from OMS_EVENTS, then swap it in atomically.

The service's own events (`events.<service>.>`) are read in stream order by
ordered consumers and applied with its projection (`ServiceSpec.apply`) to a
fresh file next to the real one, in large group-committed batches. Each event
id is applied once: a copy the stream holds a second time (one published again
after its duplicate window, or by hand) is skipped, so a projection never sees
an event twice. A projection writes rows only and emits nothing: the events
already are in the stream, so the rebuilt outbox is empty. `ServiceSpec.after_replay`
then fills in what the events alone cannot say (for the order service: saga
deadlines and which steps a resumed saga must re-send). Only when all of it has committed does the
fresh file replace the real one (`os.replace`); a failed rebuild leaves the old
file as it was.

The service must not be running meanwhile: the rebuild holds the file's lock
(`bus.db.hold_lock`), which a serving instance holds too, and `oms recover` also
checks pid files first. Events the old file committed but never published (a killed
service's outbox) go into the stream before the rebuild reads it, so their
changes are kept; those of them the stream holds already (acknowledged just
before the kill) are looked up first and not sent again (bus.stored).
`rebuild` needs only settings and a JetStream context, so a CLI process can
run it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from bus.connect import connect
from bus.contract import Event
from bus.db import Acked, Database
from bus.filelock import DatabaseInUse, Holder, hold_lock, release_lock
from bus.home import private_dir
from bus.outbox import OutboxRow, outbox_floor, outbox_rows, set_outbox_floor
from bus.reader import ReadFailed, WindowReader
from bus.settings import Settings
from bus.spec import ServiceSpec
from bus.stored import LookupFailed, stored_events
from bus.subjects import service_events_subject
from bus.unit import Tx

log = logging.getLogger(__name__)

BATCH = 2_000  # events per unit of work
REPLAYED_THROUGH = "replayed_through_seq"  # meta row: the stream sequence the file was rebuilt up to
# The event ids applied so far, in the file being rebuilt (on disk: a Python set of every id would not be
# bounded); dropped when the rebuild finishes, its pages left free for the service's writes.
APPLIED_TABLE = "replay_applied"

Progress = Callable[[int, int], None]
Projection = Callable[[Tx, Event], None]


class ReplayError(RuntimeError):
    """The rebuild cannot be done or went wrong; the real database file was not touched."""


@dataclass(frozen=True)
class ReplayStats:
    service: str
    applied: int  # events read and handled, `repeats` among them
    total: int
    last_seq: int
    seconds: float
    repeats: int = 0  # copies of an event applied already, skipped

    @property
    def rate(self) -> float:
        """Events applied per second."""
        return self.applied / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rate": round(self.rate, 1)}


async def rebuild(
    settings: Settings, spec: ServiceSpec, js: JetStreamContext, *, progress: Progress | None = None
) -> ReplayStats:
    """Rebuild `spec`'s database from the stream up to its last sequence now; returns what was applied."""
    if spec.apply is None:
        raise ReplayError(f"the {spec.name} service has no projection to rebuild its database with")
    real = settings.db_path(spec.name)
    private_dir(real.parent)
    try:
        lock = hold_lock(real, spec.name, Holder.REBUILD)  # until the new file is in place: no service opens it
    except DatabaseInUse as exc:
        raise ReplayError(f"cannot rebuild the {spec.name} database: {exc}") from None
    try:
        return await _rebuild(settings, spec, js, real, progress)
    finally:
        release_lock(lock)


async def _rebuild(
    settings: Settings, spec: ServiceSpec, js: JetStreamContext, real: Path, progress: Progress | None
) -> ReplayStats:
    assert spec.apply is not None
    try:
        info = await js.stream_info(settings.stream_name)
    except NotFoundError:
        raise ReplayError(f"stream {settings.stream_name} not found: nothing to rebuild {spec.name} from") from None
    if await _publish_leftovers(js, settings.stream_name, spec.name, real):
        info = await js.stream_info(settings.stream_name)  # read up to what was just added
    fresh = real.with_name(real.name + ".rebuild")
    _remove(fresh)  # what a crashed rebuild left behind
    started = time.perf_counter()
    reader = WindowReader(js, settings.stream_name, service_events_subject(spec.name), info.state.last_seq)
    try:
        async with Database(fresh, spec.name, spec.schema, holder=Holder.REBUILD) as db:
            await db.run(_track_applied, wait=Acked.NONE)  # a rebuild publishes nothing
            applied, repeats = await _load(db, reader, spec.apply, progress)
            await db.run(lambda tx: _finish(tx, spec, settings, reader), wait=Acked.NONE)
            # One self-contained file: the WAL is folded in, so nothing next to it is needed.
            await db.standalone()
    except BaseException:
        _remove(fresh)
        raise
    _swap(fresh, real)
    stats = ReplayStats(spec.name, applied, reader.total, reader.last_seq, time.perf_counter() - started, repeats)
    log.info("database rebuilt from the event stream", extra=stats.to_dict())
    return stats


async def recover(settings: Settings, spec: ServiceSpec, *, progress: Progress | None = None) -> ReplayStats:
    """`rebuild` on a connection of its own, as the service's user (for `--recover`)."""
    nc = await connect(settings, f"{spec.name}-recover", persistent=False)
    try:
        return await rebuild(settings, spec, nc.jetstream(), progress=progress)
    finally:
        await nc.close()


async def _load(db: Database, reader: WindowReader, apply: Projection, progress: Progress | None) -> tuple[int, int]:
    """Read a window, apply it, repeat: events are applied in stream order. Returns the events handled
    and, of those, the repeats skipped."""
    # Reading and applying are both CPU-bound Python under one GIL; overlapping them was measured
    # slower (the writer thread waits for the GIL after every statement), so they take turns.
    applied = repeats = 0
    first = True
    while not reader.finished:
        try:
            window = await reader.next_window()
        except ReadFailed as exc:
            raise ReplayError(str(exc)) from None
        if progress is not None and first:
            progress(0, reader.total)
        first = False
        # All batches of a window go to the writer at once: it commits them as one group.
        commits = [
            asyncio.create_task(db.run(_applier(apply, window[start : start + BATCH]), wait=Acked.NONE))
            for start in range(0, len(window), BATCH)
        ]
        try:
            for commit in commits:
                handled, repeated = await commit
                applied, repeats = applied + handled, repeats + repeated
                if progress is not None:
                    progress(applied, reader.total)
        finally:
            for commit in commits:
                commit.cancel()
    return applied, repeats


def _track_applied(tx: Tx) -> None:
    tx.execute(f"CREATE TABLE {APPLIED_TABLE} (event_id TEXT PRIMARY KEY) WITHOUT ROWID")


def _applier(apply: Projection, batch: list[tuple[int, bytes]]) -> Callable[[Tx], tuple[int, int]]:
    """A unit of work applying `batch`; it returns how many events it handled and how many of those were
    applied before (and skipped)."""

    def unit(tx: Tx) -> tuple[int, int]:
        repeats = 0
        for seq, body in batch:
            try:
                event = Event.model_validate_json(body)
            except ValidationError:
                raise ReplayError(f"stream message {seq} is not an OMS event; remove it or fix it first") from None
            first = tx.execute(
                f"INSERT INTO {APPLIED_TABLE} (event_id) VALUES (?) ON CONFLICT DO NOTHING", (event.event_id,)
            )
            if first.rowcount:
                apply(tx, event)
            else:
                repeats += 1
        if tx.events:
            raise ReplayError(f"the projection emitted {tx.events[0].subject}; replay must not add events")
        return len(batch), repeats

    return unit


def _finish(tx: Tx, spec: ServiceSpec, settings: Settings, reader: WindowReader) -> None:
    if spec.after_replay is not None:
        spec.after_replay(tx, settings)
    tx.execute(f"DROP TABLE {APPLIED_TABLE}")
    tx.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (REPLAYED_THROUGH, str(reader.last_seq)))
    set_outbox_floor(tx, reader.end_seq)  # the outbox is empty: none of its events is in the stream yet
    if tx.events or tx.one("SELECT 1 FROM outbox LIMIT 1"):
        raise ReplayError("the rebuilt outbox is not empty; replay must not add events")


async def _publish_leftovers(js: JetStreamContext, stream: str, service: str, real: Path) -> int:
    """Publish what the old file's outbox still holds and the stream does not: changes a killed service
    committed and never published (what it had published and not yet deleted is looked up first, by event
    id, as a relay does at start). A lost or unreadable file has nothing to give."""
    rows, floor = _unsent(real)
    if not rows:
        return 0
    try:
        stored = await stored_events(js, stream, service_events_subject(service), [r.event_id for r in rows], floor)
    except LookupFailed as exc:
        raise ReplayError(
            f"cannot tell which of the {len(rows)} events the old file never saw acknowledged the stream holds: "
            f"{exc}; run the rebuild again"
        ) from None
    unsent = [row for row in rows if row.event_id not in stored.found]
    for row in unsent:
        await js.publish(row.subject, row.body, stream=stream, headers={"Nats-Msg-Id": row.event_id})
    log.info(
        "published the old outbox before the rebuild",
        extra={"events": len(unsent), "already_stored": len(stored.found)},
    )
    return len(unsent)


def _unsent(real: Path) -> tuple[list[OutboxRow], int | None]:
    """The old file's outbox and its floor."""
    if not real.exists():
        return [], None
    try:
        conn = sqlite3.connect(real)  # not a Database: no migrations on a file about to be replaced
        try:
            return outbox_rows(conn), outbox_floor(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("old database unreadable: its unpublished events are lost", extra={"error": repr(exc)})
        return [], None


def _swap(fresh: Path, real: Path) -> None:
    """Put the rebuilt file in place of the real one, durably; the old file's WAL must not outlive it."""
    with open(fresh, "rb") as f:
        os.fsync(f.fileno())
    # SQLite would replay an old -wal (or roll back with an old -journal) into the new file.
    for leftover in _companions(real):
        leftover.unlink(missing_ok=True)
    os.replace(fresh, real)
    directory = os.open(real.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _companions(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _remove(path: Path) -> None:
    for leftover in (path, *_companions(path)):
        leftover.unlink(missing_ok=True)
