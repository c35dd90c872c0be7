"""Reading one service's events from OMS_EVENTS in stream order, window by window (for a rebuild by replay)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

log = logging.getLogger(__name__)

WINDOW = 50_000  # events one consumer reads before it is stopped and they are applied: bounds memory
WINDOW_TRIES = 4  # reads of one window before the rebuild gives up (each after a stall or a lost place)
IDLE_TIMEOUT_S = 10.0  # no event for this long while some are still due: the stream stalled


class ReadFailed(RuntimeError):
    """The events could not be read through, after every try."""


class WindowReader:
    """The subject's events up to `end_seq`, in windows; each window is one ordered consumer.

    Messages arrive by callback (several times faster than `next_msg`), so flow
    control cannot pace them; stopping the consumer when its window is full is
    what bounds memory. A callback-mode subscription that fell behind would drop
    messages silently, so every event's `num_pending` is checked against the
    previous one: a gap fails the rebuild rather than leaving a hole in it.
    """

    def __init__(self, js: JetStreamContext, stream: str, subject: str, end_seq: int) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.end_seq = end_seq
        self.total = 0
        self.last_seq = 0
        self.finished = end_seq == 0
        self.windows = 0
        self._pending: int | None = None

    async def next_window(self) -> list[tuple[int, bytes]]:
        """The next events in stream order, at most WINDOW. A read that stalls or loses its place (its
        server died, a consumer fell behind) is tried again from the last event read: what was read
        before it is kept, so nothing is applied twice or skipped."""
        for attempt in range(1, WINDOW_TRIES + 1):
            events: list[tuple[int, bytes]] = []
            try:
                await self._read_window(events)
                return events
            except (_Interrupted, nats.errors.Error, TimeoutError) as exc:
                if events:
                    return events  # read in order up to the interruption; the next window goes on from there
                if attempt == WINDOW_TRIES:
                    raise ReadFailed(f"{exc}; run the rebuild again") from None
                log.warning("replay read interrupted; reading again", extra={"error": str(exc), "after": self.last_seq})
                await asyncio.sleep(0.2 * attempt)
        return []

    async def _read_window(self, events: list[tuple[int, bytes]]) -> None:
        full = asyncio.Event()
        lost: str | None = None
        heard = time.monotonic()

        async def on_msg(msg: Msg) -> None:
            nonlocal lost, heard
            if full.is_set():
                return
            meta = msg.metadata
            seq, left = meta.sequence.stream, meta.num_pending
            heard = time.monotonic()
            if seq <= self.last_seq:
                return  # redelivered after the client reset its consumer
            if seq > self.end_seq:
                self.finished = True
                full.set()
                return
            if self._pending is not None and left < self._pending - 1:
                lost = f"events before stream sequence {seq} were not delivered"
                full.set()
                return
            events.append((seq, msg.data))
            self.last_seq, self._pending = seq, left
            if left == 0 or seq >= self.end_seq:
                self.finished = True
                full.set()
            elif len(events) >= WINDOW:
                full.set()

        if self.last_seq:
            config = js_api.ConsumerConfig(
                deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.last_seq + 1
            )
        else:
            config = js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.ALL)
        sub = await self.js.subscribe(self.subject, stream=self.stream, ordered_consumer=True, config=config, cb=on_msg)
        self.windows += 1
        try:
            if not self.total:
                info = await sub.consumer_info()
                self.total = info.num_pending + (info.delivered.consumer_seq or 0)
                if self.total == 0:
                    self.finished = True
                    return
            while not full.is_set():
                try:
                    await asyncio.wait_for(full.wait(), IDLE_TIMEOUT_S)
                except TimeoutError:
                    if time.monotonic() - heard >= IDLE_TIMEOUT_S:
                        raise _Interrupted(
                            f"no event from {self.stream} for {IDLE_TIMEOUT_S:.0f}s after sequence {self.last_seq}"
                        ) from None
        finally:
            with contextlib.suppress(Exception):  # its server may be gone
                await sub.unsubscribe()
        if lost is not None:
            raise _Interrupted(lost)


class _Interrupted(Exception):
    """A window's read stopped short; the reader tries again from where it was."""
