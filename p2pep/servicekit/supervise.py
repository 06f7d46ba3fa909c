"""Supervised background work: an unexpected error is reported and retried, never lost.

A bare ``asyncio.create_task`` whose coroutine raises dies silently (at best a warning at
garbage collection): a settlement contract worker that did so left its contract unpaid and
the consumer's relay blocked for the rest of a run, with nothing on screen. Every long-lived
task of a service runs under :func:`supervised` instead: each failure is handed to
``on_failure`` (log it with its subject, count it in a metric, show it), then retried after a
capped exponential :class:`Backoff`; after ``attempts`` failures in a row it raises
:class:`GaveUp` so the caller can end its work cleanly. Cancellation is never retried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial_s``, ``initial_s * factor``, ... capped at ``max_s``; with ``jitter``
    each is drawn from its upper half, so many clients of a restarted service don't stampede."""

    initial_s: float = 0.2
    max_s: float = 10.0
    factor: float = 2.0
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1:
            raise ValueError("backoff: need 0 < initial_s <= max_s and factor >= 1")

    def delay(self, attempt: int) -> float:
        """The delay before retry ``attempt`` (0-based): the ``attempt``-th of :meth:`delays`."""
        delay = min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay * random.uniform(0.5, 1.0) if self.jitter else delay
            delay = min(self.max_s, delay * self.factor)


async def within(work: Coroutine[Any, Any, T], timeout_s: float,
                 on_overrun: Callable[[asyncio.Task[T]], None] | None = None) -> asyncio.Task[T] | None:
    """Run ``work`` for at most ``timeout_s`` seconds: its finished task (read its result or
    exception), or None when it overran. An overrun is cancelled and left behind, not awaited:
    a coroutine stuck in its own cancellation (a gRPC call or server stop whose cancellation
    waits on the network) must not hold up its caller, a service's stop above all. Its outcome
    is retrieved when it ends, so asyncio does not log it as never retrieved. ``on_overrun``
    sees the task before it is cancelled (e.g. to log where it waits). Cancelling the caller
    cancels ``work`` too."""
    task = asyncio.create_task(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task
    if on_overrun is not None:
        on_overrun(task)
    task.cancel()
    task.add_done_callback(_retrieve)
    return None


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class GaveUp(Exception):
    """The work failed ``attempts`` times in a row; ``last`` is the last error."""

    def __init__(self, attempts: int, last: Exception) -> None:
        super().__init__(f"gave up after {attempts} failures: {type(last).__name__}: {last}")
        self.attempts = attempts
        self.last = last


async def supervised(
    work: Callable[[], Awaitable[T]],
    *,
    on_failure: Callable[[int, Exception], None],
    backoff: Backoff = Backoff(),
    attempts: int | None = None,
    healthy_after_s: float | None = None,
    progressed: Callable[[], bool] | None = None,
    retry_if: Callable[[Exception], bool] = lambda exc: True,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``work()`` until it returns; retry it on any ``Exception`` (``attempts=None``: forever).

    ``on_failure(n, exc)`` is called for the n-th failure in a row, inside the ``except`` block
    (so ``log.exception`` there carries the traceback). A run that lasted ``healthy_after_s``
    or longer before it failed (a stream that worked for a while), or after which ``progressed()``
    says it got something done, starts the count and the backoff afresh. An error ``retry_if`` says no to (a permanent refusal) is raised at once.
    """
    delays = backoff.delays()
    failures = 0
    while True:
        started = time.monotonic()
        try:
            return await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not retry_if(exc):
                raise
            healthy = healthy_after_s is not None and time.monotonic() - started >= healthy_after_s
            if healthy or (progressed is not None and progressed()):
                failures, delays = 0, backoff.delays()
            failures += 1
            on_failure(failures, exc)
            if attempts is not None and failures >= attempts:
                raise GaveUp(failures, exc) from exc
        await sleep(next(delays))
