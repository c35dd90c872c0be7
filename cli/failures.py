"""How the CLI fails: every error becomes one message and one exit code, here and nowhere else.

0  OK           the command did what was asked
1  FAILED       a business outcome: the order ended FAILED, or OUT_OF_STOCK, PAYMENT_DECLINED,
                NOT_FOUND, CONFLICT
2  USAGE        bad flags or values (also a VALIDATION_ERROR from a service: the input was wrong),
                or a command refused in the present state (`oms recover` of a running service)
3  UNAVAILABLE  the system could not answer: no NATS, no responders, timeout, UNAVAILABLE,
                INTERNAL, a stack that would not start, or a rebuild by replay that failed

`oms audit` exits 1 when it finds violations; `oms status` and `oms metrics` exit 3 when nothing answers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

import typer
from rich.console import Console
from rich.markup import escape

from bus.contract import OrderStatus
from bus.errors import (
    BusinessError,
    InternalError,
    InvalidRequest,
    NoResponders,
    OmsError,
    RequestTimeout,
    TransientError,
)
from bus.replay import ReplayError
from bus.settings import Settings
from cli.stack import PACKAGES, StackError


class Refused(Exception):
    """The command cannot run in the present state; the message says what to do first (exit 2)."""


# What `reported` turns into a message and an exit code; anything else is a bug and shows its traceback.
Reportable = (OmsError, StackError, Refused, ReplayError)


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    UNAVAILABLE = 3


def exit_code(exc: BaseException) -> ExitCode:
    match exc:
        case InvalidRequest() | Refused():
            return ExitCode.USAGE
        case BusinessError():
            return ExitCode.FAILED
        case TransientError() | InternalError() | StackError() | ReplayError():
            return ExitCode.UNAVAILABLE
        case _:
            return ExitCode.UNAVAILABLE


def order_outcome(status: OrderStatus) -> ExitCode:
    """Exit code of `order place`: 1 when the order failed or is on its way to failing."""
    if status in (OrderStatus.FAILED, OrderStatus.COMPENSATING, OrderStatus.CANCELLED):
        return ExitCode.FAILED
    return ExitCode.OK


def explain(exc: OmsError | StackError | Refused | ReplayError, settings: Settings | None = None) -> str:
    """What went wrong, and what to do about it when there is something to do."""
    if isinstance(exc, StackError | Refused):
        return str(exc)
    if isinstance(exc, ReplayError):
        return f"rebuild failed, the database was left as it was: {exc}"
    subject = str(exc.details.get("subject", ""))
    service = subject.split(".", 1)[0]
    match exc:
        case NoResponders():
            if settings is not None and settings.nats_url and service in PACKAGES:
                return f"{exc.message}: start it with `oms up` (or `python -m {PACKAGES[service]}`)"
            return f"{exc.message}: start it with `oms up`"
        case RequestTimeout():
            key = exc.details.get("idempotency_key")
            if key:
                return (
                    f"{exc.message}; the request may still take effect. "
                    f"Repeat it with --key {key} to get its outcome without doing it twice"
                )
            return f"{exc.message}: is the service overloaded or stuck? see `oms status`"
        case InternalError():
            return f"INTERNAL: {exc.message}" + (f" (logs: {_logs(settings)})" if settings else "")
        case TransientError() if "url" in exc.details:
            return exc.message  # could not connect; the message already says what to do
        case TransientError():
            return f"{exc.code}: {exc.message} (temporary: try again, or see `oms status`)"
        case InvalidRequest():
            return exc.message
        case _:
            return f"{exc.code}: {exc.message}"


def _logs(settings: Settings | None) -> str:
    return str(settings.home / "logs") if settings else "OMS_HOME/logs"


@contextmanager
def reported(settings: Settings | None = None, *, as_json: bool = False) -> Iterator[None]:
    """Turn an OMS, stack, refusal or replay error into its message on stderr (and JSON on stdout) and its
    exit code."""
    try:
        yield
    except Reportable as exc:
        if as_json and isinstance(exc, OmsError):
            sys.stdout.write(json.dumps({"error": exc.to_wire()}, indent=2) + "\n")
        elif as_json and isinstance(exc, Refused | ReplayError):
            code = "REFUSED" if isinstance(exc, Refused) else "REPLAY_FAILED"
            sys.stdout.write(json.dumps({"error": {"code": code, "message": str(exc)}}, indent=2) + "\n")
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(explain(exc, settings))}")
        raise typer.Exit(exit_code(exc)) from None
