"""Malformed protocol frames from any client, over a raw socket to a real nats-server: every service drops and
counts what it cannot decode and goes on answering at once, on the same connection (no reconnect, no gap)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from nats.aio.client import Client as PlainNats

from bus import frames
from bus.connect import connect
from bus.settings import SERVICES
from tests.conftest import wait_for

PING_TIMEOUT_S = 0.5  # well under nats-py's ping interval: an answer proves the connection never went down


async def send_frames(url: str, data: bytes) -> None:
    """Send raw protocol bytes as a client of its own; return once the server took them all (the PONG to
    the PING after them), so that they reach every subscriber before anything sent after this returns."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await asyncio.wait_for(reader.readline(), 5)  # INFO
        connect_line = b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n'
        writer.write(connect_line + data + b"PING\r\n")
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), 5)
            assert line and not line.startswith(b"-ERR"), f"the server refused the frames: {line!r}"
            if line.startswith(b"PONG"):
                return
    finally:
        writer.close()


def pub(subject: bytes, payload: bytes = b"", reply: bytes | None = b"r") -> bytes:
    reply_part = b" " + reply if reply else b""
    return b"PUB %s%s %d\r\n%s\r\n" % (subject, reply_part, len(payload), payload)


def hpub(subject: bytes, headers: bytes, payload: bytes = b"", reply: bytes | None = b"r") -> bytes:
    reply_part = b" " + reply if reply else b""
    size = len(headers) + len(payload)
    return b"HPUB %s%s %d %d\r\n%s%s\r\n" % (subject, reply_part, len(headers), size, headers, payload)


def dropped(kernel: Any, reason: str) -> float:
    value = kernel.metrics.registry.get_sample_value("oms_nats_messages_dropped_total", {"reason": reason})
    return value or 0.0


async def every_service_answers(stack: dict[str, Any]) -> None:
    for name in SERVICES:
        reply = await stack["nc"].request(f"$SRV.PING.{name}", b"", timeout=PING_TIMEOUT_S)
        assert json.loads(reply.data)["name"] == name


PING = b"$SRV.PING"
# Each one, on nats-py's own client, ends the read loop (or reconnects): the connection is gone for 13-14 s.
FRAMES = {
    "a reply that is not UTF-8": (pub(PING, reply=b"_INBOX_cli.\xff"), frames.REPLY),
    "a reply with a vertical tab": (pub(PING, reply=b"_INBOX.\x0bX"), frames.REPLY),
    "a reply with a form feed and a number": (pub(PING, reply=b"_INBOX.\x0c7"), frames.REPLY),
    "a header block that is NATS/1.0 alone": (hpub(PING, b"NATS/1.0"), frames.HEADERS),
    "a header block shorter than NATS/1.0": (hpub(PING, b"NATS"), frames.HEADERS),
    "a status that is not a number": (hpub(PING, b"NATS/1.0 abc\r\n\r\n"), frames.HEADERS),
    "a status that is not UTF-8": (hpub(PING, b"NATS/1.0 \xff\xfe\xfd\r\n\r\n"), frames.HEADERS),
    "a status description that is not UTF-8": (hpub(PING, b"NATS/1.0 503 \xff\r\n\r\n"), frames.HEADERS),
    "a header name that is not UTF-8": (hpub(PING, b"NATS/1.0\r\n\xff\xfe: x\r\n\r\n"), frames.HEADERS),
    "a header value that is not UTF-8": (hpub(PING, b"NATS/1.0\r\nIdempotency-Key: \xff\r\n\r\n"), frames.HEADERS),
    "a header block cut short": (hpub(PING, b"NATS/1.0\r\nIdempotency-Key: k"), frames.HEADERS),
    "a header line without a colon": (hpub(PING, b"NATS/1.0\r\nIdempotency-Key\r\n\r\n"), frames.HEADERS),
    "a huge header line": (hpub(PING, b"NATS/1.0\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n"), frames.HEADERS),
}


@pytest.mark.parametrize("what", list(FRAMES))
async def test_a_malformed_frame_to_srv_ping_is_dropped_and_counted_and_every_service_answers_at_once(stack, what):
    frame, reason = FRAMES[what]
    kernels = [stack[name] for name in SERVICES]
    before = [(k.nc.stats["reconnects"], dropped(k, reason)) for k in kernels]
    await send_frames(stack["orders"].settings.nats_url, frame)
    await every_service_answers(stack)
    for kernel, (reconnects, count) in zip(kernels, before, strict=True):
        assert kernel.nc.is_connected and kernel.nc.stats["reconnects"] == reconnects, kernel.name
        assert dropped(kernel, reason) == count + 1, (kernel.name, what)


async def test_a_subject_that_is_not_utf8_or_holds_a_control_character_is_dropped_on_a_wildcard_subscription(stack):
    """Sent to the order service's reply inbox (a wildcard subscription): with a form feed before a number,
    nats-py read the number as the id of another subscription and handed it the message."""
    orders = stack["orders"]
    inbox = bytes(orders.nc._resp_sub_prefix)  # where the replies to its requests come in: `<prefix>*`
    before = dropped(orders, frames.SUBJECT)
    await send_frames(orders.settings.nats_url, pub(inbox + b"\xff") + pub(inbox + b"x\x0c1", reply=None))
    await every_service_answers(stack)
    assert dropped(orders, frames.SUBJECT) == before + 2
    assert orders.nc.stats["reconnects"] == 0


async def test_well_formed_headers_decode_as_nats_py_decodes_them():
    blocks = [
        b"NATS/1.0\r\n\r\n",
        b"NATS/1.0 503\r\n\r\n",
        b"NATS/1.0 404 No Messages\r\n\r\n",
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 2\r\nNats-Last-Stream: 2\r\n\r\n",
        b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\nNats-Pending-Bytes: 0\r\n\r\n",
        b"NATS/1.0\r\nIdempotency-Key: k-1\r\nNats-Service-Error: caf\xc3\xa9\r\nX:y\r\n\r\n",
    ]
    plain = PlainNats()
    for block in blocks:
        assert frames.decode_headers(block) == await plain._process_headers(block), block


# -- JetStream: an ordered consumer's deliver subject is an inbox any client can publish to ---------------------


async def test_an_ordered_consumer_keeps_its_place_through_forged_jetstream_frames_and_an_undecodable_event(settings):
    name = "FRAMES_" + uuid.uuid4().hex[:8]
    root = f"frames.{name}".encode()
    conn = await connect(settings, "test-consumer")
    watcher = PlainNats()
    await watcher.connect(settings.nats_url)
    try:
        js = conn.jetstream()
        await js.add_stream(name=name, subjects=[f"frames.{name}.>"])
        await js.publish(f"frames.{name}.one", b"1")
        got: list[bytes] = []

        async def on_msg(msg: Any) -> None:
            got.append(msg.data)

        sub = await js.subscribe(f"frames.{name}.>", stream=name, ordered_consumer=True, cb=on_msg)
        await wait_for(lambda: got == [b"1"], what="the first event")
        # Subjects a forged flow control would make the consumer publish to.
        reflected = await watcher.subscribe("frames.reflected.>")
        await watcher.flush()
        deliver = sub._sub.subject.encode()
        await send_frames(
            settings.nats_url,
            # (The server refuses `$JS.ACK.` replies from clients; any other is nats-py's NotJSMessageError.)
            pub(deliver, b"x", reply=b"_INBOX.not.an.ack")
            + pub(deliver, b"x", reply=None)  # no JetStream delivery comes without its ack subject
            + hpub(deliver, b"NATS/1.0 100 FlowControl Request\r\n\r\n", reply=b"frames.reflected.fc")
            + hpub(deliver, b"NATS/1.0 100 Idle Heartbeat\r\nNats-Consumer-Stalled: frames.reflected.hb\r\n\r\n")
            + hpub(deliver, b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: abc\r\n\r\n", reply=None)
            # An event no service could have written, stored in the stream: its subject is not UTF-8.
            + pub(root + b".\xff", b"poison", reply=None),
        )
        await js.publish(f"frames.{name}.two", b"2")
        await wait_for(lambda: got == [b"1", b"2"], what="the event after the forged frames and the undecodable one")
        assert conn.dropped == {frames.JETSTREAM: 5, frames.SUBJECT: 1}, conn.dropped
        assert conn.stats["reconnects"] == 0
        await conn.flush()  # whatever the consumer published has reached the server, and then the watcher
        await watcher.flush()
        assert reflected.pending_msgs == 0
    finally:
        await watcher.close()
        await conn.close()
        cleanup = PlainNats()
        await cleanup.connect(settings.nats_url)
        await cleanup.jetstream().delete_stream(name)
        await cleanup.close()


# -- many random malformed frames ----------------------------------------------------------------------------

# A field of a frame: no separator of the server's, and no reply prefix it keeps for itself (it refuses those).
field = st.binary(min_size=1, max_size=16).filter(
    lambda b: not {9, 10, 13, 32} & set(b) and not b.startswith((b"$JS.", b"$GNR.", b"_GR_."))
)
status_lines = st.sampled_from([b"", b" 503", b" 100 Idle Heartbeat", b" abc", b" \xff\xff\xff", b" 1", b" "]) | (
    st.binary(max_size=12).map(lambda b: b" " + b)
)
header_lines = st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=20)), max_size=4).map(
    lambda pairs: b"".join(name + b": " + value + b"\r\n" for name, value in pairs)
)
header_blocks = st.one_of(
    st.builds(lambda status, lines, end: b"NATS/1.0" + status + b"\r\n" + lines + end, status_lines, header_lines,
              st.sampled_from([b"\r\n", b"", b"\r"])),
    st.sampled_from([b"NATS/1.0", b"NATS/1.0 ", b"NATS", b"NATS/1.0\r\n"]),
    st.binary(min_size=1, max_size=64),
)  # fmt: skip
replies = st.none() | field | st.sampled_from([b"_INBOX.\xff", b"r\x0b1"])
subjects = st.sampled_from([b"$SRV.PING", b"$SRV.INFO", b"$SRV.STATS", b"$SRV.PING.orders", b"orders.get"])
frames_ = st.one_of(
    st.builds(lambda s, r, p: pub(s, p, reply=r), subjects, replies, st.binary(max_size=64)),
    st.builds(lambda s, h, r, p: hpub(s, h, p, reply=r), subjects, header_blocks, replies, st.binary(max_size=64)),
)


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames_, min_size=1, max_size=8), inbox_token=st.none() | field)
async def test_random_malformed_frames_never_take_a_service_off_the_bus(stack, batch, inbox_token):
    orders = stack["orders"]
    if inbox_token is not None:  # also through a wildcard subscription, with any subject token
        batch = [*batch, pub(bytes(orders.nc._resp_sub_prefix) + inbox_token, reply=None)]
    await send_frames(orders.settings.nats_url, b"".join(batch))
    await every_service_answers(stack)
    for name in SERVICES:
        assert stack[name].nc.stats["reconnects"] == 0, name


def test_drops_are_counted_each_and_logged_at_most_every_few_seconds_never_in_full(caplog):
    seen: list[str] = []
    client = frames.HardenedNats("test", on_drop=seen.append)
    subject = b"x." + b"\xff" * 500
    with caplog.at_level("WARNING", logger="bus.frames"):
        for _ in range(100):
            client._drop(frames.SUBJECT, "not UTF-8", subject, b"", None, b"payload")
    assert seen == [frames.SUBJECT] * 100 and client.dropped == {frames.SUBJECT: 100}
    [record] = caplog.records
    assert record.reason == frames.SUBJECT and len(record.subject) < 5 * frames.PREVIEW_BYTES


async def test_the_parser_splits_control_lines_as_the_server_writes_them_and_reads_any_error_text():
    class Heard:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        async def _process_err(self, text: str) -> None:
            self.calls.append(("err", text))

        async def _process_msg(self, *args: Any) -> None:
            self.calls.append(("msg", *args))

        async def _process_ping(self) -> None:
            self.calls.append(("ping",))

    heard = Heard()
    parser = frames.StrictParser(heard)
    stream = (
        b"-ERR 'Permissions Violation for Publish to \"\xff\"'\r\n"  # a reply subject some client chose
        + b"MSG a\x0c7 1 r\x0b9 2\r\nhi\r\n"  # nats-py read: subject `a`, sid 7, reply `1`...
        + b"HMSG s 2 12 14\r\nNATS/1.0\r\n\r\nok\r\nPING\r\n"
    )
    for i in range(0, len(stream), 5):  # as it comes off a socket, in pieces
        await parser.parse(stream[i : i + 5])
    assert heard.calls == [
        ("err", "'permissions violation for publish to \"\ufffd\"'"),
        ("msg", 1, b"a\x0c7", b"r\x0b9", b"hi", None),
        ("msg", 2, b"s", b"", b"ok", b"NATS/1.0\r\n\r\n"),
        ("ping",),
    ]


async def test_srv_requests_without_a_reply_subject_leave_one_warning_per_service_not_one_each(stack, caplog):
    """nats.micro raises when it cannot answer a $SRV request, and every raise reaches the connection's error
    callback: it logged each one, so any client could write a service's log as fast as it sends."""

    def warnings() -> list[Any]:
        return [r for r in caplog.records if r.name == "bus.connect" and r.getMessage() == "nats error"]

    with caplog.at_level("WARNING", logger="bus.connect"):
        for _ in range(50):
            await stack["nc"].publish("$SRV.PING", b"")
        await stack["nc"].flush()
        await wait_for(lambda: len(warnings()) >= len(SERVICES), what="each service's first warning")
        await every_service_answers(stack)
        await asyncio.sleep(0.2)
    assert len(warnings()) == len(SERVICES), [r.__dict__.get("error") for r in warnings()]
