"""Subject names, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from bus import contract as c


@dataclass(frozen=True)
class Route:
    """One request-reply endpoint: its subject, its request and reply models, and whether it mutates.

    A served route declares its reply: its handler returns that model, and a stored idempotent reply is
    parsed back into it (`bus.service.Call.once`). A route only called, never served, may leave it out."""

    service: str
    name: str
    request: type[BaseModel]
    mutating: bool = False
    path: str | None = None  # the subject after `<service>.` when it is not the name
    reply: type[BaseModel] | None = None

    @property
    def subject(self) -> str:
        return f"{self.service}.{self.path or self.name}"


ORDERS_PLACE = Route("orders", "place", c.PlaceOrder, mutating=True, reply=c.Order)
ORDERS_GET = Route("orders", "get", c.GetOrder, reply=c.Order)
ORDERS_LIST = Route("orders", "list", c.ListOrders, reply=c.OrderList)
ORDERS_CANCEL = Route("orders", "cancel", c.CancelOrder, mutating=True, reply=c.Order)
ORDERS_EVENTS = Route("orders", "events", c.OrderEventsQuery, reply=c.EventList)
ORDERS_SHIP = Route("orders", "ship", c.ShipOrder, mutating=True, reply=c.Order)
ORDERS_RETURN = Route("orders", "return", c.ReturnOrder, mutating=True, reply=c.Order)
SAGA_LIST = Route("orders", "saga_list", c.SagaQuery, path="saga.list", reply=c.SagaList)
SAGA_GET = Route("orders", "saga_get", c.SagaRef, path="saga.get", reply=c.SagaView)
SAGA_RETRY = Route("orders", "saga_retry", c.SagaRef, mutating=True, path="saga.retry", reply=c.SagaView)
SAGA_ABORT = Route("orders", "saga_abort", c.SagaAbort, mutating=True, path="saga.abort", reply=c.SagaView)

INVENTORY_CHECK = Route("inventory", "check", c.CheckStock, reply=c.Availability)
INVENTORY_RESERVE = Route("inventory", "reserve", c.Reserve, mutating=True, reply=c.Reservation)
INVENTORY_RELEASE = Route("inventory", "release", c.Release, mutating=True, reply=c.Released)
INVENTORY_STOCK = Route("inventory", "stock", c.StockQuery, reply=c.Stock)
INVENTORY_RESTOCK = Route("inventory", "restock", c.Restock, mutating=True, reply=c.Product)
INVENTORY_RESERVATIONS = Route("inventory", "reservations", c.ReservationQuery, reply=c.ReservationList)
INVENTORY_PRODUCT = Route("inventory", "product", c.UpdateProduct, mutating=True, reply=c.Product)
INVENTORY_COMMIT = Route("inventory", "commit", c.Commit, mutating=True, reply=c.Reservation)
INVENTORY_UNCOMMIT = Route("inventory", "uncommit", c.Uncommit, mutating=True, reply=c.Uncommitted)
INVENTORY_RECEIVE_RETURN = Route("inventory", "receive_return", c.ReceiveReturn, mutating=True, reply=c.ReturnReceipt)

PAYMENT_AUTHORIZE = Route("payment", "authorize", c.Authorize, mutating=True, reply=c.Payment)
PAYMENT_CAPTURE = Route("payment", "capture", c.Capture, mutating=True, reply=c.Payment)
PAYMENT_REVERSE_CAPTURE = Route("payment", "reverse_capture", c.ReverseCapture, mutating=True, reply=c.Payment)
PAYMENT_REFUND = Route("payment", "refund", c.Refund, mutating=True, reply=c.Payment)
PAYMENT_VOID = Route("payment", "void", c.Void, mutating=True, reply=c.Payment)
PAYMENT_GET = Route("payment", "get", c.GetPayment, reply=c.Payment)
PAYMENT_LIST = Route("payment", "list", c.PaymentQuery, reply=c.PaymentList)

ORDERS_HEALTH = Route("orders", "health", c.HealthQuery, reply=c.Health)
INVENTORY_HEALTH = Route("inventory", "health", c.HealthQuery, reply=c.Health)
PAYMENT_HEALTH = Route("payment", "health", c.HealthQuery, reply=c.Health)
HEALTH = {"orders": ORDERS_HEALTH, "inventory": INVENTORY_HEALTH, "payment": PAYMENT_HEALTH}

ROUTES: tuple[Route, ...] = (
    ORDERS_PLACE,
    ORDERS_GET,
    ORDERS_LIST,
    ORDERS_CANCEL,
    ORDERS_EVENTS,
    ORDERS_SHIP,
    ORDERS_RETURN,
    SAGA_LIST,
    SAGA_GET,
    SAGA_RETRY,
    SAGA_ABORT,
    INVENTORY_CHECK,
    INVENTORY_RESERVE,
    INVENTORY_RELEASE,
    INVENTORY_STOCK,
    INVENTORY_RESTOCK,
    INVENTORY_RESERVATIONS,
    INVENTORY_PRODUCT,
    INVENTORY_COMMIT,
    INVENTORY_UNCOMMIT,
    INVENTORY_RECEIVE_RETURN,
    PAYMENT_AUTHORIZE,
    PAYMENT_CAPTURE,
    PAYMENT_REVERSE_CAPTURE,
    PAYMENT_REFUND,
    PAYMENT_VOID,
    PAYMENT_GET,
    PAYMENT_LIST,
    ORDERS_HEALTH,
    INVENTORY_HEALTH,
    PAYMENT_HEALTH,
)

EVENTS_ROOT = "events"


def chaos_subject(service: str, verb: str) -> str:
    """`chaos.<service>.set|get|clear`."""
    return f"chaos.{service}.{verb}"


def event_subject(service: str, event_type: str, key: str) -> str:
    """`events.<service>.<type>.<key>`; the key is the order id (the SKU for restocks)."""
    return f"{EVENTS_ROOT}.{service}.{event_type}.{key}"


def service_events_subject(service: str) -> str:
    """`events.<service>.>`: every event one service writes."""
    return f"{EVENTS_ROOT}.{service}.>"


def order_timeline_subject(order_id: str) -> str:
    return f"{EVENTS_ROOT}.*.*.{order_id}"


def routes_of(service: str) -> list[Route]:
    return [r for r in ROUTES if r.service == service]
