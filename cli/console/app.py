"""`oms console`'s web app: Starlette routes, Jinja2 pages (autoescaped) and server-sent events.

Every live element of a page names a `/live/...` feed; the feed sends the element's new HTML, rendered
here like the page itself, whenever it changes, and `static/console.js` (a dozen lines) swaps it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bus import auth
from bus import contract as c
from bus import subjects as s
from bus.client import Client
from bus.connect import connect
from bus.errors import OmsError, Unavailable
from bus.settings import Settings
from cli.console import timeline
from cli.console.data import Reads, Watch
from cli.console.security import SESSION_COOKIE, Session, Sessions, TokenGate, csrf_ok

HERE = Path(__file__).parent
ORDER_EVERY_S = 0.5  # how often a watched order is asked for while it runs
LIST_EVERY_S = 1.0


def money(cents: int | None, currency: str | None = "USD") -> str:
    if cents is None:
        return "—"
    return f"{cents / 100:,.2f} {currency or ''}".strip()


def clock(iso: str | None) -> str:
    return iso[11:23] if iso and len(iso) >= 23 else (iso or "—")


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["money"] = money
    env.filters["clock"] = clock
    env.filters["hms"] = lambda epoch: time.strftime("%H:%M:%S", time.localtime(epoch))
    return env


class Console:
    """The state behind the routes: reads as `cli`, the watch, the browsers' sessions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = environment()
        self.sessions = Sessions()
        self.reads: Reads | None = None
        self.watch: Watch | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        nc = await connect(auth.login(self.settings, "cli"), "oms-console")
        self.reads = Reads(self.settings, nc)
        self.watch = Watch(self.reads)
        self.watch.start()
        try:
            yield
        finally:
            await self.watch.stop()
            for session in self.sessions.all():
                if session.operator is not None:
                    with contextlib.suppress(Exception):
                        await session.operator.nc.close()
            with contextlib.suppress(Exception):
                await nc.close()

    # -- pages ------------------------------------------------------------------

    def render(self, name: str, request: Request, session: Session, status: int = 200, **context: Any) -> Response:
        html = self.env.get_template(name).render(request=request, session=session, **context)
        return HTMLResponse(html, status_code=status)

    def fragment(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    async def orders_page(self, request: Request, session: Session) -> Response:
        query = _list_query(request)
        orders = await self._reads().orders(query)
        older = orders[-1].order_id if len(orders) == query.limit else None
        live = None if query.before else "/live/orders?" + str(request.url.query)
        return self.render("orders.html", request, session, orders=orders, query=query, older=older, live=live)

    async def order_page(self, request: Request, session: Session) -> Response:
        order_id = _order_id(request.path_params["order_id"])
        context = await self._order_context(order_id)
        return self.render("order.html", request, session, key=str(uuid.uuid4()), **context)

    async def _order_context(self, order_id: str) -> dict[str, Any]:
        reads = self._reads()
        order = await reads.order(order_id)
        events = await reads.events(order_id)
        payment = await reads.payment(order_id)
        return {"order": order, "events": events, "payment": payment, "timelines": timeline.layouts(order, events)}

    async def sagas_page(self, request: Request, session: Session) -> Response:
        if session.operator is None:
            return self.render("sagas.html", request, session, sagas=None, query=None, key="")
        try:
            params = request.query_params
            raw: dict[str, Any] = {"status": params.get("status") or None, "stuck": params.get("stuck") == "true"}
            if params.get("limit"):
                raw["limit"] = _whole(params["limit"], "limit")
            query = c.SagaQuery.model_validate({k: v for k, v in raw.items() if v is not None})
        except ValidationError as exc:
            raise BadInput(_problem(exc)) from None
        sagas = (await session.operator.call(s.SAGA_LIST, query, c.SagaList)).sagas
        return self.render("sagas.html", request, session, sagas=sagas, query=query, key=str(uuid.uuid4()))

    async def stock_page(self, request: Request, session: Session) -> Response:
        return self.render("stock.html", request, session, products=await self._reads().stock())

    async def services_page(self, request: Request, session: Session) -> Response:
        return self.render("services.html", request, session, **await self._services_context())

    async def _services_context(self) -> dict[str, Any]:
        reads, watch = self._reads(), self.watch
        assert watch is not None
        return {
            "services": await reads.services(watch.latest),
            "stream": await reads.stream(),
            "transitions": list(watch.transitions)[:30],
            "samples": list(watch.samples),
        }

    # -- live feeds --------------------------------------------------------------

    def live(self, request: Request, render: Callable[[], Awaitable[str]], every_s: float) -> Response:
        """A feed of `render()`'s HTML: sent at once, then whenever it changes (`?once=1`: once, then done)."""
        once = request.query_params.get("once") == "1"

        async def feed() -> AsyncIterator[dict[str, str]]:
            last = None
            while True:
                try:
                    html = await render()
                except OmsError as exc:
                    html = self.fragment("_problem.html", problem=exc.message)
                if html != last:
                    last = html
                    yield {"data": html}
                if once:
                    return
                await asyncio.sleep(every_s)

        return EventSourceResponse(feed(), ping=15)

    async def live_orders(self, request: Request, session: Session) -> Response:
        query = _list_query(request)

        async def render() -> str:
            return self.fragment("_orders_table.html", orders=await self._reads().orders(query))

        return self.live(request, render, LIST_EVERY_S)

    async def live_order(self, request: Request, session: Session) -> Response:
        order_id = _order_id(request.path_params["order_id"])

        async def render() -> str:
            return self.fragment("_order_live.html", **await self._order_context(order_id))

        return self.live(request, render, ORDER_EVERY_S)

    async def live_stock(self, request: Request, session: Session) -> Response:
        async def render() -> str:
            return self.fragment("_stock_table.html", products=await self._reads().stock())

        return self.live(request, render, LIST_EVERY_S)

    async def live_services(self, request: Request, session: Session) -> Response:
        async def render() -> str:
            return self.fragment("_services.html", **await self._services_context())

        return self.live(request, render, LIST_EVERY_S)

    # -- the operator -----------------------------------------------------------

    async def sign_in(self, request: Request, session: Session) -> Response:
        form = await request.form()
        user = str(form.get("user") or "admin")[:64]
        password = str(form.get("password") or "")
        as_user = self.settings.model_copy(update={"nats_user": user, "nats_password": password})
        try:
            nc = await asyncio.wait_for(connect(as_user, "oms-console-operator", persistent=False), 5)
        except (Unavailable, TimeoutError):
            return self.render(
                "signin.html", request, session, status=403, problem="NATS refused that user or password"
            )
        operator = Client(nc, timeout_s=10)
        try:  # an operator may list sagas; anyone else is refused by the server
            await operator.call(s.SAGA_LIST, c.SagaQuery(limit=1), c.SagaList, timeout_s=2)
        except OmsError:
            await nc.close()
            return self.render("signin.html", request, session, status=403, problem=f"{user} is not an operator")
        if session.operator is not None:
            await session.operator.nc.close()
        session.operator, session.user = operator, user
        return RedirectResponse(str(form.get("next") or "/sagas"), status_code=303)

    async def sign_out(self, request: Request, session: Session) -> Response:
        if session.operator is not None:
            with contextlib.suppress(Exception):
                await session.operator.nc.close()
        session.operator = session.user = None
        return RedirectResponse("/orders", status_code=303)

    async def act(self, request: Request, session: Session) -> Response:
        """retry or abort a saga, cancel an order: as the signed-in operator, with the form's key."""
        if session.operator is None:
            return self.render("signin.html", request, session, status=403, problem="actions need an operator: sign in")
        form = await request.form()
        key = str(form.get("key") or uuid.uuid4())[:100]
        reason = str(form.get("reason") or "").strip()[:200] or None
        action, target = request.path_params["action"], request.path_params["target"]
        try:
            if action == "cancel":
                cmd: Any = c.CancelOrder.model_validate(
                    {"order_id": target, "reason": reason or "cancelled in the console"}
                )
                await session.operator.call(s.ORDERS_CANCEL, cmd, idempotency_key=key)
                back = f"/orders/{target}"
            elif action in ("retry", "abort"):
                route = s.SAGA_RETRY if action == "retry" else s.SAGA_ABORT
                body = {"saga_id": target} | ({"reason": reason} if action == "abort" and reason else {})
                await session.operator.call(route, route.request.model_validate(body), idempotency_key=key)
                back = str(form.get("next") or "/sagas")
            else:
                raise BadInput(f"no action {action!r}: retry, abort or cancel")
        except ValidationError as exc:
            raise BadInput(_problem(exc)) from None
        return RedirectResponse(back if back.startswith("/") else "/sagas", status_code=303)

    def _reads(self) -> Reads:
        assert self.reads is not None, "the console is not started"
        return self.reads


class BadInput(Exception):
    """A query parameter or form field the contract refuses; the page says which."""


def _problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}"


def _list_query(request: Request) -> c.ListOrders:
    params = request.query_params
    if params.get("status") and params["status"] not in c.OrderStatus.__members__:
        raise BadInput(f"status: one of {', '.join(c.OrderStatus.__members__)}, not {params['status'][:40]!r}")
    raw = {"status": params.get("status"), "customer_id": params.get("customer"), "before": params.get("before")}
    raw = {k: v for k, v in raw.items() if v}
    if params.get("limit"):
        raw["limit"] = _whole(params["limit"], "limit")
    try:
        return c.ListOrders.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(_problem(exc)) from None


def _whole(text: str, name: str) -> int:
    """A query parameter that must be a whole number (the contract's models are strict: no strings)."""
    if not text.isdigit() or len(text) > 9:
        raise BadInput(f"{name}: a whole number, not {text[:20]!r}")
    return int(text)


def _order_id(text: str) -> str:
    try:
        return c.GetOrder(order_id=text).order_id
    except ValidationError as exc:
        raise BadInput(_problem(exc)) from None


def create_app(settings: Settings, *, token: str | None = None) -> Any:
    """The console over the stack `settings` name; with `token`, every request must carry it."""
    console = Console(settings)

    def page(handler: Callable[[Request, Session], Awaitable[Response]], *, form: bool = False):
        async def endpoint(request: Request) -> Response:
            sid, session, new = console.sessions.get(request.cookies.get(SESSION_COOKIE))
            try:
                if form:
                    sent = (await request.form()).get("csrf")
                    if not csrf_ok(
                        session, str(sent) if sent else None, request.headers.get("origin"), request.headers.get("host")
                    ):
                        response = console.render(
                            "error.html",
                            request,
                            session,
                            status=403,
                            problem="the form is stale or not this console's (CSRF): reload it",
                        )
                        return _with_session(response, sid, new)
                response = await handler(request, session)
            except BadInput as exc:
                response = console.render("error.html", request, session, status=400, problem=str(exc))
            except OmsError as exc:
                status = 404 if exc.code == "NOT_FOUND" else 503 if exc.retryable else 422
                response = console.render("error.html", request, session, status=status, problem=exc.message)
            return _with_session(response, sid, new)

        return endpoint

    routes = [
        Route("/", lambda request: RedirectResponse("/orders")),
        Route("/orders", page(console.orders_page)),
        Route("/orders/{order_id}", page(console.order_page)),
        Route("/sagas", page(console.sagas_page)),
        Route("/stock", page(console.stock_page)),
        Route("/services", page(console.services_page)),
        Route("/live/orders", page(console.live_orders)),
        Route("/live/orders/{order_id}", page(console.live_order)),
        Route("/live/stock", page(console.live_stock)),
        Route("/live/services", page(console.live_services)),
        Route("/signin", page(console.sign_in, form=True), methods=["POST"]),
        Route("/signout", page(console.sign_out, form=True), methods=["POST"]),
        Route("/act/{action}/{target}", page(console.act, form=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=console.lifespan)
    app.state.console = console
    return TokenGate(app, token) if token else app


def _with_session(response: Response, sid: str, new: bool) -> Response:
    if new:
        response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict", path="/")
    response.headers.setdefault("content-security-policy", "default-src 'self'; style-src 'self'; img-src 'self' data:")
    response.headers.setdefault("x-frame-options", "DENY")
    return response
