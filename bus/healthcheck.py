"""`python -m bus.healthcheck SERVICE`: exit 0 when an instance of SERVICE answers `$SRV.PING.<SERVICE>`.

A container health check: it connects as OMS_NATS_USER (each service's user may ping itself), asks
once, and says why on stderr when it fails (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import nats.errors

from bus.connect import connect
from bus.errors import OmsError
from bus.settings import SERVICES, Settings


async def ping(settings: Settings, service: str, timeout_s: float) -> str | None:
    """None when `service` answers; otherwise what went wrong."""
    try:
        nc = await asyncio.wait_for(connect(settings, f"{service}-healthcheck", persistent=False), timeout_s)
    except OmsError as exc:
        return exc.message
    except TimeoutError:
        return f"cannot reach NATS at {settings.resolved_nats_url()} within {timeout_s:g}s"
    try:
        await nc.request(f"$SRV.PING.{service}", b"", timeout=timeout_s)
    except nats.errors.NoRespondersError:
        return f"no instance of {service} answers $SRV.PING.{service}"
    except nats.errors.TimeoutError:
        return f"$SRV.PING.{service} got no answer within {timeout_s:g}s"
    finally:
        await nc.close()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bus.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each step (default 2)")
    args = parser.parse_args(argv)
    problem = asyncio.run(ping(Settings(), args.service, args.timeout))
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
