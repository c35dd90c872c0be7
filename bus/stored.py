"""Which of some events the stream holds already: looked up before an outbox is sent again.

A relay deletes acknowledged outbox rows a little after their ack, with the
next batch of writes; a process killed in between leaves rows the stream has.
Sent again within the duplicate window, the stream drops them; after a longer
outage it would store them a second time. So what an outbox holds at start is
looked up first, by event id, among its service's subjects after the outbox's
floor (`bus.db.OUTBOX_FLOOR`: a stream sequence below which none of its rows
can be). The floor only bounds the read; what is dropped from a resend is what
was found, by id.

The read is one ordered consumer from the floor up to the stream's last
sequence when the lookup began, headers only: the event id is the
`Nats-Msg-Id` every OMS writer sets (a message without one was not published
by an outbox). Memory is the set of ids asked about; messages are not kept.
A stall or a gap fails the lookup (`LookupFailed`), never a guess: the caller
retries, or gives up, but does not send blindly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

IDLE_TIMEOUT_S = 10.0  # no message for this long while some are due: the stream stalled


class LookupFailed(RuntimeError):
    """The stream could not be read through; nothing can be said about what it holds."""


@dataclass(frozen=True)
class Stored:
    found: dict[str, int]  # event id -> stream sequence, of the ids asked about that the stream holds
    through_seq: int  # the stream's last sequence when the lookup began: an id not found is not at or below it
    read: int  # messages read
    seconds: float


async def stream_end(js: JetStreamContext, stream: str) -> int:
    """The stream's last sequence now (0 without a stream)."""
    try:
        return (await js.stream_info(stream)).state.last_seq
    except NotFoundError:
        return 0


async def stored_events(
    js: JetStreamContext,
    stream: str,
    subject: str,
    event_ids: Collection[str],
    after_seq: int | None,
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> Stored:
    """Which of `event_ids` the stream holds on `subject` (a filter) after `after_seq`; None reads from its
    first message (a file without a floor). A floor past the stream's end means the stream was made anew:
    it is read from its first message too."""
    started = time.perf_counter()
    wanted = set(event_ids)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return Stored({}, 0, 0, time.perf_counter() - started)  # no stream: it holds nothing (and takes nothing)
    end = info.state.last_seq
    start = info.state.first_seq if after_seq is None or after_seq > end else after_seq + 1
    if not wanted or start > end or not info.state.messages:
        return Stored({}, end, 0, time.perf_counter() - started)
    found, read = await _scan(js, stream, subject, wanted, start, end, idle_timeout_s)
    return Stored(found, end, read, time.perf_counter() - started)


@dataclass
class _Progress:
    last_seq: int
    pending: int = -1  # what the last message said was still to come on the subject
    read: int = 0
    heard: float = field(default_factory=time.monotonic)


async def _scan(
    js: JetStreamContext, stream: str, subject: str, wanted: set[str], start: int, end: int, idle_timeout_s: float
) -> tuple[dict[str, int], int]:
    found: dict[str, int] = {}
    done = asyncio.Event()
    lost: str | None = None
    at = _Progress(last_seq=start - 1)

    async def on_msg(msg: Msg) -> None:
        nonlocal lost
        if done.is_set():
            return
        meta = msg.metadata
        seq, left = meta.sequence.stream, meta.num_pending
        at.heard = time.monotonic()
        if seq <= at.last_seq:
            return  # redelivered after the client reset its consumer
        if seq > end:
            done.set()
            return
        # A callback subscription that fell behind drops messages silently: each message's count of those
        # still to come must be one less than the last one's.
        if at.pending >= 0 and left < at.pending - 1:
            lost = f"messages of {subject} before stream sequence {seq} were not delivered"
            done.set()
            return
        at.last_seq, at.pending, at.read = seq, left, at.read + 1
        event_id = (msg.headers or {}).get(js_api.Header.MSG_ID)
        if event_id in wanted:
            found[event_id] = seq
        if left == 0 or seq >= end or len(found) == len(wanted):
            done.set()

    config = js_api.ConsumerConfig(
        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start, headers_only=True
    )
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, config=config, cb=on_msg)
    try:
        info = await sub.consumer_info()
        if not done.is_set() and info.num_pending + (info.delivered.consumer_seq or 0) == 0:
            return found, 0  # none of the subject's messages is after `start`
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), idle_timeout_s)
            except TimeoutError:
                if time.monotonic() - at.heard >= idle_timeout_s:
                    raise LookupFailed(
                        f"no message from {stream} for {idle_timeout_s:.0f}s after sequence {at.last_seq}"
                    ) from None
    finally:
        await sub.unsubscribe()
    if lost is not None:
        raise LookupFailed(lost)
    return found, at.read
