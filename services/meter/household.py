"""The household's web app, served by the meter itself on its HTTP port (beside
``/metrics``): a phone-sized page at ``/`` and the read-only JSON it polls.

* ``GET /api/status``: relay, registers, power, wallet and channel balance, the
  contracts the meter holds and its latest payments (``?payments=N``, 1..500, default 20).
* ``GET /api/contracts?active_only=true|false`` and ``GET /api/payments?limit=N``.

The same views as the gRPC ``MeterService`` (:mod:`.servicer`), as JSON (protobuf JSON
mapping: int64 fields are strings, msat and Wh stay exact). Nothing here can change the
meter: no keys, no payments, no orders. Bad query parameters get a 400 with a JSON body
naming the parameter.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from p2pep.servicekit.http import BadParam, int_param, pb_json, static_page
from services.meter.meter import Meter
from services.meter.servicer import contract_records, recent_payments

PAGE = Path(__file__).with_name("static") / "household.html"
MAX_LIMIT = 500


def _int_param(req: web.Request, name: str, default: int) -> int:
    return int_param(req.query, name, default, 1, MAX_LIMIT)


def _bool_param(req: web.Request, name: str) -> bool:
    raw = req.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadParam(name, f"must be true or false, got {raw!r}")
    return raw in ("true", "1")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadParam as e:
        return e.response()


def add_household_routes(app: web.Application, meter: Meter) -> None:
    """Mount the page and its API on the meter's HTTP app (before the host starts)."""

    async def status(req: web.Request) -> web.Response:
        n = _int_param(req, "payments", 20)
        return web.json_response({
            "status": pb_json(meter.status()),
            "contracts": [pb_json(r) for r in contract_records(meter)],
            "payments": [pb_json(p) for p in await recent_payments(meter, n)],
        })

    async def contracts(req: web.Request) -> web.Response:
        return web.json_response({"contracts": [pb_json(r) for r in contract_records(meter, _bool_param(req, "active_only"))]})

    async def payments(req: web.Request) -> web.Response:
        return web.json_response({"payments": [pb_json(p) for p in await recent_payments(meter, _int_param(req, "limit", 100))]})

    app.middlewares.append(_errors)
    app.router.add_get("/", static_page(PAGE))
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/contracts", contracts)
    app.router.add_get("/api/payments", payments)
