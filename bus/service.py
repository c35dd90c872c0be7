"""The service runner: `nats.micro` endpoints around plain async handlers.

A handler is `async def handler(cmd: Model, call: Call) -> Reply`, the reply
model its route declares; it never sees NATS. The runner owns the transport: size and header checks, strict
validation, fault injection, the reply envelope with the micro error headers,
and concurrency — `nats.micro` awaits each handler before taking the next
message, so every request runs in its own task, bounded by a semaphore.

Counting is nats.micro's own: every reply with the micro error headers adds to the endpoint's
`num_errors` and sets its `last_error` (`code:message`), and its handling time goes to its
`processing_time`, as if micro had awaited the handler itself (`MicroTally`); the stats' `data` only
splits `num_errors` by error code. `<service>.health` and `chaos.<service>.*` are never subject to
injected faults: they are how an operator sees and ends them.

Each request's task binds its ids to the log context (`bus.logs.bind`), and a
mutating request leaves one INFO line (endpoint, outcome, duration, order id,
saga id, idempotency key); reads leave none unless they fail internally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client as Nats
from nats.micro import add_service
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request, ServiceError
from nats.micro.service import Endpoint, EndpointStats, Service
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from bus import contract as c
from bus import logs, validation
from bus.chaos import Chaos
from bus.client import IDEMPOTENCY_HEADER
from bus.envelope import envelope
from bus.errors import InternalError, InvalidRequest, OmsError
from bus.idempotency import once, request_hash, saga_in_key
from bus.ids import new_id
from bus.metrics import Metrics
from bus.settings import Settings
from bus.subjects import Route, chaos_subject
from bus.unit import Rejected, Tx

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

Handler = Callable[[Any, "Call"], Awaitable[BaseModel]]
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:@/+=-]+$")


@dataclass(slots=True)
class Call:
    """What a handler knows about the request beyond its body."""

    route: Route
    idempotency_key: str | None = None
    request_hash: str | None = None  # set by `once` when the call has a key
    replayed: bool = False  # set by `once`: the answer is the one stored for the key (the effect did not run)

    def once(
        self,
        cmd: BaseModel,
        effect: Callable[[Tx], M | Rejected],
        exclude: frozenset[str] = frozenset(),
        *,
        stored: type[M] | None = None,
    ) -> Callable[[Tx], M | Rejected]:
        """The unit of work `effect`, run at most once for this call's idempotency key; a repeat answers the
        stored reply as the model `effect` returns: the route's reply model, unless `stored` says another
        (an effect whose value the handler answers with more)."""
        if self.idempotency_key is None:
            return effect
        self.request_hash = digest = request_hash(cmd, exclude)
        reply = stored or self.route.reply
        assert reply is not None, f"{self.route.subject} declares no reply model"
        key, endpoint = self.idempotency_key, self.route.subject
        # parsed into `reply`, the model `effect` returns:
        return once(key, endpoint, digest, effect, cmd=cmd, exclude=exclude, reply=reply, on_repeat=self._replayed)  # type: ignore[return-value]

    def _replayed(self) -> None:
        self.replayed = True


class MicroTally:
    """One endpoint's counts in nats.micro's own `Endpoint` (what `$SRV.STATS` reports).

    micro counts a request when its handler is called and an error when the handler raises, answering
    the error itself (with an empty body). Our handler only starts the request's task and returns, so the
    task reports its outcome here, into the same fields micro's own `_handle_request` keeps (nats-py 2.x;
    `tests/test_listing.py` pins that `$SRV.STATS` reports them)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.by_code: Counter[str] = Counter()

    def record(self, elapsed_ns: int, error: OmsError | None) -> None:
        ep = self.endpoint
        if error is not None:
            ep._num_errors += 1
            ep._last_error = repr(ServiceError(str(error.status), error.message[:200]))
            self.by_code[error.code] += 1
        ep._processing_time += elapsed_ns
        ep._average_processing_time = int(ep._processing_time / max(1, ep._num_requests))


def refused(field: str, message: str, **details: Any) -> InvalidRequest:
    """VALIDATION_ERROR for one field the runner checks itself (the body's size, the key header)."""
    return InvalidRequest(f"invalid request: {field}: {message}", {"field": field, **details})


def validation_error(exc: PydanticValidationError) -> InvalidRequest:
    """A pydantic error as VALIDATION_ERROR naming each field in our words (`bus.validation`); never echoes
    the input back."""
    found = validation.problems(exc)
    return InvalidRequest(f"invalid request: {validation.summary(found)}", {"errors": found[:20]})


class ServiceRunner:
    """One OMS service on NATS: its business endpoints plus `chaos.<service>.*`."""

    def __init__(
        self,
        nc: Nats,
        service: str,
        settings: Settings,
        *,
        version: str,
        description: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.nc = nc
        self.service = service
        self.settings = settings
        self.version = version
        self.description = description
        self.metrics = metrics or Metrics(service)
        self.chaos = Chaos(service)
        self._routes: list[tuple[Route, Handler]] = []
        self._tallies: dict[str, MicroTally] = {}
        self._slots = asyncio.Semaphore(settings.handler_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._micro: Service | None = None
        self._subjects: dict[str, str] = {}  # route name -> the subject it is served on

    def add(self, route: Route, handler: Handler) -> None:
        if route.reply is None:
            raise ValueError(f"{route.subject}: a served route declares its reply model")
        self._routes.append((route, handler))

    def add_all(self, *routes: tuple[Route, Handler]) -> None:
        for route, handler in routes:
            self.add(route, handler)

    async def start(self) -> None:
        self._micro = await add_service(
            self.nc,
            name=self.service,
            version=self.version,
            description=self.description,
            metadata={"api": c.API_VERSION},
            stats_handler=self._endpoint_data,
        )
        for route, handler in self._routes:
            # Health answers whatever faults are injected: it is how `oms status` shows them.
            await self._serve_on(route, route.subject, handler, chaos=route.name != "health")
        for verb, model, handler in (
            ("set", c.ChaosSet, self._chaos_set),
            ("get", c.ChaosQuery, self._chaos_get),
            ("clear", c.ChaosQuery, self._chaos_clear),
        ):
            route = Route(self.service, f"chaos_{verb}", model, mutating=verb != "get", reply=c.ChaosState)
            # Fault injection is per instance; with one instance per service (or per partition) the
            # queue group reaches exactly the instance that serves the business endpoints.
            await self._serve_on(route, chaos_subject(self.service, verb), handler, chaos=False)
        self._export_chaos()
        await self.nc.flush()

    async def _serve_on(self, route: Route, subject: str, handler: Handler, *, chaos: bool) -> None:
        assert self._micro is not None
        self._subjects[route.name] = subject
        self.metrics.child(self.metrics.request_latency, subject)  # shown from the start, at zero
        await self._micro.add_endpoint(
            name=route.name,
            subject=subject,
            queue_group=self.service,
            handler=self._dispatcher(route, handler, chaos=chaos),
        )
        self._tallies[route.name] = MicroTally(self._micro._endpoints[-1])

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking requests, then let the ones in flight finish: all of it within `grace_s`."""
        deadline = time.monotonic() + grace_s
        if self._micro is not None:
            micro, self._micro = self._micro, None
            if self.nc.is_connected and grace_s > 0:  # unsubscribing needs the server; without it, stop answering
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(micro.stop(), grace_s)
        left = deadline - time.monotonic()
        if self._tasks and left > 0:
            await asyncio.wait(self._tasks, timeout=left)
        if self._tasks:
            log.warning("stopped with requests unanswered", extra={"in_flight": len(self._tasks)})

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def _endpoint_data(self, stats: EndpointStats) -> dict[str, Any]:
        """The stats' `data`: `num_errors` by error code (business outcomes 4xx, the service's failures 5xx)."""
        tally = self._tallies.get(stats.name)
        return {"errors_by_code": dict(tally.by_code) if tally else {}}

    def _dispatcher(self, route: Route, handler: Handler, *, chaos: bool) -> Callable[[Request], Awaitable[None]]:
        async def dispatch(request: Request) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(self._serve(route, handler, request, chaos))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

        return dispatch

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _serve(self, route: Route, handler: Handler, request: Request, chaos: bool) -> None:
        started = time.perf_counter_ns()
        drop = False
        # The request's ids, bound to this task's log context once they are all known (`bound`).
        context: dict[str, Any] = {"service": self.service, "endpoint": self._subjects[route.name]}
        bound = False
        try:
            call = Call(route, self._idempotency_key(request))
            if call.idempotency_key is not None:
                context["idempotency_key"] = call.idempotency_key
                context["saga_id"] = saga_in_key(call.idempotency_key)
            if chaos and self.chaos.active:
                await self.chaos.before(route.name)
            cmd = self._parse(route, request.data)
            fields = cmd.__dict__  # a model's fields; getattr would go through pydantic's __getattr__ on a miss
            context["order_id"] = fields.get("order_id")
            context["saga_id"] = fields.get("saga_id") or context.get("saga_id")
            logs.bind(**context)
            bound = True
            outcome: BaseModel | OmsError = await handler(cmd, call)
            drop = chaos and self.chaos.drop_reply(route.name)
        except OmsError as exc:
            outcome = exc
        except Exception:
            logs.bind(**context)  # (again, if the handler had them already: a rare path)
            bound = True
            ref = new_id("err")
            log.exception("handler failed", extra={"ref": ref})
            outcome = InternalError(f"internal error (ref {ref}); the service log has the details", {"ref": ref})
        elapsed = time.perf_counter_ns() - started
        code = self._record(route, outcome, elapsed)
        if not bound:  # refused before the handler ran: the line (and a failed reply's) still carries the ids
            logs.bind(**context)
        if route.mutating and log.isEnabledFor(logging.INFO):
            # Before the reply: a request that was answered always left its line, also if the task is
            # cancelled or the process killed while the reply is being flushed.
            log.info(
                "request",
                extra={"outcome": code, "duration_ms": round(elapsed / 1e6, 3), **_ids_of(outcome)},
            )
        if drop:
            log.info("reply dropped by fault injection")
            return
        await self._reply(request, outcome)

    def _idempotency_key(self, request: Request) -> str | None:
        key = (request.headers or {}).get(IDEMPOTENCY_HEADER)
        if key is None:
            return None
        limit = self.settings.limits.max_idempotency_key_len
        if not 1 <= len(key) <= limit or not _KEY_RE.fullmatch(key):
            raise refused(IDEMPOTENCY_HEADER, f"must be 1-{limit} characters of A-Z a-z 0-9 _ . : @ / + = -")
        return key

    def _parse(self, route: Route, data: bytes) -> BaseModel:
        limit = self.settings.limits.max_payload_bytes
        if len(data) > limit:
            raise refused("body", f"{len(data)} bytes; the limit is {limit}", limit=limit)
        try:
            return route.request.model_validate_json(data.strip() or b"{}", context={"limits": self.settings.limits})
        except PydanticValidationError as exc:
            raise validation_error(exc) from None
        except (ValueError, RecursionError):
            raise refused("body", "not valid JSON") from None

    def _record(self, route: Route, outcome: object, elapsed_ns: int) -> str:
        """Count the request (micro stats and Prometheus); returns its outcome code."""
        error = outcome if isinstance(outcome, OmsError) else None
        self._tallies[route.name].record(elapsed_ns, error)
        code = error.code if error is not None else "OK"
        subject = self._subjects[route.name]
        self.metrics.child(self.metrics.requests, subject, code).inc()
        self.metrics.child(self.metrics.request_latency, subject).observe(elapsed_ns / 1e9)
        return code

    async def _reply(self, request: Request, outcome: BaseModel | OmsError) -> None:
        headers = None
        if isinstance(outcome, OmsError):
            headers = {ERROR_HEADER: outcome.message[:200], ERROR_CODE_HEADER: str(outcome.status)}
        try:
            await request.respond(envelope(outcome), headers=headers)
        except ValueError:  # micro's answer when the request came without a reply subject: nobody to answer
            return
        except Exception:
            log.warning("reply not sent", extra={"endpoint": request.subject}, exc_info=True)

    # -- chaos endpoints --------------------------------------------------

    async def _chaos_set(self, cmd: c.ChaosSet, call: Call) -> c.ChaosState:
        state = self.chaos.set(cmd)
        self._export_chaos()
        log.warning("fault injection set", extra=state.model_dump())
        return state

    async def _chaos_get(self, cmd: c.ChaosQuery, call: Call) -> c.ChaosState:
        return self.chaos.state()

    async def _chaos_clear(self, cmd: c.ChaosQuery, call: Call) -> c.ChaosState:
        state = self.chaos.clear()
        self._export_chaos()
        log.warning("fault injection cleared")
        return state

    def _export_chaos(self) -> None:
        """`oms_chaos_setting`: every setting, also when zero, so a dashboard sees faults come and go."""
        cfg = self.chaos.config
        for name in ("error_rate", "latency_ms", "latency_jitter_ms", "drop_reply_rate"):
            self.metrics.chaos_active.labels(name).set(getattr(cfg, name))


def _ids_of(outcome: object) -> dict[str, Any]:
    """The order id a result names (a placed order's is known only once it exists)."""
    order_id = getattr(outcome, "order_id", None) if isinstance(outcome, BaseModel) else None
    return {"order_id": order_id} if isinstance(order_id, str) else {}
