"""The NATS accounts OMS runs in: the services and the event stream in one, every client outside it.

    OMS       orders, inventory, payment and the stream OMS_EVENTS (JetStream on).
              Exports what the two accounts below may ask for.
    CLIENTS   `cli`: imports the client routes, `$SRV.>` and the stream's info.
    OPS       `admin`: imports every service's subjects and `chaos.>`, `$SRV.>`, the
              stream's read API (info, message and direct gets; no consumers),
              `events.>` as a live feed, and from SYS (the server's system
              account, no users) each server's JetStream report.

An account is a subject space of its own. A request that crosses an import
reaches the service with a reply subject the server minted in OMS (`_R_...`),
and the answer travels back to the caller's inbox in the caller's account. So
whatever reply subject a client names, no answer of a service, of micro's
`$SRV` endpoints or of the JetStream API lands in OMS_EVENTS; a client hears
nothing of the services' traffic nor another account's replies; and a stock
client with the default `_INBOX.>` works as `cli`. Connections of one user
share that user's inboxes, as on any NATS server: give principals that must
not see each other users in accounts of their own.

Client accounts have no JetStream of their own: the stream's API reaches them
under `JS.OMS.API` (`JS_PREFIX`), because the server answers `$JS.API` in an
account itself ("JetStream not enabled for account") before any import.

Inside OMS each service keeps least privilege (`permissions`): it subscribes
to its own request subjects and `chaos.<service>.>` only in its queue group,
to `$SRV.>` and its private inbox `_INBOX_<service>.>`; it publishes its own
events, the JetStream API calls it makes on the stream, the subjects it calls
(orders: reserve, release, authorize, refund), and answers through
`allow_responses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bus import subjects as s
from bus.settings import SERVICES

OMS, CLIENTS, OPS, SYS = "OMS", "CLIENTS", "OPS", "SYS"
Role = Literal["cli", "admin"]
USERS: tuple[str, ...] = (*SERVICES, "cli", "admin")
ACCOUNT_OF: dict[str, str] = {**dict.fromkeys(SERVICES, OMS), "cli": CLIENTS, "admin": OPS}
JS_PREFIX = "JS.OMS.API"  # the stream's API as the client accounts see it
JSZ_SUBJECT = "OMS.SYS.JSZ"  # every server's JetStream report (meta leader, peers), as OPS asks for it

# Who calls whom: the participants the order service's saga invokes and compensates.
CALLS: dict[str, tuple[s.Route, ...]] = {
    "orders": (
        s.INVENTORY_RESERVE,
        s.INVENTORY_RELEASE,
        s.INVENTORY_COMMIT,
        s.INVENTORY_UNCOMMIT,
        s.INVENTORY_RECEIVE_RETURN,
        s.PAYMENT_AUTHORIZE,
        s.PAYMENT_REFUND,
        s.PAYMENT_CAPTURE,
        s.PAYMENT_REVERSE_CAPTURE,
    ),
}
# What a client may ask: place, read and cancel orders; check and read stock; read a payment; health.
CLI_ROUTES: tuple[s.Route, ...] = (
    s.ORDERS_PLACE,
    s.ORDERS_GET,
    s.ORDERS_LIST,
    s.ORDERS_CANCEL,
    s.ORDERS_EVENTS,
    s.INVENTORY_CHECK,
    s.INVENTORY_STOCK,
    s.PAYMENT_GET,
    *s.HEALTH.values(),
)


def inbox_prefix(user: str | None) -> str:
    """A service's replies arrive on an inbox only its user may hear; clients keep the stock `_INBOX`
    (their account is theirs alone)."""
    return f"_INBOX_{user}" if user in SERVICES else "_INBOX"


@dataclass(frozen=True)
class Permissions:
    """nats-server `permissions`: subjects a user may publish to and subscribe to (`"subject queue"`
    allows a subscription only in that queue group); None allows everything."""

    publish: tuple[str, ...] | None
    subscribe: tuple[str, ...] | None
    allow_responses: bool = True

    def to_conf(self) -> dict[str, Any]:
        if self.publish is None and self.subscribe is None:
            return {}
        return {
            "publish": {"allow": list(self.publish or ())},
            "subscribe": {"allow": list(self.subscribe or ())},
            "allow_responses": self.allow_responses,
        }


def _js_api(stream: str, *calls: str) -> tuple[str, ...]:
    return tuple(f"$JS.API.{call}.{stream}" for call in calls)


def permissions(user: str, stream: str = "OMS_EVENTS") -> Permissions:
    """What `user` may do inside its account; the event stream's name is a setting."""
    if user == "admin":
        return Permissions(None, None)  # OPS holds only what OMS exports to it
    if user == "cli":
        publish = (*(route.subject for route in CLI_ROUTES), "$SRV.>", f"{JS_PREFIX}.STREAM.INFO.{stream}")
        return Permissions(publish, ("_INBOX.>",), allow_responses=False)
    if user not in SERVICES:
        raise ValueError(f"unknown NATS user {user!r}: one of {', '.join(USERS)}")
    publish = (
        f"events.{user}.>",
        *_js_api(stream, "STREAM.CREATE", "STREAM.UPDATE", "STREAM.INFO", "CONSUMER.CREATE"),
        # A rebuild by replay (`--recover`) and the relay's check of what it sent read the stream
        # with ordered consumers.
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
        *(_js_api(stream, "STREAM.MSG.GET") if user == "orders" else ()),  # an order's timeline
        *(route.subject for route in CALLS.get(user, ())),
        f"$SRV.PING.{user}",  # the container health check (`python -m bus.healthcheck`)
    )
    subscribe = (f"{user}.> {user}", f"chaos.{user}.> {user}", "$SRV.>", f"{inbox_prefix(user)}.>")
    return Permissions(publish, subscribe)


@dataclass(frozen=True)
class Export:
    """A service (request-reply) or stream (messages) OMS exports to some accounts."""

    subject: str
    to: tuple[str, ...]
    stream: bool = False  # a stream export: messages published in OMS are heard in the importers
    many_replies: bool = False  # a request answered by several messages ($SRV pings, direct batches)
    prefixed: bool = False  # a JetStream API subject: imported under JS_PREFIX instead of `$JS.API`
    source: str = OMS  # the exporting account
    renamed: str | None = None  # the subject the importers use, when not the exported one

    def imported_as(self) -> str:
        if self.renamed:
            return self.renamed
        return JS_PREFIX + self.subject.removeprefix("$JS.API") if self.prefixed else self.subject


def exports(stream: str = "OMS_EVENTS") -> tuple[Export, ...]:
    """What OMS makes visible outside it: each import of a client account is one of these."""
    both = (CLIENTS, OPS)
    read = (  # the stream's read API for operators, and its leader's move: (call, answered by several messages)
        (f"STREAM.MSG.GET.{stream}", False),
        (f"DIRECT.GET.{stream}", True),
        (f"DIRECT.GET.{stream}.>", True),  # the last message on a subject
        # No consumer API: a push consumer could deliver the stream into any subject of OMS (a service's
        # own), and keep redelivering; `oms events tail` reads by batched direct gets instead.
        (f"STREAM.LEADER.STEPDOWN.{stream}", False),  # move the stream's leader off a node before its upkeep
    )
    return (
        *(Export(route.subject, (CLIENTS,)) for route in CLI_ROUTES),
        *(Export(f"{name}.>", (OPS,)) for name in (*SERVICES, "chaos")),
        Export("$SRV.>", both, many_replies=True),
        Export(f"$JS.API.STREAM.INFO.{stream}", both, prefixed=True),
        *(Export(f"$JS.API.{call}", (OPS,), many_replies=many, prefixed=True) for call, many in read),
        Export("events.>", (OPS,), stream=True),
        # The system account's JetStream report of each server, for `oms status` on a cluster.
        Export("$SYS.REQ.SERVER.PING.JSZ", (OPS,), many_replies=True, source=SYS, renamed=JSZ_SUBJECT),
    )
