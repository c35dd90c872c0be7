"""Structured logs: JSON lines with the service and whatever ids the record carries."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from bus.ids import now_iso

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


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
        return json.dumps(line, default=str)


class Readable(JsonLines):
    """For a terminal: time, level, event, then key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        line = json.loads(super().format(record))
        head = f"{line.pop('ts')[11:23]} {line.pop('level'):<7} {line.pop('service')}: {line.pop('event')}"
        exc = line.pop("exc", None)
        tail = " ".join(f"{k}={v}" for k, v in line.items())
        return f"{head} {tail}".rstrip() + (f"\n{exc}" if exc else "")


def setup(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Readable(service) if sys.stderr.isatty() else JsonLines(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
