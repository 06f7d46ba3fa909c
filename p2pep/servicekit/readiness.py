"""Readiness that means ready: what a service still waits for, by name.

A service is *ready* when every condition it declared is met: its startup work is done
(a store opened and migrated, a meter registered and its baseline reading taken) and the
dependencies it calls answer (settlement, the matcher, its lnd, btcd). *Alive* is less:
the process runs and its event loop turns (it answers the health check at all).

Conditions are met in one of three ways, all declared before the host starts:

* :meth:`Readiness.require` + :meth:`Readiness.mark`: the service says so itself;
* :meth:`Readiness.after`: met once an :class:`asyncio.Event` is set (startup work done);
  once met it stays met;
* :meth:`Readiness.watch`: a check run every ``interval_s`` (at most ``timeout_s`` each);
  met while it returns, unmet while it raises (or times out), so a dependency that goes
  away turns the service NOT_SERVING and its return turns it SERVING again.

A dependency counts as reachable when it *answers* (:func:`grpc_peer_check`: any health
status, SERVING or not), never only when it is itself ready: readiness does not cascade, or
one lost lnd would make every service in the chain NOT_SERVING at once.

A check never holds the service up: one that overruns ``timeout_s`` is cancelled and left
to end on its own (it is not awaited: a gRPC call whose cancellation waits on the network
must not stall the watch loop, nor :meth:`Readiness.stop` and with it the service's graceful
stop, as seen once in CI); gRPC checks also carry the timeout as their deadline, so the call
ends in gRPC itself.

Every change is logged once (``service ready`` / ``service not ready`` with the unmet
conditions and why) and handed to the listeners (:class:`~p2pep.servicekit.host.ServiceHost`
turns it into gRPC health and ``/healthz``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from p2pep.servicekit.supervise import within

log = structlog.get_logger(__name__)

Check = Callable[[], Coroutine[Any, Any, object]]  # an async function
"""An async check: returning (anything) means met; raising means unmet, the error says why."""


class NotMet(Exception):
    """A check's plain "no", with the reason (e.g. ``no active channel with the hub``)."""


@dataclass(frozen=True)
class _Watch:
    condition: str
    check: Check


class Readiness:
    """Named conditions, all of which must hold for the service to be ready."""

    def __init__(self, service: str = "", *, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("readiness: interval_s and timeout_s must be > 0")
        self.service = service
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._unmet: dict[str, str] = {}
        self._known: set[str] = set()
        self._watches: list[_Watch] = []
        self._events: list[tuple[str, asyncio.Event]] = []
        self._listeners: list[Callable[[bool], None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- declaring -------------------------------------------------------------------------

    def require(self, condition: str, why: str = "not yet") -> None:
        """Declare ``condition``, unmet until :meth:`mark` says otherwise."""
        self._declare(condition)
        self._unmet[condition] = why

    def after(self, condition: str, event: asyncio.Event) -> None:
        """``condition`` is met once ``event`` is set (and stays met)."""
        self.require(condition, "startup not done")
        self._events.append((condition, event))

    def watch_peer(self, condition: str, channel: grpc.aio.Channel) -> None:
        """:meth:`watch` the P2PEP service behind ``channel`` (:func:`grpc_peer_check`, with
        ``timeout_s`` as the call's deadline)."""
        self.watch(condition, grpc_peer_check(channel, self.timeout_s))

    def watch(self, condition: str, check: Check) -> None:
        """``condition`` holds while ``check()`` returns within ``timeout_s`` (checked every
        ``interval_s`` once :meth:`start` ran); unmet until the first check passes."""
        self.require(condition, "not checked yet")
        self._watches.append(_Watch(condition, check))

    def _declare(self, condition: str) -> None:
        if not condition or condition in self._known:
            raise ValueError(f"readiness condition {condition!r} is empty or declared twice")
        self._known.add(condition)

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(ready)`` after every change of :attr:`ready`."""
        self._listeners.append(listener)

    # -- state -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self._unmet

    @property
    def unmet(self) -> dict[str, str]:
        """Condition -> why it is not met (empty when ready)."""
        return dict(self._unmet)

    @property
    def conditions(self) -> frozenset[str]:
        return frozenset(self._known)

    def mark(self, condition: str, met: bool, why: str = "") -> None:
        """Set ``condition`` (``why``: the reason it is not met). Logs when a condition flips
        (not when only its reason changes) and notifies the listeners when :attr:`ready` flips."""
        if condition not in self._known:
            raise KeyError(f"readiness condition {condition!r} was never declared")
        was_ready, was_met = self.ready, condition not in self._unmet
        if met:
            self._unmet.pop(condition, None)
        else:
            self._unmet[condition] = why or "not met"
        if met == was_met:
            return
        if self.ready:
            log.info("service ready", service=self.service, met=condition)
        elif was_ready:
            log.warning("service not ready", service=self.service, unmet=self.unmet)
        else:
            log.info("service waiting" if not met else "readiness condition met", service=self.service,
                     condition=condition, unmet=self.unmet)
        if self.ready != was_ready:
            for listener in list(self._listeners):
                listener(self.ready)

    # -- running the checks ------------------------------------------------------------------

    def start(self) -> None:
        """Start the watches and event waits on the running loop (the host does, at start)."""
        if self._tasks:
            raise RuntimeError("readiness already started")
        for w in self._watches:
            self._tasks.append(asyncio.create_task(self._watch(w), name=f"readiness:{w.condition}"))
        for condition, event in self._events:
            self._tasks.append(asyncio.create_task(self._after(condition, event), name=f"readiness:{condition}"))

    async def stop(self) -> None:
        """Cancel the watches; waits at most ``timeout_s`` for them to end (a check stuck in
        its cancellation is left behind, logged, rather than holding up the stop)."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.timeout_s)
        if pending:
            log.warning("readiness checks still ending after stop", service=self.service,
                        tasks=sorted(t.get_name() for t in pending))

    async def check_once(self, condition: str) -> bool:
        """Run ``condition``'s check now and mark the result; returns whether it is met.
        A check that overruns ``timeout_s`` is cancelled and not awaited (see the module)."""
        w = next(w for w in self._watches if w.condition == condition)
        check = await within(w.check(), self.timeout_s)
        if check is None:
            self.mark(w.condition, False, f"no answer within {self.timeout_s:g}s")
            return False
        e = asyncio.CancelledError("the check was cancelled") if check.cancelled() else check.exception()
        if e is not None:  # any failure of a check means "not met", and why
            self.mark(w.condition, False, _why(e))
            return False
        self.mark(w.condition, True)
        return True

    async def _watch(self, w: _Watch) -> None:
        while True:
            await self.check_once(w.condition)
            await asyncio.sleep(self.interval_s)

    async def _after(self, condition: str, event: asyncio.Event) -> None:
        await event.wait()
        self.mark(condition, True)


def _why(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    text = str(e) or type(e).__name__
    return text if isinstance(e, NotMet) else f"{type(e).__name__}: {text}"


def grpc_peer_check(channel: grpc.aio.Channel, timeout_s: float) -> Check:
    """A check that the P2PEP service behind ``channel`` answers (``grpc.health.v1`` Check on
    ``""``, deadline ``timeout_s``; any status counts: it is reached, whether or not it is
    ready itself)."""
    stub = health_pb2_grpc.HealthStub(channel)

    async def check() -> None:
        await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)

    return check
