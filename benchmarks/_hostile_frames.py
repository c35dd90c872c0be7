"""Raw protocol frames for `hostile.py`: what no NATS library sends, over a socket of its own.

A connection logs in as `cli` or `admin` (CONNECT with its password), sends a batch of frames nats-py
could not decode (subjects and reply subjects that are not UTF-8 or hold control characters, broken
header blocks, `NATS/1.0` without its line end, bogus status lines), then PING, and reads until PONG:
the server took them all and passed on what it routes. Some connections end with a frame the server
itself refuses (cut short, sizes that lie, an unknown operation); it answers -ERR and hangs up.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field

from _hostile_inputs import ENDPOINTS, EVENTS, JS_REACHABLE, MAX_BODY, SRV, TRACE_DEST, USERS, refused

from bus.client import IDEMPOTENCY_HEADER

HEADER_BLOCKS = {
    "header_without_crlf": [b"NATS/1.0", b"NATS/1.0 503", b"NATS/1.0\r", b"NATS/1.0\n"],
    "header_too_short": [b"NATS", b"NAT", b"N", b"\r\n"],
    "bogus_status": [
        b"NATS/1.0 abc\r\n\r\n",
        b"NATS/1.0 503\r\n\r\n",
        b"NATS/1.0 1\r\n\r\n",
        b"NATS/1.0 \xff\xfe\r\n\r\n",
        b"NATS/1.0 503 \xff\r\n\r\n",
        b"NATS/9.9 200 OK\r\n\r\n",
        b"NATS/1.0 100 FlowControl Request\r\n\r\n",
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Consumer-Stalled: events.orders.stalled\r\n\r\n",
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: abc\r\n\r\n",
        b"NATS/1.0 404 No Messages\r\n\r\n",
        b"NATS/1.0 408 Request Timeout\r\n\r\n",
        b"NATS/1.0 409 Consumer Deleted\r\n\r\n",
        b"NATS/1.0 -1\r\n\r\n",
    ],
    "broken_header_lines": [
        b"NATS/1.0\r\nIdempotency-Key\r\n\r\n",
        b"NATS/1.0\r\n\xff\xfe: x\r\n\r\n",
        b"NATS/1.0\r\nIdempotency-Key: \xff\r\n\r\n",
        b"NATS/1.0\r\nIdempotency-Key: k",
        b"NATS/1.0\r\n: \r\n\r\n",
        b"NATS/1.0\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n",
        b"NATS/1.0\r\nIdempotency-Key: a b\r\nIdempotency-Key: \xc0\xaf\r\n\r\n",
        b"NATS/1.0\r\n" + b"X: y\r\n" * 5000 + b"\r\n",
        b"NATS/1.0\r\nA\x00B: c\r\n\r\n",
        b"NATS/1.0\r\nNats-Trace-Dest: events.orders.traced\r\n\r\n",
    ],
}
REPLIES = {
    "reply_not_utf8": [b"_INBOX.\xff", b"events.orders.\xfe", b"\xff\xfe", b"_INBOX.a\xc0\xaf"],
    "reply_control_char": [b"_INBOX.\x0bX", b"_INBOX.\x0c7", b"r\x007", b"r\x7f", b"events.\x0b1"],
}
SUBJECTS_BAD = {
    "subject_not_utf8": [b".\xff", b".\xfe\xff", b"\xff"],
    "subject_control_char": [b".\x0b1", b".\x0c7", b".\x00", b"\x7f"],
}
# Frames the server refuses (it answers -ERR and closes the connection): sent last on a connection.
FATAL = {
    "cut_short": b"PUB orders.get 100\r\n{",
    "size_too_small": b"PUB orders.get 2\r\n{}}}}\r\n",
    "header_size_past_total": b"HPUB orders.get 20 10\r\nNATS/1.0\r\n\r\n\r\n",
    "unknown_operation": b"FOO bar\r\n",
    "past_max_payload": b"PUB orders.get 2000000\r\n",
    "size_not_a_number": b"PUB orders.get abc\r\n",
    "negative_size": b"PUB orders.get -1\r\n",
    "control_line_too_long": b"PUB " + b"a" * 5000 + b" 1\r\nx\r\n",
    "hpub_without_sizes": b"HPUB orders.get\r\nNATS/1.0\r\n\r\n",
    "bare_crlf_storm": b"\r\n" * 2000,
}


def pub(subject: bytes, payload: bytes, reply: bytes | None) -> bytes:
    reply_part = b" " + reply if reply else b""
    return b"PUB %s%s %d\r\n%s\r\n" % (subject, reply_part, len(payload), payload)


def hpub(subject: bytes, headers: bytes, payload: bytes, reply: bytes | None) -> bytes:
    reply_part = b" " + reply if reply else b""
    return b"HPUB %s%s %d %d\r\n%s%s\r\n" % (
        subject,
        reply_part,
        len(headers),
        len(headers) + len(payload),
        headers,
        payload,
    )


@dataclass
class Batch:
    """The frames of one raw connection."""

    user: str
    frames: list[tuple[str, bytes]]
    fatal: tuple[str, bytes] | None = None


def subjects_for(user: str) -> list[str]:
    """Every subject the client messages cover, placeholders filled with something harmless."""
    names = [e.subject for e in ENDPOINTS] + SRV + JS_REACHABLE[user] + EVENTS
    return [n.replace("@ORDER@", "ord_hostile") for n in names]


def payload_for(rng: random.Random, subject: str) -> bytes:
    """Never a valid command for a mutating endpoint: the frames must change nothing even when decoded."""
    mutating = {e.subject for e in ENDPOINTS if e.mutating}
    if subject in mutating:
        return rng.choice([b'{"hostile_unknown_field": 1}', b"[]", b"\xff\xfe", rng.randbytes(32)])
    return rng.choice([b"", b"{}", b'{"limit": 1}', b"\xff", rng.randbytes(16)])


def batches(seed: int, connections: int, frames_per_connection: int) -> list[Batch]:
    rng = random.Random(seed)
    kinds = ["plain", *HEADER_BLOCKS, *REPLIES, *SUBJECTS_BAD, "random_header_block", "payload_not_utf8"]
    found = []
    fatal_names, fatal_given = list(FATAL), []
    for n in range(connections):
        user = USERS[n % len(USERS)]
        subjects = subjects_for(user)
        frames = []
        for i in range(frames_per_connection):
            kind = kinds[(n * frames_per_connection + i) % len(kinds)]
            subject = subjects[rng.randrange(len(subjects))]
            frames.append((kind, frame(rng, kind, subject)))
        fatal = None
        if n % 4 in (1, 2):  # every other connection ends with a frame the server refuses, each one for both users
            name = fatal_names[(len(fatal_given) // 2) % len(fatal_names)]
            fatal = (name, FATAL[name])
            fatal_given.append(name)
        found.append(Batch(user, frames, fatal))
    return found


def frame(rng: random.Random, kind: str, subject: str) -> bytes:
    raw = subject.encode()
    payload = payload_for(rng, subject)
    reply: bytes | None = rng.choice([None, b"_INBOX.hostile.raw"])
    if kind in HEADER_BLOCKS:
        return hpub(raw, rng.choice(HEADER_BLOCKS[kind]), payload, reply)
    if kind in REPLIES:
        return pub(raw, payload, rng.choice(REPLIES[kind]))
    if kind in SUBJECTS_BAD:
        return pub(raw + rng.choice(SUBJECTS_BAD[kind]), payload, reply)
    if kind == "random_header_block":
        return hpub(raw, rng.randbytes(rng.randint(1, 64)), payload, reply)
    if kind == "payload_not_utf8":
        return pub(raw, rng.randbytes(rng.randint(1, 2048)), reply)
    key = rng.choice([b"ok-key", b"bad key", b"\xff"])
    return hpub(raw, b"NATS/1.0\r\n" + IDEMPOTENCY_HEADER.encode() + b": " + key + b"\r\n\r\n", payload, reply)


@dataclass
class RawTally:
    frames: Counter[tuple[str, str]] = field(default_factory=Counter)  # (user, kind) -> frames sent
    outcomes: Counter[str] = field(default_factory=Counter)  # what the server answered
    errors: Counter[str] = field(default_factory=Counter)  # -ERR texts, by their first words
    denied: int = 0  # -ERR permissions violations
    connections: int = 0


async def send_batch(host: str, port: int, batch: Batch, password: str, tally: RawTally) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    tally.connections += 1
    try:
        await asyncio.wait_for(reader.readline(), 5)  # INFO
        hello = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1}
        hello |= {"user": batch.user, "pass": password, "name": f"hostile-raw-{batch.user}"}
        writer.write(b"CONNECT " + json.dumps(hello).encode() + b"\r\nPING\r\n")
        if not await _until_pong(reader, tally, "login"):
            return
        writer.write(b"".join(f for _, f in batch.frames) + b"PING\r\n")
        for kind, _ in batch.frames:
            tally.frames[(batch.user, kind)] += 1
        await writer.drain()
        if not await _until_pong(reader, tally, "frames"):
            return
        if batch.fatal is not None:
            name, data = batch.fatal
            tally.frames[(batch.user, f"fatal:{name}")] += 1
            writer.write(data)
            await writer.drain()
            if name == "cut_short":  # the server waits for the rest: hang up, as a client that died
                tally.outcomes[f"fatal {name}: we hung up mid-frame"] += 1
                return
            line = await _read_line(reader, 3)
            tally.outcomes[f"fatal {name}: {_first_words(line)}"] += 1
    finally:
        writer.close()


async def _read_line(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.readline(), timeout)
    except (TimeoutError, ConnectionError):
        return b""


async def _until_pong(reader: asyncio.StreamReader, tally: RawTally, phase: str) -> bool:
    while True:
        line = await _read_line(reader, 10)
        if not line:
            tally.outcomes[f"{phase}: closed without PONG"] += 1
            return False
        if line.startswith(b"PONG"):
            tally.outcomes[f"{phase}: PONG"] += 1
            return True
        if line.startswith(b"-ERR"):
            tally.errors[_first_words(line)] += 1
            tally.denied += b"Permissions Violation" in line
            if b"Authorization" in line:
                tally.outcomes[f"{phase}: refused login"] += 1
                return False


def _first_words(line: bytes) -> str:
    text = line.decode("utf-8", "backslashreplace").strip() or "(closed)"
    return " ".join(text.split()[:4])[:60]


def denied_frames(batch: Batch) -> int:
    """How many frames of `batch` the server refuses to this user by its permissions (each one -ERR)."""
    count = 0
    for _, data in batch.frames:
        line, _, rest = data.partition(b"\r\n")
        words = line.decode("utf-8", "surrogateescape").split(" ")
        without_reply = 4 if words[0] == "HPUB" else 3  # HPUB subject [reply] header-size size
        subject, reply = words[1], words[2] if len(words) > without_reply else None
        headers = None
        if words[0] == "HPUB":
            block = rest[: int(words[-2])].decode("utf-8", "surrogateescape")
            for header in block.split("\r\n")[1:]:
                name, colon, value = header.partition(":")
                if colon and name.strip() == TRACE_DEST:
                    headers = {TRACE_DEST: value.strip()}
        count += refused(batch.user, subject, reply, headers)
    return count


assert MAX_BODY < 2_000_000  # `past_max_payload` is past the server's limit
