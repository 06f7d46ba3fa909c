"""The HTTP side of a service: Prometheus ``/metrics`` and ``/healthz``."""

from __future__ import annotations

from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


def build_http_app(
    is_serving: Callable[[], bool], registry: CollectorRegistry = REGISTRY
) -> web.Application:
    """An app with ``GET /metrics`` (the default Prometheus registry) and ``GET /healthz``.

    ``/healthz`` answers 200 ``{"status": "SERVING"}`` or 503 ``{"status": "NOT_SERVING"}``.
    Services may add their own routes before the host starts.
    """

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = is_serving()
        return web.json_response({"status": "SERVING" if ok else "NOT_SERVING"}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
