"""Running a service's main coroutine under signal handling."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

from p2pep.sqlitedb import SchemaVersionError

log = structlog.get_logger(__name__)

MainFactory = Callable[[asyncio.Event], Awaitable[None]]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_signal_handlers(stop: asyncio.Event) -> Callable[[], None]:
    """Make SIGTERM and SIGINT set ``stop`` on the running loop; returns an uninstaller.

    A second signal while stopping is logged and ignored: the stop is already under way
    and bounded by the servers' grace period.
    """
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("signal received while stopping", signal=sig.name)
        else:
            log.info("signal received, stopping", signal=sig.name)
        stop.set()

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)

    def uninstall() -> None:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)

    return uninstall


def run_service(main: MainFactory) -> int:
    """Run ``main(stop)`` until it returns; SIGTERM/SIGINT set ``stop``.

    ``main`` starts its servers, awaits ``stop`` and shuts down gracefully (usually via
    :meth:`ServiceHost.wait_and_stop`). Returns a process exit code: 0 after a clean
    stop, 1 if ``main`` raised (a store of a newer schema version: one error line, no traceback).
    """

    async def runner() -> None:
        stop = asyncio.Event()
        uninstall = install_signal_handlers(stop)
        try:
            await main(stop)
        finally:
            uninstall()

    try:
        asyncio.run(runner())
    except SchemaVersionError as exc:  # the operator's mistake, not the program's: one line, no traceback
        log.error("cannot open the store", error=str(exc))
        return 1
    except Exception:
        log.exception("service failed")
        return 1
    return 0
