"""The request client: one call = one request-reply with a timeout and typed errors.

This is the one place where nats-py's transport errors become OMS errors.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar, overload

import nats.errors
from nats.aio.client import Client as Nats
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from bus import jsonb
from bus.errors import InternalError, NoResponders, OmsError, RequestTimeout, Unavailable, from_wire
from bus.subjects import Route

M = TypeVar("M", bound=BaseModel)

IDEMPOTENCY_HEADER = "Idempotency-Key"


class Guard(Protocol):
    """Something that decides whether a call to a service may go out (a circuit breaker)."""

    def guard(self, service: str) -> AbstractAsyncContextManager[None]: ...


def encode(payload: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(payload, BaseModel):
        return payload.model_dump_json(exclude_none=True).encode()
    return jsonb.dumps(payload)


def decode_reply(subject: str, data: bytes) -> dict[str, Any]:
    """The `result` of a reply envelope, or the typed error it carries."""
    try:
        body = jsonb.loads(data)
    except ValueError:
        raise InternalError(f"{subject} answered something that is not JSON") from None
    if not isinstance(body, dict) or "ok" not in body:
        raise InternalError(f"{subject} answered without the reply envelope")
    if body["ok"] is True:
        result = body.get("result")
        return result if isinstance(result, dict) else {}
    error = body.get("error")
    raise from_wire(error if isinstance(error, dict) else {})


class Client:
    """Calls OMS endpoints; optional breakers guard each downstream service."""

    def __init__(self, nc: Nats, *, breakers: Guard | None = None, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.breakers = breakers
        self.timeout_s = timeout_s

    @overload
    async def call(
        self,
        route: Route,
        payload: BaseModel | dict[str, Any],
        result: type[M],
        *,
        timeout_s: float | None = ...,
        idempotency_key: str | None = ...,
    ) -> M: ...

    @overload
    async def call(
        self,
        route: Route,
        payload: BaseModel | dict[str, Any],
        result: None = ...,
        *,
        timeout_s: float | None = ...,
        idempotency_key: str | None = ...,
    ) -> dict[str, Any]: ...

    async def call(
        self,
        route: Route,
        payload: BaseModel | dict[str, Any],
        result: type[M] | None = None,
        *,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> M | dict[str, Any]:
        if self.breakers is None:
            body = await self.request(route.subject, payload, timeout_s, idempotency_key)
        else:
            async with self.breakers.guard(route.service):
                body = await self.request(route.subject, payload, timeout_s, idempotency_key)
        if result is None:
            return body
        try:
            return result.model_validate(body)
        except PydanticValidationError as exc:
            raise InternalError(f"{route.subject} answered a result that does not fit {result.__name__}") from exc

    async def request(
        self,
        subject: str,
        payload: BaseModel | dict[str, Any] | bytes,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None
        data = payload if isinstance(payload, bytes) else encode(payload)
        try:
            msg = await self.nc.request(subject, data, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no service answers on {subject}", {"subject": subject}) from None
        except nats.errors.TimeoutError:
            raise RequestTimeout(f"no reply from {subject} within {timeout:.3g}s", {"subject": subject}) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
            raise Unavailable(f"not connected to NATS ({type(exc).__name__})", {"subject": subject}) from None
        except nats.errors.Error as exc:
            raise Unavailable(f"request to {subject} failed: {exc}", {"subject": subject}) from None
        return decode_reply(subject, msg.data)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, OmsError) and exc.retryable
