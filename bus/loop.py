"""The event loop every OMS process runs on: uvloop when it is installed, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop  # optional speed-up (`pip install 'oms[speed]'`)
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
