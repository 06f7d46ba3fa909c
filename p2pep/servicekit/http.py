"""The HTTP side of a service: Prometheus ``/metrics`` and ``/healthz``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)


def build_http_app(
    is_serving: Callable[[], bool],
    waiting_for: Callable[[], list[str]] = list,
    is_alive: Callable[[], bool] = lambda: True,
    registry: CollectorRegistry = REGISTRY,
) -> web.Application:
    """An app with ``GET /metrics`` (the default Prometheus registry), ``GET /healthz`` (ready)
    and ``GET /livez`` (alive).

    ``/healthz`` answers 200 ``{"status": "SERVING"}`` or 503 ``{"status": "NOT_SERVING",
    "waiting_for": [...]}`` (the names of the unmet readiness conditions; their reasons are in
    the log, not on a public page). ``/livez`` answers 200 ``{"status": "SERVING"}`` while the
    service runs (its event loop answered), 503 once it stops.
    Services may add their own routes before the host starts.
    """

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if is_serving():
            return web.json_response({"status": "SERVING"})
        return web.json_response({"status": "NOT_SERVING", "waiting_for": waiting_for()}, status=503)

    async def livez(_: web.Request) -> web.Response:
        ok = is_alive()
        return web.json_response({"status": "SERVING" if ok else "NOT_SERVING"}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    return app


# -- shared by the services' web pages and the JSON they read --------------------------------


class BadParam(ValueError):
    """A query parameter that cannot be used: answered 400 with a JSON body naming it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param

    def response(self) -> web.Response:
        return web.json_response({"error": str(self), "param": self.param}, status=400)


def int_param(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter ``name`` as an integer ``lo..hi`` (``default`` when absent); anything
    else (not ASCII digits, e.g. ``²`` or ``-1`` or ``1e3``, out of range) is a :class:`BadParam`."""
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(hi)) or not lo <= int(raw) <= hi:
        raise BadParam(name, f"must be an integer from {lo} to {hi}, got {ascii(raw[:40])}")
    return int(raw)


def time_param(query: Mapping[str, str], name: str) -> Timestamp:
    """Query parameter ``name``: an ISO 8601 time with a UTC offset (``Z`` too); else a :class:`BadParam`."""
    raw = query.get(name, "")
    if not raw:
        raise BadParam(name, "required: an ISO 8601 time with a UTC offset, e.g. 2026-06-21T12:00:00+02:00")
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadParam(name, f"not an ISO 8601 time: {raw[:64]!r}") from None
    if t.tzinfo is None:
        raise BadParam(name, f"needs a UTC offset: {raw[:64]!r}")
    ts = Timestamp()
    try:
        ts.FromDatetime(t)
    except (OverflowError, ValueError):  # e.g. 9999-12-31T23:59:59-14:00 is in year 10000 UTC
        raise BadParam(name, f"outside years 1..9999 in UTC: {raw[:64]!r}") from None
    return ts


def pb_json(msg: Any) -> dict[str, Any]:
    """A protobuf message as JSON (protobuf's mapping: int64 as strings, field names as in the
    .proto), but every ``bytes`` field in lowercase hex, as contract documents, reports and
    ``p2pep verify`` write hashes and signatures (protobuf's mapping would give base64)."""
    out: dict[str, Any] = MessageToDict(msg, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
    _bytes_as_hex(msg, out)
    return out


def _bytes_as_hex(msg: Any, out: dict[str, Any]) -> None:
    for f in msg.DESCRIPTOR.fields:
        if f.name not in out:
            continue
        repeated = f.is_repeated
        value = getattr(msg, f.name)
        if f.type == FieldDescriptor.TYPE_BYTES:
            out[f.name] = [v.hex() for v in value] if repeated else value.hex()
        elif f.type == FieldDescriptor.TYPE_MESSAGE and not (f.message_type.GetOptions().map_entry):
            if f.message_type.full_name.startswith("google.protobuf."):
                continue  # well-known types have their own JSON forms (timestamps, durations)
            if repeated:
                for sub, sub_out in zip(value, out[f.name], strict=True):
                    _bytes_as_hex(sub, sub_out)
            else:
                _bytes_as_hex(value, out[f.name])


def static_page(path: Path) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    """A handler serving one file, never cached (the pages poll their API)."""

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    return page


VENDOR = Path(__file__).resolve().parents[1] / "webauth" / "static" / "vendor"
"""Third-party browser assets of the web pages (Chart.js), installed by ``make web-assets``
(``npm ci`` against ``services/portal/web/package-lock.json``): served from here, never a CDN."""
VENDOR_ASSETS = {"chart.umd.js": "application/javascript"}


async def vendor_asset(req: web.Request) -> web.StreamResponse:
    """``GET /static/{name}``: one of :data:`VENDOR_ASSETS`, else a 404 with a JSON body."""
    name = req.match_info["name"]
    path = VENDOR / name
    if name not in VENDOR_ASSETS or not path.is_file():
        return web.json_response({"error": f"no such asset {name[:60]!r} (run `make web-assets`)"}, status=404)
    return web.FileResponse(path, headers={"Content-Type": VENDOR_ASSETS[name], "Cache-Control": "max-age=3600"})
