"""What an order must hold, by its status, for the audit's invariant 2: a confirmed order its active
reservation and its authorization; a shipping one either side of its shipment; a shipped one its committed
reservation and its capture, with what it refunded equal to what its returns are worth."""

from __future__ import annotations

from typing import Any

from bus import subjects as s
from bus.client import Client

SHIPPED = ("SHIPPED", "PARTIALLY_RETURNED", "RETURNED")


def _value(lines: list[dict[str, Any]], qty: str = "qty") -> int:
    return sum(line.get(qty, 0) * (line.get("unit_price_cents") or 0) for line in lines)


async def holds_what_it_should(
    client: Client, o: dict[str, Any], r: dict[str, Any] | None, p: dict[str, Any] | None
) -> list[str]:
    """What is wrong with a confirmed, shipping or shipped order's reservation and payment."""
    found: list[str] = []
    status = o["status"]
    want = {line["sku"]: line["qty"] for line in o["items"]}
    priced = _value(o["items"])
    if o["total_cents"] != priced or (r is not None and r["total_cents"] != priced):
        found.append(f"total {o['total_cents']}, but its lines at their unit prices come to {priced}")
    held = {"CONFIRMED": ("ACTIVE",), "SHIPPING": ("ACTIVE", "COMMITTED")}.get(status, ("COMMITTED",))
    if r is None or r["status"] not in held:
        found.append(f"{status} but its reservation is {r['status'] if r else 'missing'}")
    elif {line["sku"]: line["qty"] for line in r["items"]} != want:
        found.append("reservation items differ from the order")
    charge = {"CONFIRMED": ("AUTHORIZED",), "SHIPPING": ("AUTHORIZED", "CAPTURED")}.get(
        status, ("CAPTURED", "PARTIALLY_REFUNDED", "REFUNDED")
    )
    if p is None or p["status"] not in charge:
        found.append(f"{status} but its payment is {p['status'] if p else 'missing'}")
        return found
    if p["amount_cents"] != o["total_cents"] or p["currency"] != o["currency"]:
        found.append(f"authorized {p['amount_cents']} {p['currency']}, total {o['total_cents']}")
    if status == "CONFIRMED" and p.get("captured_cents"):
        found.append(f"CONFIRMED but {p['captured_cents']} captured")
    if status not in SHIPPED:
        return found
    if r is not None and r.get("commit_id") != o.get("ship_saga_id"):
        found.append(f"reservation committed by {r.get('commit_id')}, the order shipped by {o.get('ship_saga_id')}")
    if p.get("captured_cents") != o["total_cents"]:
        found.append(f"shipped with {p.get('captured_cents')} captured of its total {o['total_cents']}")
    # captured - refunded = the value of the shipped lines not returned, i.e. refunded = what returned
    # units are worth: by the order's finished returns, and by the units inventory received back.
    refunded, returned = p.get("refunded_cents", 0), o.get("refunded_cents", 0)
    received = _value(r["items"], "returned_qty") if r is not None else 0
    if refunded != returned or received != returned:
        in_flight = await _returning(client, o["order_id"])
        if not (returned <= refunded <= returned + in_flight and returned <= received <= returned + in_flight):
            found.append(
                f"refunded {refunded} and received back units worth {received}, but its returns are worth"
                f" {returned} (and {in_flight} under way)"
            )
    return found


async def _returning(client: Client, order_id: str) -> int:
    """What the order's returns under way are worth."""
    full = await client.call(s.ORDERS_GET, {"order_id": order_id}, timeout_s=10)
    return sum(r["amount_cents"] for r in full.get("returns", []) if r["status"] == "RETURNING")
