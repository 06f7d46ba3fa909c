"""The meter's background tasks, by name, and what their failure means.

A task is kept under its name until it ends; one that ends with an error is logged, and
if it is essential (startup, ticks, sender, contract poll: the meter cannot do its job
without it) :attr:`MeterTasks.failed` is set with the error in :attr:`MeterTasks.fatal`,
so the process exits instead of running on half-working. Once :meth:`MeterTasks.stopping`
is called errors are expected (the meter is taking itself apart) and no longer reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

import structlog

from services.meter.lightning import Stopping

log = structlog.get_logger("meter")

ESSENTIAL_TASKS = frozenset({"startup", "ticks", "sender", "contract-poll"})


class MeterTasks:
    def __init__(self, essential: Iterable[str] = ESSENTIAL_TASKS) -> None:
        self._essential = frozenset(essential)
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._stopping = False
        self.fatal: BaseException | None = None
        self.failed = asyncio.Event()
        """Set when an essential task failed (e.g. settlement refused the registration)."""

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"meter:{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._done(name, t))
        return task

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def _done(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, Stopping):
            log.error("meter task failed", task=name, error=repr(exc), exc_info=exc)
            if name in self._essential:
                self.fatal = exc
                self.failed.set()

    def stopping(self) -> None:
        self._stopping = True

    async def cancel(self, *names: str) -> None:
        """Cancel the named tasks, in order, each waited for before the next."""
        for name in names:
            task = self._tasks.get(name)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def cancel_all(self) -> None:
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
