"""Waiting on state with deadlines (never bare sleeps), as pyln-testing's ``wait_for``."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


def timeout_scale() -> float:
    """``P2PEP_TIMEOUT_SCALE`` stretches every deadline on slow shared machines."""
    try:
        return max(0.1, float(os.environ.get("P2PEP_TIMEOUT_SCALE", "1")))
    except ValueError:
        return 1.0


@overload
async def wait_for(predicate: Callable[[], Awaitable[T]], timeout: float = ..., interval: float = ...,
                   what: str | None = ...) -> T: ...
@overload
async def wait_for(predicate: Callable[[], T], timeout: float = ..., interval: float = ...,
                   what: str | None = ...) -> T: ...
async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value.

    Exceptions from the predicate count as "not yet" and are reported if the
    (scaled) deadline passes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * timeout_scale()
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported below
            last_exc = exc
        if loop.time() >= deadline:
            desc = what or getattr(predicate, "__name__", "condition")
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout * timeout_scale():.1f}s waiting for {desc}{extra}")
        await asyncio.sleep(interval)
