"""Units of a shipped order received back: resellable ones go back on hand, others do not; with its event."""

from __future__ import annotations

import sqlite3
from typing import Any

from bus import contract as c
from bus import jsonb
from bus.errors import Conflict, InvalidRequest, NotFound
from bus.ids import now_iso
from bus.unit import Tx
from inventory_svc import store


def receive_return(tx: Tx, cmd: c.ReceiveReturn, show: store.Show | None = None) -> c.ReturnReceipt:
    """Lines of a COMMITTED reservation back, never more of a line than was committed. Idempotent per
    return_id; raises NotFound, InvalidRequest (a SKU the order does not hold), Conflict (not committed,
    more than is left of a line, the return_id used for another return). All lines or none."""
    asked = {line.sku: line.qty for line in cmd.items}
    done = tx.one("SELECT * FROM returns WHERE return_id = ?", (cmd.return_id,))
    if done is not None:
        receipt = receipt_of(done)
        if receipt.order_id != cmd.order_id or {line.sku: line.qty for line in receipt.items} != asked:
            raise Conflict(
                f"return {cmd.return_id} was received already, of other lines or for another order",
                {"return_id": cmd.return_id, "order_id": receipt.order_id, "items": jsonb.loads(done["items"])},
            )
        return receipt
    row = tx.one("SELECT * FROM reservations WHERE order_id = ?", (cmd.order_id,))
    if row is None:
        raise NotFound(f"no reservation for order {cmd.order_id}", {"order_id": cmd.order_id})
    if row["status"] != "COMMITTED":
        raise Conflict(
            f"reservation of order {cmd.order_id} is {row['status'].lower()}: only shipped units are returned",
            {"order_id": cmd.order_id, "status": row["status"]},
        )
    items = jsonb.loads(row["items"])
    held = {item["sku"]: item for item in items}
    for index, line in enumerate(cmd.items):
        if line.sku not in held:
            raise InvalidRequest(
                f"invalid request: items[{index}].sku: order {cmd.order_id} has no line of {line.sku}",
                {"field": f"items[{index}].sku", "sku": line.sku, "order_id": cmd.order_id},
            )
    over = [
        {"sku": sku, "requested": qty, "left": held[sku]["qty"] - held[sku].get("returned_qty", 0)}
        for sku, qty in asked.items()
        if qty > held[sku]["qty"] - held[sku].get("returned_qty", 0)
    ]
    if over:
        first = over[0]
        more = f" (and {len(over) - 1} more lines)" if len(over) > 1 else ""
        raise Conflict(
            f"order {cmd.order_id}: returning {first['requested']} of {first['sku']}, but only {first['left']}"
            f" of it is left to return{more}",
            {"order_id": cmd.order_id, "lines": over},
        )
    products = store.products_of(tx, list(asked))
    lines = [
        c.ReturnedLine(sku=sku, qty=qty, restocked=bool(products[sku]["resellable"])) for sku, qty in asked.items()
    ]
    now = now_iso()
    receipt = c.ReturnReceipt(order_id=cmd.order_id, return_id=cmd.return_id, items=lines, received_at=now)
    record(tx, receipt, items)
    tx.emit(store.STOCK_RETURNED, cmd.order_id, receipt.model_dump(mode="json"), order_id=cmd.order_id)
    store.show_after_commit(tx, show, store.levels_of(tx, list(asked)))
    return receipt


def record(tx: Tx, receipt: c.ReturnReceipt, items: list[dict[str, Any]]) -> None:
    """Write a received return: restocked units on hand, each line's returned_qty, the receipt (also replay's)."""
    tx.executemany(
        "UPDATE products SET on_hand = on_hand + ? WHERE sku = ?",
        [(line.qty, line.sku) for line in receipt.items if line.restocked],
    )
    back = {line.sku: line.qty for line in receipt.items}
    kept = {line.sku: line.qty for line in receipt.items if line.restocked}
    tx.execute(
        "UPDATE reservations SET items = ? WHERE order_id = ?",
        (jsonb.text(with_returned(items, back, kept)), receipt.order_id),
    )
    tx.execute(
        "INSERT INTO returns (return_id, order_id, items, received_at) VALUES (?, ?, ?, ?)",
        (
            receipt.return_id,
            receipt.order_id,
            jsonb.text([line.model_dump(mode="json") for line in receipt.items]),
            receipt.received_at,
        ),
    )


def with_returned(
    items: list[dict[str, Any]], returned: dict[str, int], restocked: dict[str, int]
) -> list[dict[str, Any]]:
    """A reservation's lines with `returned` units more received back, `restocked` of them put back on hand
    (each line then names its returned_qty and restocked_qty)."""
    return [
        item
        | {
            "returned_qty": item.get("returned_qty", 0) + returned.get(item["sku"], 0),
            "restocked_qty": item.get("restocked_qty", 0) + restocked.get(item["sku"], 0),
        }
        for item in items
    ]


def receipt_of(row: sqlite3.Row) -> c.ReturnReceipt:
    return c.ReturnReceipt(
        order_id=row["order_id"],
        return_id=row["return_id"],
        items=[c.ReturnedLine.model_validate(line) for line in jsonb.loads(row["items"])],
        received_at=row["received_at"],
    )
