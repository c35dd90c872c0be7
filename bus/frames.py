"""A nats-py client that drops what it cannot decode instead of losing its connection.

Any client can send a frame that nats-py's read loop cannot take: a subject or reply subject that is
not UTF-8, a header block that is `NATS/1.0` without its line end, a status that is not a number, a
subject with a vertical tab in it. nats-py raises from its read loop, the loop ends, and the connection
stays dead until the stale-ping reconnect, 13-14 s later; sent to `$SRV.PING` one frame silences every
service at once. `HardenedNats` keeps the stream in sync and drops such a message instead, counts it by
what was wrong (`DROP_REASONS`) and logs it, at most every `LOG_EVERY_S`, never in full.

Two places of nats-py are replaced:

- the parser's MSG and HMSG control lines: the server separates their fields with spaces only and passes
  every other byte through, but nats-py's patterns split on any whitespace (`\\s`), so a subject or reply
  with a vertical tab or a form feed in it either did not parse (a protocol error: a reconnect) or parsed
  into other fields (another subscription's id);
- `_process_msg`, which decodes a message in the read loop. The parser has already consumed the message
  and reset its state when it calls it, so refusing there keeps the stream in sync. Its header block is
  decoded once, strictly (`decode_headers`), and handed to nats-py as it would have decoded it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.errors import ProtocolError
from nats.protocol import parser as nats_parser
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    CRLF_SIZE,
    ERR_RE,
    INFO_RE,
    MAX_CONTROL_LINE_SIZE,
    OK_RE,
    PING_RE,
    PONG_RE,
)

log = logging.getLogger(__name__)

# Why a message was dropped: the `reason` label of `oms_nats_messages_dropped_total`.
SUBJECT, REPLY, HEADERS, JETSTREAM, UNPROCESSABLE = "subject", "reply", "headers", "jetstream", "unprocessable"
DROP_REASONS = (SUBJECT, REPLY, HEADERS, JETSTREAM, UNPROCESSABLE)

MAX_HEADER_BYTES = 64 * 1024  # far above any header block OMS, JetStream or the nats CLI write
LOG_EVERY_S = 10.0
PREVIEW_BYTES = 64

# The server writes `MSG <subject> <sid> [reply] <size>` and `HMSG <subject> <sid> [reply] <hdr size> <size>`
# with single spaces; a field holds any byte but space, tab, CR and LF (the server's own separators).
MSG_RE = re.compile(rb"\AMSG[ \t]+([^ \t\r\n]+)[ \t]+(\d+)[ \t]+(?:([^ \t\r\n]+)[ \t]+)?(\d+)\r\n")
HMSG_RE = re.compile(rb"\AHMSG[ \t]+([^ \t\r\n]+)[ \t]+(\d+)[ \t]+(?:([^ \t\r\n]+)[ \t]+)?(\d+)[ \t]+(\d+)\r\n")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")  # no subject NATS routes holds these: only a forged frame does
_NAME = re.compile(r"[\x21-\x7e]+")  # a header name nats-py keeps: printable ASCII, no space

STATUS, DESCRIPTION = "Status", "Description"
LAST_CONSUMER, CONSUMER_STALLED = "Nats-Last-Consumer", "Nats-Consumer-Stalled"
FLOW_CONTROL_PREFIX = "$JS.FC."


class Malformed(ValueError):
    """A message this client cannot decode; `reason` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def subject_text(raw: bytes, reason: str) -> str:
    """A subject (or reply subject) as text: UTF-8 without control characters, or Malformed."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise Malformed(reason, "not UTF-8") from None
    if _CONTROL.search(text):
        raise Malformed(reason, "holds a control character")
    return text


def decode_headers(raw: bytes) -> dict[str, str] | None:
    """A header block as nats-py presents it (`Status` and `Description` from the status line), or
    Malformed: a block must be `NATS/1.0[ <3-digit status>[ <description>]]\\r\\n` then `Name: value`
    lines, each in UTF-8 and ended by CRLF."""
    if len(raw) > MAX_HEADER_BYTES:
        raise Malformed(HEADERS, f"{len(raw)} bytes of headers; at most {MAX_HEADER_BYTES}")
    end = raw.find(b"\r\n")
    if not raw.startswith(b"NATS/1.0") or end < 0:
        raise Malformed(HEADERS, "no NATS/1.0 line with its line end")
    headers: dict[str, str] = {}
    status_line = raw[8:end]
    if status_line:
        status, _, description = status_line[1:].partition(b" ")
        if status_line[:1] != b" " or len(status) != 3 or not status.isdigit():
            raise Malformed(HEADERS, "a status that is not a number")
        headers[STATUS] = status.decode()
        if description.strip():
            headers[DESCRIPTION] = _text(description.strip())
    lines = raw[end + 2 :].split(b"\r\n")
    if lines[-1]:
        raise Malformed(HEADERS, "a header line without its line end")
    for line in lines:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        key = _text(name.strip())
        if not colon or not _NAME.fullmatch(key):
            raise Malformed(HEADERS, "a header line that is not `Name: value`")
        headers[key] = _text(value.strip())
    return headers or None


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise Malformed(HEADERS, "not UTF-8") from None


def check_jetstream(reply: str, data: bytes, headers: dict[str, str] | None) -> None:
    """On a JetStream push subscription, what nats-py reads of a message must be what JetStream writes,
    or Malformed: nats-py parses it in its read loop, and publishes to the subjects flow control names."""
    headers = headers or {}
    status = headers.get(STATUS)
    if not data and status == "100" and headers.get(DESCRIPTION):  # what nats-py takes for a control message
        description = headers[DESCRIPTION]
        if description.startswith("Flow") and reply and not reply.startswith(FLOW_CONTROL_PREFIX):
            raise Malformed(JETSTREAM, "flow control whose reply is not JetStream's")
        if description.startswith("Idle"):
            stalled = headers.get(CONSUMER_STALLED)
            if stalled is not None and not stalled.startswith(FLOW_CONTROL_PREFIX):
                raise Malformed(JETSTREAM, "a heartbeat whose stalled reply is not JetStream's")
            last = headers.get(LAST_CONSUMER)
            if last is not None and not (last.isascii() and last.isdigit()):
                raise Malformed(JETSTREAM, "a heartbeat whose last consumer sequence is not a number")
        return
    if reply:
        if ack_metadata(reply) is None:
            raise Malformed(JETSTREAM, "a reply that is not a JetStream ack subject")
    elif status is None:
        raise Malformed(JETSTREAM, "a message without the ack subject JetStream gives every delivery")


def ack_metadata(reply: str) -> tuple[int, int] | None:
    """(stream sequence, consumer sequence) of a JetStream ack subject in the form nats-py reads
    (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`), or None."""
    tokens = reply.split(".")
    if len(tokens) != 9 or tokens[0] != "$JS" or tokens[1] != "ACK" or not tokens[2] or not tokens[3]:
        return None
    if not all(t.isascii() and t.isdigit() for t in tokens[4:]):
        return None
    return int(tokens[5]), int(tokens[6])


def preview(raw: bytes) -> str:
    """The first bytes of something a client sent, printable, for a log line."""
    text = raw[:PREVIEW_BYTES].decode("utf-8", "backslashreplace")
    return text + ("…" if len(raw) > PREVIEW_BYTES else "")


class StrictParser(nats_parser.Parser):
    """nats-py's protocol parser, with MSG and HMSG split the way the server writes them and `-ERR` text
    read whatever its bytes (a permissions violation quotes a subject some client chose)."""

    async def parse(self, data: bytes = b"") -> None:
        self.buf.extend(data)
        while self.buf:
            if self.state == AWAITING_CONTROL_LINE:
                if self.buf.startswith(b"MSG") and (msg := MSG_RE.match(self.buf)):
                    subject, sid, reply, size = msg.groups()
                    self._expect(msg.end(), subject, sid, reply, 0, size)
                    continue
                if self.buf.startswith(b"HMSG") and (msg := HMSG_RE.match(self.buf)):
                    subject, sid, reply, header_size, size = msg.groups()
                    self._expect(msg.end(), subject, sid, reply, int(header_size), size)
                    continue
                if ok := OK_RE.match(self.buf):
                    del self.buf[: ok.end()]
                    continue
                if err := ERR_RE.match(self.buf):
                    text = (err.group(1) or b"").decode("utf-8", "replace").lower()
                    del self.buf[: err.end()]
                    await self.nc._process_err(text)
                    continue
                if ping := PING_RE.match(self.buf):
                    del self.buf[: ping.end()]
                    await self.nc._process_ping()
                    continue
                if pong := PONG_RE.match(self.buf):
                    del self.buf[: pong.end()]
                    await self.nc._process_pong()
                    continue
                if info := INFO_RE.match(self.buf):
                    server_info = json.loads(info.group(1).decode())
                    del self.buf[: info.end()]
                    await self.nc._process_info(server_info)
                    continue
                if len(self.buf) < MAX_CONTROL_LINE_SIZE and b"\r\n" in self.buf:
                    raise ProtocolError("nats: unknown protocol")
                break  # a control line split across reads: wait for the rest
            if len(self.buf) < self.needed + CRLF_SIZE:
                break  # wait for the whole payload
            header_size = self.header_needed
            headers = bytes(self.buf[:header_size]) if header_size else None
            payload = bytes(self.buf[header_size : self.needed])
            del self.buf[: self.needed + CRLF_SIZE]
            self.header_needed = 0
            self.state = AWAITING_CONTROL_LINE
            args = self.msg_arg
            await self.nc._process_msg(args["sid"], args["subject"], args["reply"], payload, headers)

    def _expect(self, end: int, subject: bytes, sid: bytes, reply: bytes | None, header_size: int, size: bytes) -> None:
        self.msg_arg["subject"] = subject
        self.msg_arg["sid"] = int(sid)
        self.msg_arg["reply"] = reply or b""
        self.needed = int(size)
        self.header_needed = header_size
        if header_size > self.needed:
            raise ProtocolError("nats: malformed HMSG")  # the server checks this: only a broken one sends it
        del self.buf[:end]
        self.state = AWAITING_MSG_PAYLOAD


class HardenedNats(Client):
    """A nats-py client that drops, counts (`dropped`, and `on_drop(reason)`) and logs every message it
    cannot decode, and keeps reading."""

    def __init__(self, name: str = "", on_drop: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self._ps = StrictParser(self)
        self.connection_name = name
        self.dropped: Counter[str] = Counter()
        self._on_drop = on_drop
        self._log_after = 0.0
        self._unlogged = 0
        self.lost = asyncio.Event()  # set when the connection drops: replies awaited on it may never come

    def connection_dropped(self) -> None:
        """Wake whoever waits on the connection that just dropped; later waits use a fresh event."""
        self.lost.set()
        self.lost = asyncio.Event()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:  # fmt: skip
        sub = self._subs.get(sid)
        if sub is None:  # nats-py skips it before decoding anything
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        delivery = None
        try:
            reply_text = subject_text(reply, REPLY) if reply else ""
            if sub._jsi is not None and reply_text:
                delivery = ack_metadata(reply_text)
            decoded = decode_headers(headers) if headers else None
            subject_text(subject, SUBJECT)
            if sub._jsi is not None:
                check_jetstream(reply_text, data, decoded)
        except Malformed as exc:
            if delivery is not None:
                self._skip_delivery(sub._jsi, delivery)
            self._drop(exc.reason, exc.detail, subject, reply, headers, data)
            return
        try:
            # The headers go on decoded: `_process_headers` below hands them back as they are.
            await super()._process_msg(sid, subject, reply, data, decoded)  # type: ignore[arg-type]
        except Exception as exc:  # whatever else nats-py cannot take must not end the read loop either
            self._drop(UNPROCESSABLE, f"{type(exc).__name__}: {exc}"[:200], subject, reply, headers, data)

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        if headers is None or isinstance(headers, dict):
            return headers or None
        return decode_headers(headers)

    @staticmethod
    def _skip_delivery(jsi: Any, delivery: tuple[int, int]) -> None:
        """A JetStream message that cannot be decoded (a stream can hold what any client published): an
        ordered consumer steps over it as if delivered. Otherwise it would see a gap, restart the consumer at
        that very message, and drop it again, forever."""
        stream_seq, consumer_seq = delivery
        if jsi._ordered and consumer_seq == jsi._dseq:
            jsi._dseq = consumer_seq + 1
            jsi._sseq = stream_seq

    def _drop(self, reason: str, detail: str, subject: bytes, reply: bytes, headers: bytes | None, data: bytes) -> None:
        self.dropped[reason] += 1
        if self._on_drop is not None:
            self._on_drop(reason)
        now = time.monotonic()
        if now < self._log_after:
            self._unlogged += 1
            return
        log.warning(
            "nats message dropped: it cannot be decoded",
            extra={
                "connection": self.connection_name,
                "reason": reason,
                "detail": detail,
                "subject": preview(subject),
                "reply": preview(reply),
                "header_bytes": len(headers or b""),
                "payload_bytes": len(data),
                "dropped_unlogged": self._unlogged,
            },
        )
        self._log_after = now + LOG_EVERY_S
        self._unlogged = 0
