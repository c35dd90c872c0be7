"""The request client: one call = one request-reply with a timeout and typed errors.

This is the one place where nats-py's transport errors become OMS errors. A
client with `patience_s` also rides out a node loss: a call that met no
responders, a lost connection or another retryable error is sent again with
capped, jittered backoff until its patience runs out. A timeout is an unknown
outcome, so it is sent again only when that is safe: a read, or a command
with an idempotency key. The saga engine keeps no patience: its steps have a
retry policy of their own.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import cache
from typing import Any, Literal, Protocol, TypeVar, overload

import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict, create_model
from pydantic import ValidationError as PydanticValidationError

from bus import jsonb
from bus.errors import BadReply, InternalError, NoResponders, OmsError, RequestTimeout, Unavailable, from_wire
from bus.subjects import Route

M = TypeVar("M", bound=BaseModel)

IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0


class Guard(Protocol):
    """Something that decides whether a call to a service may go out (a circuit breaker)."""

    def guard(self, service: str) -> AbstractAsyncContextManager[None]: ...


def encode(payload: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(payload, BaseModel):  # `model_dump_json(exclude_none=True)`, written straight to bytes
        return type(payload).__pydantic_serializer__.to_json(payload, exclude_none=True)
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


def decode_reply_as(subject: str, data: bytes, model: type[M]) -> M:
    """The `result` of a success as `model`, read in one pass; the typed error a failure carries; BadReply
    for a success that does not fit."""
    try:
        return _success(model).model_validate_json(data).result  # type: ignore[attr-defined, no-any-return]
    except (PydanticValidationError, ValueError):
        decode_reply(subject, data)  # raises what an error reply, or no reply envelope, is
        raise BadReply(f"{subject} answered a result that does not fit {model.__name__}") from None


@cache
def _success(model: type[BaseModel]) -> type[BaseModel]:
    """The envelope of a success whose result is `model`."""
    return create_model(
        f"Success{model.__name__}", __config__=ConfigDict(extra="ignore"), ok=(Literal[True], ...), result=(model, ...)
    )


class Client:
    """Calls OMS endpoints; optional breakers guard each downstream service."""

    def __init__(
        self,
        nc: Nats,
        *,
        breakers: Guard | None = None,
        timeout_s: float = 2.0,
        patience_s: float = 0.0,
        hopeless: Callable[[], bool] = lambda: False,
    ) -> None:
        self.nc = nc
        self.breakers = breakers
        self.timeout_s = timeout_s
        self.patience_s = patience_s
        self.hopeless = hopeless  # e.g. the server refused the request: sending it again cannot help

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
        safe = idempotency_key is not None or not route.mutating  # may be sent again after a timeout
        give_up = time.monotonic() + self.patience_s
        attempt = 0
        while True:
            try:
                if self.breakers is None:
                    body = await self.request(route.subject, payload, timeout_s, idempotency_key, result)
                else:
                    async with self.breakers.guard(route.service):
                        body = await self.request(route.subject, payload, timeout_s, idempotency_key, result)
                break
            except OmsError as exc:
                if not self._again(exc, safe, give_up):
                    raise
                attempt += 1
                await asyncio.sleep(random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2**attempt)))
        return body

    def _again(self, exc: OmsError, safe: bool, give_up: float) -> bool:
        """Whether a failed call goes out once more (see the module's docstring)."""
        if not exc.retryable or time.monotonic() >= give_up or self.hopeless():
            return False
        return safe or isinstance(exc, NoResponders)  # no responders: the request reached nobody

    async def request(
        self,
        subject: str,
        payload: BaseModel | dict[str, Any] | bytes,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
        result: type[M] | None = None,
    ) -> Any:
        """One request-reply: its reply's result as `result` (BadReply if it does not fit), or as a dict."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None
        data = payload if isinstance(payload, bytes) else encode(payload)
        try:
            if self.patience_s and isinstance(lost := getattr(self.nc, "lost", None), asyncio.Event):
                msg = await self._unless_lost(self.nc.request(subject, data, timeout=timeout, headers=headers), lost)
            else:
                msg = await self.nc.request(subject, data, timeout=timeout, headers=headers)
        except ConnectionLost:
            raise Unavailable(
                f"the connection to NATS dropped while waiting for {subject}", {"subject": subject}
            ) from None
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no service answers on {subject}", {"subject": subject}) from None
        except nats.errors.TimeoutError:
            raise RequestTimeout(f"no reply from {subject} within {timeout:.3g}s", {"subject": subject}) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
            raise Unavailable(f"not connected to NATS ({type(exc).__name__})", {"subject": subject}) from None
        except nats.errors.Error as exc:
            raise Unavailable(f"request to {subject} failed: {exc}", {"subject": subject}) from None
        return decode_reply(subject, msg.data) if result is None else decode_reply_as(subject, msg.data, result)

    @staticmethod
    async def _unless_lost(request: Awaitable[Msg], lost: asyncio.Event) -> Msg:
        """The reply, unless the connection drops first: a reply on the old connection may never come, and a
        patient client would rather send again (with its key) than wait out the whole timeout."""
        waiting = asyncio.ensure_future(request)
        dropped = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait((waiting, dropped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            dropped.cancel()
        if waiting.done():
            return waiting.result()
        waiting.cancel()
        raise ConnectionLost


class ConnectionLost(Exception):
    """The connection dropped while a reply was awaited."""


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, OmsError) and exc.retryable
