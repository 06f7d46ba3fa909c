"""One service's servers: a grpc.aio server with health checking, the HTTP side, and a
plaintext port that serves only ``grpc.health.v1`` (for the kubelet's gRPC probes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from p2pep.identity import Identity
from p2pep.servicekit.auth import AuthInterceptor
from p2pep.servicekit.errors import RefusalInterceptor
from p2pep.servicekit.grpc_metrics import GrpcMetricsInterceptor
from p2pep.servicekit.http import build_http_app
from p2pep.servicekit.limits import server_options
from p2pep.servicekit.readiness import Readiness
from p2pep.servicekit.settings import BaseServiceSettings
from p2pep.servicekit.supervise import within
from p2pep.servicekit.tls import service_tls

log = structlog.get_logger(__name__)

ShutdownHook = Callable[[], Awaitable[None]]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

_STOP_SLACK_S = 5.0
"""How long past its grace a gRPC server's stop may take before the host goes on without it."""

LIVENESS = "liveness"
"""The health service name that is SERVING while the process is alive (its event loop answers),
whether or not it is ready: the liveness and startup probes ask for it; readiness is ``""``."""


class ServiceHost:
    """Builds, starts and stops the servers of one service.

    Lifecycle: construct -> register servicers on :attr:`grpc_server` (and routes on
    :attr:`http_app`) -> :meth:`start` -> ... -> :meth:`stop`.

    Stopping goes in this order, so load balancers and clients see it coming:
    health NOT_SERVING (gRPC and ``/healthz``), stopping hooks (e.g. end server streams
    so they do not hold the server for the whole grace period), ``grpc_server.stop(grace)``
    (in-flight calls finish, what is left is cancelled after ``grace``), shutdown hooks
    (in reverse order of registration, e.g. closing a database), then the HTTP server.

    The gRPC port is mutual TLS only, as ``identity`` (default ``service/<name>``) with the
    material in ``settings.tls_dir`` (:class:`~p2pep.servicekit.tls.Tls`; no folder, no
    service), and every call passes :class:`~p2pep.servicekit.auth.AuthInterceptor` first
    (``grpc_plaintext_loopback``, the TLS benchmark's mode, is the one exception to TLS:
    :mod:`p2pep.servicekit.tls`).

    Health means ready: ``""`` and the names given to :meth:`start` are SERVING only while every
    condition of :attr:`readiness` holds (declared by the service before :meth:`start`: startup
    work, dependencies it must reach; :mod:`p2pep.servicekit.readiness`), NOT_SERVING before
    and whenever one is lost. :data:`LIVENESS` is SERVING from start to stop. The same states
    are on the mutual-TLS port, on ``/healthz`` (ready) and ``/livez`` (alive), and, when
    ``settings.health_port`` >= 0, on a plaintext port that serves nothing but
    ``grpc.health.v1`` (the kubelet's gRPC probe cannot present a client certificate).
    """

    def __init__(
        self,
        settings: BaseServiceSettings,
        name: str,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        grpc_options: Sequence[tuple[str, Any]] = (),
        identity: Identity | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.identity = identity or Identity("service", name)
        self.tls = service_tls(settings, self.identity)
        # every call is counted, outermost (p2pep.servicekit.grpc_metrics: it sees the codes the
        # others answer with), then authorized (p2pep.servicekit.auth, p2pep.access), and every
        # server answers a Refused with its status (p2pep.servicekit.errors)
        self.grpc_server: grpc.aio.Server = grpc.aio.server(
            interceptors=[GrpcMetricsInterceptor(),
                          AuthInterceptor(self.tls.revocations, claims=self.tls.dir if self.tls.plaintext_loopback else None),
                          RefusalInterceptor(),
                          *interceptors],
            options=[*server_options(settings.grpc_max_request_bytes, settings.grpc_max_response_bytes),
                     *grpc_options],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        # the probes' port: the same health states, nothing else, no interceptor (nothing to authorize)
        self.health_server: grpc.aio.Server | None = None
        if settings.health_port >= 0:
            self.health_server = grpc.aio.server(options=server_options(4096, 4096))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        self.readiness = Readiness(name, interval_s=settings.readiness_interval_s,
                                   timeout_s=settings.readiness_timeout_s)
        self.readiness.subscribe(self._readiness_changed)
        self.http_app: web.Application = build_http_app(lambda: self._serving, self._waiting_for,
                                                        lambda: self._started and not self._stopped.is_set())
        self._publishing: set[asyncio.Task[None]] = set()
        self._publish_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._hooks: list[ShutdownHook] = []
        self._stopping_hooks: list[ShutdownHook] = []
        self._serving = False
        self._started = False
        self._stopped = asyncio.Event()
        self._health_names: list[str] = [""]
        self.grpc_port: int = 0
        self.http_port: int = 0
        self.health_port: int = -1
        """The plaintext health port once started (-1: none, ``settings.health_port`` < 0)."""

    @property
    def grpc_target(self) -> str:
        """``host:port`` a client can dial once started."""
        return f"{self.settings.grpc_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.http_port}"

    @property
    def health_target(self) -> str:
        """``host:port`` of the plaintext health port once started."""
        return f"{self.settings.grpc_host}:{self.health_port}"

    @property
    def serving(self) -> bool:
        """Started, not stopping, and ready."""
        return self._serving

    def _waiting_for(self) -> list[str]:
        if not self._started:
            return ["start"]
        if self._stopped.is_set():
            return ["stopping"]
        return sorted(self.readiness.unmet)

    def add_shutdown_hook(self, hook: ShutdownHook) -> None:
        """Run ``await hook()`` while stopping, after the gRPC server has drained."""
        self._hooks.append(hook)

    def add_stopping_hook(self, hook: ShutdownHook) -> None:
        """Run ``await hook()`` when stopping begins, before the gRPC server drains."""
        self._stopping_hooks.append(hook)

    async def start(self, serving: Iterable[str] = ()) -> None:
        """Bind the servers (port 0 = a free port; see :attr:`grpc_port`, :attr:`http_port`,
        :attr:`health_port`), start the readiness checks, and publish health: ``""`` and every
        name in ``serving`` NOT_SERVING until :attr:`readiness` holds, :data:`LIVENESS` SERVING."""
        if self._started:
            raise RuntimeError("service host already started")
        self._started = True
        s = self.settings
        self._health_names = ["", *serving]
        for name in self._health_names:  # the health servicer starts with "" SERVING: not before it is ready
            await self.health.set(name, NOT_SERVING)
        await self.health.set(LIVENESS, SERVING)
        if self.health_server is not None:
            self.health_port = self.health_server.add_insecure_port(f"{s.grpc_host}:{s.health_port}")
            if self.health_port == 0:
                raise OSError(f"could not bind the health port to {s.grpc_host}:{s.health_port}")
            await self.health_server.start()
        self.grpc_port = self.grpc_server.add_secure_port(f"{s.grpc_host}:{s.grpc_port}",
                                                          self.tls.server_credentials())
        if self.grpc_port == 0:
            raise OSError(f"could not bind gRPC to {s.grpc_host}:{s.grpc_port}")
        if self.tls.plaintext_loopback:
            log.warning("plaintext loopback gRPC: measuring mode, any local process can claim any identity",
                        name=self.name, grpc=self.grpc_target)
        await self.grpc_server.start()
        self._runner = web.AppRunner(self.http_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.http_host, s.metrics_port)
        await site.start()
        self.http_port = int(self._runner.addresses[0][1])
        await self._publish()
        self.readiness.start()
        log.info("service started", name=self.name, grpc=self.grpc_target, http=self.http_url,
                 health_port=self.health_port, ready=self.readiness.ready,
                 waiting_for=sorted(self.readiness.unmet))

    def _readiness_changed(self, ready: bool) -> None:
        if not self._started or self._stopped.is_set():
            return
        task = asyncio.get_running_loop().create_task(self._publish())
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self) -> None:
        """Health from the current readiness, one publish at a time, each reading it afresh
        (so the last one wins, whatever the order the flips came in)."""
        async with self._publish_lock:
            serving = self._started and not self._stopped.is_set() and self.readiness.ready
            self._serving = serving
            for name in self._health_names:
                await self.health.set(name, SERVING if serving else NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop; idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("service stopping", name=self.name, grace_s=grace)
        self._serving = False
        await self.health.enter_graceful_shutdown()
        await self.readiness.stop()
        await self._run_hooks(self._stopping_hooks)
        if self._started:
            await self._bounded("grpc server stop", self.grpc_server.stop(grace), grace + _STOP_SLACK_S)
        if self._started and self.health_server is not None:  # probes see NOT_SERVING while it drains
            await self._bounded("health server stop", self.health_server.stop(0), _STOP_SLACK_S)
        await self._run_hooks(reversed(self._hooks))
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("service stopped", name=self.name)

    async def _bounded(self, step: str, work: Coroutine[Any, Any, None], timeout: float) -> None:
        """Run one of gRPC's own stop steps for at most ``timeout`` seconds: the graceful stop
        must end within the pod's termination grace period, so a step that overruns is logged
        with where it waits and left behind (:func:`within`) while the stop goes on."""

        def overran(task: asyncio.Task[None]) -> None:
            frames = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(task.get_stack(limit=8)))
            log.error("shutdown step overran, going on without it", name=self.name, step=step,
                      timeout_s=timeout, waiting_in=frames)

        task = await within(work, timeout, overran)
        if task is not None:
            task.result()

    async def _run_hooks(self, hooks: Iterable[ShutdownHook]) -> None:
        for hook in list(hooks):
            try:
                await hook()
            except Exception:  # a failing hook must not keep the others from running
                log.exception("shutdown hook failed", name=self.name, hook=repr(hook))

    async def wait_and_stop(self, stop: asyncio.Event, grace: float | None = None) -> None:
        """Wait until ``stop`` is set (e.g. by :func:`run_service` on SIGTERM), then :meth:`stop`."""
        try:
            await stop.wait()
        finally:
            await self.stop(grace)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
