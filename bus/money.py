"""Money: integer cents with an ISO currency code, and the one limit every amount is held to."""

from __future__ import annotations

# The largest amount OMS takes anywhere: a unit price (inventory.restock), an order's total (refused by its
# reservation, where prices meet quantities), an authorization (payment.authorize), the payment service's
# decline limit. 10^12 cents is 10 billion in the currency: far above any order, and well inside what JSON
# tools read exactly (2^53) and what SQLite stores (2^63).
MONEY_LIMIT_CENTS = 10**12
