"""Subject names, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from bus import contract as c


@dataclass(frozen=True)
class Route:
    """One request-reply endpoint: its subject, its request model and whether it mutates."""

    service: str
    name: str
    request: type[BaseModel]
    mutating: bool = False
    path: str | None = None  # the subject after `<service>.` when it is not the name

    @property
    def subject(self) -> str:
        return f"{self.service}.{self.path or self.name}"


ORDERS_PLACE = Route("orders", "place", c.PlaceOrder, mutating=True)
ORDERS_GET = Route("orders", "get", c.GetOrder)
ORDERS_LIST = Route("orders", "list", c.ListOrders)
ORDERS_CANCEL = Route("orders", "cancel", c.CancelOrder, mutating=True)
ORDERS_EVENTS = Route("orders", "events", c.OrderEventsQuery)
SAGA_LIST = Route("orders", "saga_list", c.SagaQuery, path="saga.list")
SAGA_GET = Route("orders", "saga_get", c.SagaRef, path="saga.get")
SAGA_RETRY = Route("orders", "saga_retry", c.SagaRef, mutating=True, path="saga.retry")
SAGA_ABORT = Route("orders", "saga_abort", c.SagaAbort, mutating=True, path="saga.abort")

INVENTORY_CHECK = Route("inventory", "check", c.CheckStock)
INVENTORY_RESERVE = Route("inventory", "reserve", c.Reserve, mutating=True)
INVENTORY_RELEASE = Route("inventory", "release", c.Release, mutating=True)
INVENTORY_STOCK = Route("inventory", "stock", c.StockQuery)
INVENTORY_RESTOCK = Route("inventory", "restock", c.Restock, mutating=True)
INVENTORY_RESERVATIONS = Route("inventory", "reservations", c.ReservationQuery)

PAYMENT_AUTHORIZE = Route("payment", "authorize", c.Authorize, mutating=True)
PAYMENT_REFUND = Route("payment", "refund", c.Refund, mutating=True)
PAYMENT_GET = Route("payment", "get", c.GetPayment)
PAYMENT_LIST = Route("payment", "list", c.PaymentQuery)

ORDERS_HEALTH = Route("orders", "health", c.HealthQuery)
INVENTORY_HEALTH = Route("inventory", "health", c.HealthQuery)
PAYMENT_HEALTH = Route("payment", "health", c.HealthQuery)
HEALTH = {"orders": ORDERS_HEALTH, "inventory": INVENTORY_HEALTH, "payment": PAYMENT_HEALTH}

ROUTES: tuple[Route, ...] = (
    ORDERS_PLACE,
    ORDERS_GET,
    ORDERS_LIST,
    ORDERS_CANCEL,
    ORDERS_EVENTS,
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
    PAYMENT_AUTHORIZE,
    PAYMENT_REFUND,
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
