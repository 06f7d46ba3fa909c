"""The portal's household routes (behind :class:`p2pep.webauth.web.WebAuth`: every one
needs a session, every POST/DELETE a CSRF token).

* ``GET /``: the household app (account, meters, pairing, each meter's status).
* ``GET /api/meters``: the account's meters. ``POST /api/meters`` ``{"meter_id", "code"}``:
  pair a meter by the code its display shows (redeemed with the meter, ``ClaimPairing``).
  ``DELETE /api/meters/{meter_id}``: unpair it.
* ``GET /api/meters/{meter_id}/status?payments=N``, ``.../contracts?active_only=``,
  ``.../payments?limit=N``: read from that meter over gRPC, as the meter's old page did.
* trading, wallet, charts, activity, peers and live updates: :mod:`services.portal.household`.

Isolation: every ``/api/meters/{meter_id}/...`` answers 404 unless the meter belongs to the
signed-in account (another account's meter and an unknown one look the same). Preimages are
dropped from every answer (:func:`without_secrets`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web

from p2pep.paging import follow
from p2pep.servicekit.http import BadParam, int_param, pb_json, static_page, vendor_asset
from p2pep.servicekit.meter_links import MeterLinks, MeterUnknown
from p2pep.v1 import meter_pb2
from p2pep.webauth.ratelimit import RateLimiter
from p2pep.webauth.redact import without_secrets
from p2pep.webauth.web import WebAuth, json_body, json_error, session_of, too_many
from services.portal.household import Household
from services.portal.store import PairedElsewhere, PortalStore

log = structlog.get_logger("portal")

STATIC = Path(__file__).with_name("static")
PAGE = STATIC / "app.html"
MeterHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
MAX_LIMIT = 500
METER_ID = re.compile(r"^[A-Za-z0-9._@/-]{1,64}$")
HTTP_OF = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
           grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
           grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}


def _int_param(req: web.Request, name: str, default: int) -> int:
    return int_param(req.query, name, default, 1, MAX_LIMIT)


def _bool_param(req: web.Request, name: str) -> bool:
    raw = req.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadParam(name, f"must be true or false, got {raw!r}")
    return raw in ("true", "1")


class Portal:
    def __init__(self, store: PortalStore, auth: WebAuth, links: MeterLinks, timeout: float,
                 pairing_failures_per_account: int = 10, pairing_failures_per_client: int = 20,
                 window_s: float = 300.0) -> None:
        self.store, self.auth, self.links, self.timeout = store, auth, links, timeout
        self.pair_account = RateLimiter(pairing_failures_per_account, window_s)
        self.pair_client = RateLimiter(pairing_failures_per_client, window_s)

    async def _owned(self, req: web.Request) -> str:
        meter_id = req.match_info["meter_id"]
        if not await self.store.owns(session_of(req).account_id, meter_id):
            raise web.HTTPNotFound(text=web.json_response(
                {"error": "meter_id: no such meter in this account", "param": "meter_id"}).text,
                content_type="application/json")
        return meter_id

    def for_meter(self, handler: MeterHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler`` for ``/api/meters/{meter_id}/...``, called only for the signed-in account's meter."""
        async def route(req: web.Request) -> web.StreamResponse:
            return await handler(req, await self._owned(req))
        return route

    # --- the account's meters -------------------------------------------------------------------
    async def list_meters(self, req: web.Request) -> web.Response:
        s = session_of(req)
        meters = await self.store.meters(s.account_id)
        return web.json_response({"account": s.account_name,
                                  "meters": [{"meter_id": m.meter_id, "paired_ms": m.paired_ms} for m in meters]})

    async def pair(self, req: web.Request) -> web.Response:
        s = session_of(req)
        keys = ((self.pair_account, f"account:{s.account_id}"), (self.pair_client, self.auth.client_key(req)))
        if wait := max(limiter.retry_after(k) for limiter, k in keys):
            return too_many("wrong pairing codes", wait)
        body = await json_body(req, "meter_id", "code")
        meter_id = body["meter_id"].strip()
        if not METER_ID.match(meter_id):
            raise BadParam("meter_id", "not a meter id")
        owner = await self.store.owner(meter_id)
        if owner == s.account_id:
            return web.json_response({"meter_id": meter_id, "paired": True})
        if owner is not None:  # checked before the claim, so the household's code is not used up
            return json_error(409, "meter_id: this meter belongs to another account (remove it there first)",
                              param="meter_id")
        try:
            stub = await self.links.stub(meter_id)
            resp = await stub.ClaimPairing(meter_pb2.ClaimPairingRequest(code=body["code"]), timeout=self.timeout)
        except MeterUnknown:
            return json_error(404, "meter_id: no such meter is registered", param="meter_id")
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                for limiter, k in keys:
                    limiter.hit(k)
                log.info("pairing refused by the meter", meter_id=meter_id, code=e.code().name)
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return json_error(429, "the meter refuses pairing for a while after wrong codes; "
                                           "try again in a minute with the code it shows then")
                return json_error(400, "code: wrong or expired pairing code", param="code")
            raise
        if resp.meter_id != meter_id:
            log.error("meter answered a pairing with another id", asked=meter_id, answered=resp.meter_id)
            return json_error(502, "the meter answered with another id")
        try:
            await self.store.add_meter(s.account_id, meter_id, self.auth.now_ms())
        except PairedElsewhere:
            return json_error(409, "meter_id: this meter belongs to another account", param="meter_id")
        log.info("meter paired", meter_id=meter_id, account=s.account_id)
        return web.json_response({"meter_id": meter_id, "paired": True}, status=201)

    async def unpair(self, req: web.Request) -> web.Response:
        meter_id = await self._owned(req)
        await self.store.remove_meter(session_of(req).account_id, meter_id)
        return web.json_response({"meter_id": meter_id, "paired": False})

    # --- one meter's views (read from the meter) ------------------------------------------------
    async def status(self, req: web.Request) -> web.Response:
        meter_id = await self._owned(req)
        n = _int_param(req, "payments", 20)
        stub = await self.links.stub(meter_id)
        st = await stub.GetStatus(meter_pb2.GetStatusRequest(), timeout=self.timeout)
        cs = await follow(stub.ListContracts, meter_pb2.MeterContractsRequest(), "contracts", self.timeout)
        ps = await stub.ListPayments(meter_pb2.MeterPaymentsRequest(limit=n), timeout=self.timeout)  # the newest n
        return web.json_response(without_secrets({
            "status": pb_json(st), "contracts": [pb_json(c) for c in cs],
            "payments": [pb_json(p) for p in ps.payments]}))

    async def contracts(self, req: web.Request) -> web.Response:
        meter_id = await self._owned(req)
        stub = await self.links.stub(meter_id)
        cs = await follow(stub.ListContracts, meter_pb2.MeterContractsRequest(active_only=_bool_param(req, "active_only")),
                          "contracts", self.timeout)
        return web.json_response(without_secrets({"contracts": [pb_json(c) for c in cs]}))

    async def payments(self, req: web.Request) -> web.Response:
        meter_id = await self._owned(req)
        n = _int_param(req, "limit", 100)
        stub = await self.links.stub(meter_id)
        ps = await stub.ListPayments(meter_pb2.MeterPaymentsRequest(limit=n), timeout=self.timeout)
        return web.json_response(without_secrets({"payments": [pb_json(p) for p in ps.payments]}))


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except BadParam as e:
        return e.response()
    except MeterUnknown:
        return json_error(503, "meter_id: the meter is not registered with settlement right now", param="meter_id")
    except grpc.aio.AioRpcError as e:
        return json_error(HTTP_OF.get(e.code(), 502), f"meter: {e.details() or e.code().name}", code=e.code().name)


def add_portal_routes(app: web.Application, portal: Portal, household: Household | None = None) -> None:
    """Mount the household app (after ``portal.auth.install(app)``)."""
    app.middlewares.append(_errors)
    app.router.add_get("/static/{name}", vendor_asset)
    if household is not None:
        h, m = household, portal.for_meter
        app.router.add_get("/api/meters/{meter_id}/orders", m(h.orders))
        app.router.add_post("/api/meters/{meter_id}/orders", m(h.place))
        app.router.add_delete("/api/meters/{meter_id}/orders/{order_id}", m(h.cancel))
        app.router.add_get("/api/meters/{meter_id}/wallet", m(h.wallet))
        app.router.add_post("/api/meters/{meter_id}/address", m(h.address))
        app.router.add_get("/api/meters/{meter_id}/energy", m(h.energy))
        app.router.add_get("/api/meters/{meter_id}/activity", m(h.activity))
        app.router.add_get("/api/meters/{meter_id}/contracts/{contract_id}/document", m(h.document))
        app.router.add_get("/api/meters/{meter_id}/peers", m(h.peers))
        app.router.add_get("/api/meters/{meter_id}/events", m(h.events))
    app.router.add_get("/", static_page(PAGE))
    app.router.add_get("/api/meters", portal.list_meters)
    app.router.add_post("/api/meters", portal.pair)
    app.router.add_delete("/api/meters/{meter_id}", portal.unpair)
    app.router.add_get("/api/meters/{meter_id}/status", portal.status)
    app.router.add_get("/api/meters/{meter_id}/contracts", portal.contracts)
    app.router.add_get("/api/meters/{meter_id}/payments", portal.payments)
