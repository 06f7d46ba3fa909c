"""The console's HTTP side: the page at ``/`` and the JSON it reads, each answer built
from settlement's and the matcher's gRPC APIs (the console stores nothing).

* ``GET /api/overview``: meters (registry, last registers), contract counts by state,
  delivered Wh and paid msat in total, the matcher's book (if configured), and the meters'
  clock (``clock``: the page shows every time on the meters' simulated clock).
* ``GET /api/contracts?meter_id=&state=ACTIVE,DEFAULTED``
* ``GET /api/energy?meter_id=M&from=ISO&to=ISO``: usage and production of one meter
  between two times (reading timestamps, the meters' simulated clock).
* ``GET /api/payments?contract_id=&meter_id=``
* ``GET /api/contracts/{id}/document``: the self-contained contract document
  (terms, hashes, settlement summary, anchoring proofs) that ``p2pep verify`` checks.
* charts of several meters between two dates with CSV, anchor batches, the live grid:
  :mod:`services.console.reports`.

Every route needs an operator's session (:class:`p2pep.webauth.web.WebAuth`: sign-in at
``/signin``, operators added by ``p2pep operator add``); payment preimages never reach the page,
and hashes and signatures are hex (as in contract documents and reports).

Bad parameters answer 400, unknown meters or contracts 404, a backend that is down 503,
always with ``{"error": ...}`` naming the parameter.
"""

from __future__ import annotations

import json
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from p2pep.paging import MAX_PAGE_SIZE, follow
from p2pep.servicekit.http import BadParam, pb_json, static_page, time_param, vendor_asset
from p2pep.servicekit.meter_links import MeterLinks, MeterUnknown
from p2pep.v1 import matcher_pb2, matcher_pb2_grpc, meter_pb2, settlement_pb2_grpc
from p2pep.v1 import settlement_pb2 as pb
from p2pep.webauth.redact import without_secrets
from p2pep.webauth.web import WebAuth
from services.console import metrics
from services.console.reports import Reports

PAGE = Path(__file__).with_name("static") / "console.html"
HTTP_OF = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
           grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}
STATES = {n.removeprefix("CONTRACT_STATE_"): v for n, v in pb.ContractState.items() if v}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_time(req: web.Request, name: str) -> Timestamp:
    return time_param(req.query, name)


def parse_states(req: web.Request) -> list[pb.ContractState.ValueType]:
    out = []
    for s in filter(None, req.query.get("state", "").upper().split(",")):
        if s not in STATES:
            raise BadParam("state", f"unknown state {s!r} (known: {', '.join(STATES)})")
        out.append(STATES[s])
    return out


class Console:
    def __init__(self, settlement: settlement_pb2_grpc.SettlementServiceAsyncStub,
                 matcher: matcher_pb2_grpc.MatcherServiceAsyncStub | None, timeout: float = 10.0,
                 meters: MeterLinks | None = None) -> None:
        self.settlement, self.matcher, self.timeout, self.meters = settlement, matcher, timeout, meters

    async def clock(self, meter_ids: list[str]) -> dict[str, int] | None:
        """The meters' clock, from the first meter that answers: ``sim_ms`` at ``real_ms``
        running ``accel`` times faster. The page shows every time on it (contracts and
        payments carry real times; readings, hence the usage form, the meters' clock)."""
        if self.meters is None:
            return None
        for meter_id in meter_ids:
            try:
                stub = await self.meters.stub(meter_id)
                st = await stub.GetStatus(meter_pb2.GetStatusRequest(), timeout=min(self.timeout, 3.0))
            except (grpc.aio.AioRpcError, MeterUnknown):
                continue
            if st.HasField("sim_time") and st.HasField("real_time") and st.clock_accel:
                return {"sim_ms": st.sim_time.ToMilliseconds(), "real_ms": st.real_time.ToMilliseconds(),
                        "accel": st.clock_accel}
        return None

    async def overview(self, req: web.Request) -> web.Response:
        meters = await follow(self.settlement.ListMeters, pb.ListMetersRequest(page_size=MAX_PAGE_SIZE), "meters",
                              self.timeout)
        contracts = await follow(self.settlement.ListContracts, pb.ListSettlementContractsRequest(), "contracts",
                                 self.timeout)
        out: dict[str, Any] = {
            "meters": [pb_json(m) for m in meters],
            "contracts_by_state": dict(Tally(pb.ContractState.Name(c.state).removeprefix("CONTRACT_STATE_")
                                             for c in contracts)),
            "delivered_wh": sum(c.delivered_wh for c in contracts),
            "paid_msat": sum(c.paid_msat for c in contracts),
            "faults": [{"contract_id": c.contract.contract_id, "consumer": c.contract.consumer,
                        "supplier": c.contract.supplier, "fault": c.fault} for c in contracts if c.fault],
            "book": None,
            "clock": await self.clock([m.meter_id for m in meters]),
        }
        if self.matcher is not None:
            try:
                out["book"] = pb_json(await self.matcher.GetBook(matcher_pb2.GetBookRequest(depth=10), timeout=self.timeout))
            except grpc.aio.AioRpcError as e:  # the rest of the page still works
                out["book"] = {"error": f"matcher: {e.code().name}: {e.details()}"}
        return web.json_response(out)

    async def contracts(self, req: web.Request) -> web.Response:
        contracts = await follow(self.settlement.ListContracts, pb.ListSettlementContractsRequest(
            meter_id=req.query.get("meter_id", ""), states=parse_states(req)), "contracts", self.timeout)
        return web.json_response({"contracts": [pb_json(c) for c in contracts]})

    async def energy(self, req: web.Request) -> web.Response:
        meter = req.query.get("meter_id", "")
        if not meter:
            raise BadParam("meter_id", "required")
        t0, t1 = parse_time(req, "from"), parse_time(req, "to")
        if t1.ToNanoseconds() < t0.ToNanoseconds():
            raise BadParam("to", "must not be before from")
        q = pb.EnergyQuery(meter_id=meter, to=t1)
        getattr(q, "from").CopyFrom(t0)
        usage = await self.settlement.GetUsage(q, timeout=self.timeout)
        production = await self.settlement.GetProduction(q, timeout=self.timeout)
        return web.json_response({"meter_id": meter, "from": req.query["from"], "to": req.query["to"],
                                  "usage_wh": usage.energy_wh, "production_wh": production.energy_wh,
                                  "readings": usage.readings})

    async def payments(self, req: web.Request) -> web.Response:
        payments = await follow(self.settlement.ListPayments, pb.ListPaymentsRequest(
            contract_id=req.query.get("contract_id", ""), meter_id=req.query.get("meter_id", "")),
            "payments", self.timeout)
        return web.json_response(without_secrets({"payments": [pb_json(p) for p in payments]}))

    async def document(self, req: web.Request) -> web.Response:
        cid = req.match_info["contract_id"]
        doc = await self.settlement.ExportContract(pb.GetContractRequest(contract_id=cid), timeout=self.timeout)
        return web.json_response(without_secrets(json.loads(doc.json)), headers={
            "Content-Disposition": f'attachment; filename="{cid}.json"'})


def _route(name: str, handler: Handler) -> Handler:
    async def wrapped(req: web.Request) -> web.StreamResponse:
        try:
            resp = await handler(req)
        except BadParam as e:
            resp = e.response()
        except grpc.aio.AioRpcError as e:
            resp = web.json_response({"error": e.details() or e.code().name, "code": e.code().name},
                                     status=HTTP_OF.get(e.code(), 502))
        metrics.REQUESTS.labels(name, str(resp.status)).inc()
        return resp
    return wrapped


def add_console_routes(app: web.Application, console: Console, auth: WebAuth, reports: Reports | None = None) -> None:
    """The sign-in (``auth``) first, then the console's page and API, all behind it."""
    auth.install(app)
    app.router.add_get("/", static_page(PAGE))
    app.router.add_get("/static/{name}", vendor_asset)
    if reports is not None:
        app.router.add_get("/api/series", _route("series", reports.series))
        app.router.add_get("/api/series.csv", _route("series_csv", reports.series_csv))
        app.router.add_get("/api/anchors", _route("anchors", reports.anchors))
        app.router.add_get("/api/grid", _route("grid", reports.grid))
    app.router.add_get("/api/overview", _route("overview", console.overview))
    app.router.add_get("/api/contracts", _route("contracts", console.contracts))
    app.router.add_get("/api/energy", _route("energy", console.energy))
    app.router.add_get("/api/payments", _route("payments", console.payments))
    app.router.add_get("/api/contracts/{contract_id}/document", _route("document", console.document))
