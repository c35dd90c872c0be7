"""One of an order's sagas (its placement, its shipment, one of its returns) as swimlanes on one time axis: each
step (and each compensation) as a bar in the lane of the service that did it, from its first attempt's start
to its end, with its attempts; the saga's events as marks in their service's lane. Pure layout: the template
draws it as SVG."""

from __future__ import annotations

from dataclasses import dataclass

from bus import contract as c
from bus.ids import parse_iso

LANES = ("orders", "inventory", "payment")
# The participant each remote step of the order service's sagas calls (placement, shipment, return); their
# local steps run in the order service.
STEP_LANES = {
    "reserve_stock": "inventory",
    "authorize_payment": "payment",
    "commit_stock": "inventory",
    "capture_payment": "payment",
    "receive_return": "inventory",
    "refund_payment": "payment",
}
TITLES = {"ship_order": "Shipment saga", "return_order": "Return saga"}  # the placement's is "Saga"
WIDTH = 900.0  # the drawing's width for the time axis, in SVG units
MIN_BAR = 3.0


@dataclass(frozen=True)
class Bar:
    lane: str
    step: str
    action: str  # invoke or compensate
    status: str
    attempts: int
    x: float
    width: float
    duration_ms: float | None
    error: str | None

    @property
    def compensation(self) -> bool:
        return self.action == "compensate"


@dataclass(frozen=True)
class Mark:
    lane: str
    kind: str
    x: float
    at: str


@dataclass(frozen=True)
class Timeline:
    title: str  # which of the order's sagas: "Saga" (its placement), "Shipment saga", "Return saga"
    saga: c.SagaView | None
    lanes: tuple[str, ...]
    bars: list[Bar]
    marks: list[Mark]
    span_ms: float
    ticks: list[tuple[float, str]]  # (x, label) along the time axis

    def in_lane(self, lane: str) -> tuple[list[Bar], list[Mark]]:
        return [b for b in self.bars if b.lane == lane], [m for m in self.marks if m.lane == lane]


def _at(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        return None


def _saga_of(event: dict) -> str | None:
    """The saga an event belongs to: the one it names (a participant's events name the saga whose key they
    came under), else, for an event written before participants named it, the fulfilment saga its data names
    (a refund's return before the capture it refunds; a commit, a capture, a return), else none (the
    placement's)."""
    if isinstance(named := event.get("saga_id"), str) and named:
        return named
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    refund = data.get("refund")
    for found in (refund.get("refund_id") if isinstance(refund, dict) else None, *map(data.get, _SAGA_IDS)):
        if isinstance(found, str) and found:
            return found
    return None


_SAGA_IDS = ("return_id", "commit_id", "capture_id")  # a fulfilment saga's id, as its participants' events name it


def layout(order: c.Order, events: list[dict], saga: c.SagaView | None = None) -> Timeline:
    """The timeline of one of `order`'s sagas, its placement's unless `saga` says which, with those of `events`
    (the order's timeline from `orders.events`) that belong to that saga (`_saga_of`)."""
    placement = order.saga.saga_id if order.saga else None  # what an event naming no saga belongs to
    saga = saga or order.saga
    saga_id = saga.saga_id if saga else None
    place = saga_id == placement
    steps = saga.steps if saga else []
    events = [e for e in events if (_saga_of(e) or placement) == saga_id]
    times = [t for s in steps for t in (_at(s.started_at), _at(s.finished_at)) if t is not None]
    times += [t for e in events if (t := _at(e.get("occurred_at"))) is not None]
    began = parse_iso(order.created_at) if place or saga is None else _at(saga.created_at)
    if began is not None:
        times.append(began)
    if not times:
        times.append(parse_iso(order.created_at))
    start, end = min(times), max(times)
    span = max(end - start, 0.001)

    def x(t: float) -> float:
        return round((t - start) / span * WIDTH, 1)

    bars = []
    for step in steps:
        began = _at(step.started_at)
        if began is None:
            continue
        ended = _at(step.finished_at) or end
        error = (step.last_error or {}).get("code") if step.last_error else None
        bars.append(
            Bar(
                lane=STEP_LANES.get(step.step, "orders"),
                step=step.step,
                action=step.action,
                status=step.status,
                attempts=step.attempts,
                x=x(began),
                width=max(MIN_BAR, x(ended) - x(began)),
                duration_ms=step.duration_ms,
                error=str(error) if error else None,
            )
        )
    marks = []
    for event in events:
        at = _at(event.get("occurred_at"))
        lane = str(event.get("service", "orders"))
        if at is not None:
            marks.append(
                Mark(lane if lane in LANES else "orders", str(event.get("type", "?")), x(at), event["occurred_at"])
            )
    ticks = [(round(WIDTH * i / 4, 1), f"+{span * 1000 * i / 4:,.0f} ms") for i in range(5)]
    title = "Saga" if place or saga is None else TITLES.get(saga.name, "Saga")
    return Timeline(title, saga, LANES, bars, marks, round(span * 1000, 1), ticks)


def layouts(order: c.Order, events: list[dict]) -> list[Timeline]:
    """A timeline for each of the order's sagas that has begun: its placement, its last shipment, its returns."""
    sagas = [order.saga, order.ship_saga, *(r.saga for r in order.returns)]
    return [layout(order, events, saga) for saga in sagas if saga is not None]
