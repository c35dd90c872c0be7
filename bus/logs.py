"""Structured logs: JSON lines with the service and whatever ids the record or its request carries.

The ids of the request being served (endpoint, order id, saga id, idempotency key) live in a context
variable that the service runner binds per request (`bind`); `RequestContext` copies them onto every
record, so a line logged deep inside a handler carries them without passing them down. Each request
runs in a task of its own, so a binding never leaks into another request.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from pydantic_core import to_json

from bus import jsonb
from bus.ids import now_iso

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_EMPTY: MappingProxyType[str, Any] = MappingProxyType({})
_context: ContextVar[MappingProxyType[str, Any]] = ContextVar("oms_log_context", default=_EMPTY)


def bind(**fields: Any) -> None:
    """Add `fields` (None values are skipped) to the log context of the current task."""
    fresh = {k: v for k, v in fields.items() if v is not None}
    if fresh:
        # A new mapping each time: tasks started from here keep the context as it was then.
        _context.set(MappingProxyType({**_context.get(), **fresh}))


def context() -> dict[str, Any]:
    """The fields bound in the current task."""
    return dict(_context.get())


class RequestContext(logging.Filter):
    """Copies the bound fields onto each record; what the log call passed in `extra` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if key not in record.__dict__:
                record.__dict__[key] = value
        return True


class JsonLines(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": now_iso(),
            "level": record.levelname.lower(),
            "service": self.service,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return to_json(line, fallback=str).decode()


class Readable(JsonLines):
    """For a terminal: time, level, event, then key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        line = jsonb.loads(super().format(record))
        head = f"{line.pop('ts')[11:23]} {line.pop('level'):<7} {line.pop('service')}: {line.pop('event')}"
        exc = line.pop("exc", None)
        tail = " ".join(f"{k}={v}" for k, v in line.items())
        return f"{head} {tail}".rstrip() + (f"\n{exc}" if exc else "")


def handler(service: str, stream: Any = None, *, readable: bool | None = None) -> logging.Handler:
    """A handler writing `service`'s records with their request context: JSON lines, or readable lines
    on a terminal."""
    stream = stream or sys.stderr
    out = logging.StreamHandler(stream)
    if readable is None:
        readable = bool(getattr(stream, "isatty", lambda: False)())
    out.setFormatter(Readable(service) if readable else JsonLines(service))
    out.addFilter(RequestContext())
    return out


def setup(service: str, level: str = "INFO") -> None:
    # The lines carry neither the caller's file and line nor thread or process names: do not collect
    # them for every record (the logging HOWTO's "Optimization"; 33 -> 27 us a line here).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler(service)]
    root.setLevel(level)
    logging.getLogger("nats").setLevel(logging.WARNING)
