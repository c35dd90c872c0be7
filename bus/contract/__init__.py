"""The wire contract: every command, result and event as a pydantic model, one module per owner:

    base         the field types, OrderStatus, Command and Result, order lines, the window of every list
    orders       the order service's: orders and its sagas as an operator sees them
    inventory    the inventory service's: stock, checks, reservations
    payment      the payment service's
    operations   what every service answers beside its business (faults, health), and the event body

Callers read it as one namespace (`from bus import contract as c`; `c.PlaceOrder`). Commands are strict
(no coercion, no unknown fields); the limits that are settings (`Limits`) reach validation through the
pydantic context, so the same model serves every deployment.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from pydantic import BaseModel

from bus.contract import base, inventory, operations, orders, payment
from bus.contract.base import (
    SHIPPED_STATUSES,
    TERMINAL,
    ActId,
    Cents,
    Command,
    Currency,
    CustomerId,
    Instant,
    Line,
    LinesCommand,
    OrderId,
    OrderStatus,
    PaymentMethod,
    PositiveCents,
    PricedLine,
    Reason,
    Result,
    SagaId,
    Sku,
    Window,
)
from bus.contract.inventory import (
    Availability,
    CheckLine,
    CheckStock,
    Commit,
    Product,
    ProductName,
    ReceiveReturn,
    Release,
    Released,
    Reservation,
    ReservationList,
    ReservationQuery,
    ReservationStatus,
    Reserve,
    ReservedLine,
    Restock,
    ReturnedLine,
    ReturnReceipt,
    Stock,
    StockQuery,
    Uncommit,
    Uncommitted,
    UpdateProduct,
)
from bus.contract.operations import (
    ChaosQuery,
    ChaosSet,
    ChaosState,
    Event,
    Health,
    HealthQuery,
)
from bus.contract.orders import (
    CancelOrder,
    EventList,
    GetOrder,
    ListOrders,
    Order,
    OrderEventsQuery,
    OrderList,
    OrderReturn,
    PlaceOrder,
    ReturnOrder,
    SagaAbort,
    SagaList,
    SagaQuery,
    SagaRef,
    SagaView,
    ShipOrder,
    StepRecord,
)
from bus.contract.payment import (
    Authorize,
    Capture,
    GetPayment,
    Payment,
    PaymentList,
    PaymentQuery,
    PaymentStatus,
    Refund,
    ReverseCapture,
    Void,
)
from bus.settings import Limits

# The contract's version: `api` in every service's `$SRV.INFO` metadata and in `oms status`. Raise it when a
# reader of the old contract could misread the new one (a field removed or changed); new optional fields
# and new subjects keep it.
API_VERSION = "1"

__all__ = [
    "API_VERSION",
    "SHIPPED_STATUSES",
    "TERMINAL",
    "ActId",
    "Authorize",
    "Availability",
    "CancelOrder",
    "Capture",
    "Cents",
    "ChaosQuery",
    "ChaosSet",
    "ChaosState",
    "CheckLine",
    "CheckStock",
    "Command",
    "Commit",
    "Currency",
    "CustomerId",
    "Event",
    "EventList",
    "GetOrder",
    "GetPayment",
    "Health",
    "HealthQuery",
    "Instant",
    "Line",
    "LinesCommand",
    "ListOrders",
    "Order",
    "OrderEventsQuery",
    "OrderId",
    "OrderList",
    "OrderReturn",
    "OrderStatus",
    "Payment",
    "PaymentList",
    "PaymentMethod",
    "PaymentQuery",
    "PaymentStatus",
    "PlaceOrder",
    "PositiveCents",
    "PricedLine",
    "Product",
    "ProductName",
    "Reason",
    "ReceiveReturn",
    "Refund",
    "Release",
    "Released",
    "Reservation",
    "ReservationList",
    "ReservationQuery",
    "ReservationStatus",
    "Reserve",
    "ReservedLine",
    "Restock",
    "Result",
    "ReturnOrder",
    "ReturnReceipt",
    "ReturnedLine",
    "ReverseCapture",
    "SagaAbort",
    "SagaId",
    "SagaList",
    "SagaQuery",
    "SagaRef",
    "SagaView",
    "ShipOrder",
    "Sku",
    "StepRecord",
    "Stock",
    "StockQuery",
    "Uncommit",
    "Uncommitted",
    "UpdateProduct",
    "Void",
    "Window",
]

_MODULES: tuple[ModuleType, ...] = (base, orders, inventory, payment, operations)


def schemas(limits: Limits | None = None) -> dict[str, dict[str, Any]]:
    """JSON Schema of every model in the contract, by name (for `oms schema`), with the input limits in force
    (`limits`, the defaults when None): the bounds a schema states are the ones the services enforce."""
    limits = limits or Limits()
    models = [
        m
        for module in _MODULES
        for m in vars(module).values()
        if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == module.__name__
    ]
    found = {m.__name__: m.model_json_schema() for m in models if m not in (Command, Result)}
    for schema in found.values():
        for definition in (schema, *schema.get("$defs", {}).values()):
            props = definition.get("properties", {})
            if definition.get("title") == "Line" and "qty" in props:
                props["qty"]["maximum"] = limits.max_qty_per_line
                props["qty"].pop("description", None)
            if "items" in props and definition.get("additionalProperties") is False:  # a command's lines
                props["items"]["maxItems"] = limits.max_items_per_order
    return found
