"""The OMS error tree; every error a caller can see maps to one wire code.

    OmsError                      code, status, retryable
     ├── BusinessError            not retryable: the answer is final
     │    ├── InvalidRequest      VALIDATION_ERROR  400
     │    ├── PaymentDeclined     PAYMENT_DECLINED  402
     │    ├── NotFound            NOT_FOUND         404
     │    ├── Conflict            CONFLICT          409
     │    └── OutOfStock          OUT_OF_STOCK      422
     ├── InternalError            INTERNAL          500
     │    └── BadReply            a service answered with something that is not its route's reply
     └── TransientError           retryable: the outcome is unknown or deferred
          ├── Unavailable         UNAVAILABLE       503
          │    ├── NoResponders   nobody serves the subject
          │    └── BreakerOpen    the circuit breaker refused to send
          └── RequestTimeout      TIMEOUT           504 (also an asyncio.TimeoutError)

Transport failures from nats-py are converted in exactly one place,
`bus.client`; whether an error is retryable comes from its type.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar


class OmsError(Exception):
    code: ClassVar[str] = "INTERNAL"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_wire(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "details": self.details,
        }


class BusinessError(OmsError):
    """A final answer: retrying the same request gives the same answer."""


class InvalidRequest(BusinessError):
    code, status = "VALIDATION_ERROR", 400


class PaymentDeclined(BusinessError):
    code, status = "PAYMENT_DECLINED", 402


class NotFound(BusinessError):
    code, status = "NOT_FOUND", 404


class Conflict(BusinessError):
    code, status = "CONFLICT", 409


class OutOfStock(BusinessError):
    code, status = "OUT_OF_STOCK", 422


class InternalError(OmsError):
    code, status = "INTERNAL", 500


class BadReply(InternalError):
    """A service's success that is not its route's reply model (a bug, or two versions out of step)."""


class TransientError(OmsError):
    """The outcome is unknown or deferred: retry with the same idempotency key."""

    retryable = True


class Unavailable(TransientError):
    code, status = "UNAVAILABLE", 503


class NoResponders(Unavailable):
    pass


class BreakerOpen(Unavailable):
    pass


class RequestTimeout(TransientError, asyncio.TimeoutError):
    code, status = "TIMEOUT", 504


_BY_CODE: dict[str, type[OmsError]] = {
    cls.code: cls for cls in (InvalidRequest, PaymentDeclined, NotFound, Conflict, OutOfStock, InternalError)
} | {"UNAVAILABLE": Unavailable, "TIMEOUT": RequestTimeout}

ERROR_CODES: dict[str, int] = {code: cls.status for code, cls in _BY_CODE.items()}


def from_wire(error: dict[str, Any]) -> OmsError:
    """Rebuild the typed error from a reply's `error` object; unknown codes are INTERNAL."""
    cls = _BY_CODE.get(str(error.get("code")), InternalError)
    details = error.get("details")
    return cls(str(error.get("message", "")), details if isinstance(details, dict) else {})
