"""Who may use the console: a token on any interface but loopback, an operator session for actions, CSRF.

- Bound to loopback, the console needs nothing more to be read (like `oms` on this machine). Bound to any
  other interface it refuses to start without a token, and then every request must carry it: the header
  `Authorization: Bearer <token>`, or the cookie a first visit with `?token=<token>` sets.
- Reads are made as `cli`. Actions (retry, abort, cancel) are made as `admin`, and only in an operator
  session: the operator signs in with the admin user's password, which the console checks by connecting
  to NATS with it; the console itself keeps no admin credentials.
- Every form carries the session's CSRF token, and a POST whose token or Origin does not match is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from bus.client import Client

SESSION_COOKIE = "oms_console"
TOKEN_COOKIE = "oms_console_token"
SESSION_IDLE_S = 8 * 3600
Scope = dict[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    operator: Client | None = None  # the admin connection of a signed-in operator
    user: str | None = None
    seen: float = field(default_factory=time.monotonic)


class Sessions:
    """The browsers' sessions, in memory: a console restart signs everyone out."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def get(self, sid: str | None) -> tuple[str, Session, bool]:
        """The session of cookie `sid`, or a new one; and whether it is new (the cookie must be set)."""
        self._expire()
        if sid and sid in self._by_id:
            session = self._by_id[sid]
            session.seen = time.monotonic()
            return sid, session, False
        sid = secrets.token_urlsafe(24)
        self._by_id[sid] = Session()
        return sid, self._by_id[sid], True

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [k for k, v in self._by_id.items() if now - v.seen > SESSION_IDLE_S]:
            session = self._by_id.pop(sid)
            if session.operator is not None:  # its admin connection goes with it
                asyncio.get_running_loop().create_task(session.operator.nc.close())

    def all(self) -> list[Session]:
        return list(self._by_id.values())


def csrf_ok(session: Session, sent: str | None, origin: str | None, host: str | None) -> bool:
    """The form's token is the session's, and a browser's Origin (when it sends one) is this console."""
    if not sent or not hmac.compare_digest(sent, session.csrf):
        return False
    return origin is None or urlsplit(origin).netloc == host


class TokenGate:
    """ASGI middleware: every request carries the token (header or cookie); `?token=` sets the cookie."""

    def __init__(self, app: App, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self._matches(query.get("token", [""])[0]):
            rest = {k: v for k, v in query.items() if k != "token"}
            location = scope["path"] + (f"?{urlencode(rest, doseq=True)}" if rest else "")
            cookie = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
            await _respond(send, 303, b"", [(b"location", location.encode()), (b"set-cookie", cookie.encode())])
            return
        bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if self._matches(bearer) or self._matches(_cookie(headers.get("cookie", ""), TOKEN_COOKIE)):
            await self.app(scope, receive, send)
            return
        await _respond(send, 401, b"this console needs its token: open it with ?token=... once\n", [])

    def _matches(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.token.encode())


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain"), *headers]}
    )
    await send({"type": "http.response.body", "body": body})
