"""The console's reporting views (behind the operator's sign-in, as every console route):

* ``GET /api/series?meter_id=A,B&from=ISO&to=ISO&step=hour|day``: usage and production of
  one or several meters per hour or day between two times (the meters' clock: reading
  timestamps), from settlement's ``GetUsage``/``GetProduction``; ``GET /api/series.csv`` the
  same as CSV (one row per meter and bucket, then each meter's total row, the sum of its
  rows; for a period whose readings are all in, that is settlement's books for the period:
  tests/test_e2e_scenarios.py compares them).
* ``GET /api/anchors``: the anchor service's batches (txid, height, confirmations, leaves, the mined
  transaction's vbytes, the contracts among the leaves and the vbytes per contract).
* ``GET /api/grid``: what the live grid view draws: each meter's role, coordinates and power
  now (from the meter's own status), and the active contracts (supplier -> consumer) with
  their contracted average power, delivered Wh and paid msat.

Integers throughout (Wh, msat); bad parameters are 400 naming the parameter.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from aiohttp import web

from p2pep.paging import MAX_PAGE_SIZE, follow
from p2pep.servicekit.http import BadParam, time_param
from p2pep.servicekit.meter_links import MeterLinks, MeterUnknown
from p2pep.v1 import anchor_pb2, anchor_pb2_grpc, meter_pb2, settlement_pb2_grpc
from p2pep.v1 import settlement_pb2 as pb

STEPS = {"hour": 3_600_000, "day": 86_400_000}
MAX_BUCKETS = 400
MAX_METERS = 20
METER_ID = re.compile(r"^[A-Za-z0-9._@/-]{1,64}$")


@dataclass(frozen=True)
class Span:
    start_ms: int
    end_ms: int


def spans(t0_ms: int, t1_ms: int, step_ms: int) -> list[Span]:
    """``[t0, t1)`` cut into steps (the last one shorter if it must); at most :data:`MAX_BUCKETS`."""
    if t1_ms <= t0_ms:
        raise BadParam("to", "must be after from")
    n = -(-(t1_ms - t0_ms) // step_ms)
    if n > MAX_BUCKETS:
        raise BadParam("step", f"{n} buckets between from and to; at most {MAX_BUCKETS} (a longer step?)")
    return [Span(t0_ms + i * step_ms, min(t1_ms, t0_ms + (i + 1) * step_ms)) for i in range(n)]


def meter_ids(req: web.Request) -> list[str]:
    ids = [m.strip() for m in req.query.get("meter_id", "").split(",") if m.strip()]
    if not ids:
        raise BadParam("meter_id", "required: one meter id or several, comma-separated")
    if len(ids) > MAX_METERS:
        raise BadParam("meter_id", f"at most {MAX_METERS} meters")
    for m in ids:
        if not METER_ID.match(m):
            raise BadParam("meter_id", f"not a meter id: {m[:64]!r}")
    return list(dict.fromkeys(ids))


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


class Reports:
    def __init__(self, settlement: settlement_pb2_grpc.SettlementServiceAsyncStub, timeout: float,
                 anchor: anchor_pb2_grpc.AnchorServiceAsyncStub | None = None, meters: MeterLinks | None = None) -> None:
        self.settlement, self.timeout, self.anchor, self.meters = settlement, timeout, anchor, meters

    async def _energy(self, meter_id: str, t0: int, t1: int) -> tuple[int, int]:
        q = pb.EnergyQuery(meter_id=meter_id)
        getattr(q, "from").FromMilliseconds(t0)
        q.to.FromMilliseconds(t1)
        u, p = await asyncio.gather(self.settlement.GetUsage(q, timeout=self.timeout),
                                    self.settlement.GetProduction(q, timeout=self.timeout))
        return u.energy_wh, p.energy_wh

    async def _series(self, req: web.Request) -> dict[str, Any]:
        ids = meter_ids(req)
        t0, t1 = time_param(req.query, "from").ToMilliseconds(), time_param(req.query, "to").ToMilliseconds()
        step = req.query.get("step", "hour")
        if step not in STEPS:
            raise BadParam("step", "hour or day")
        cuts = spans(t0, t1, STEPS[step])
        out: dict[str, Any] = {"from": iso(t0), "to": iso(t1), "step": step,
                               "starts": [iso(c.start_ms) for c in cuts], "meters": {}}
        for m in ids:
            got = await asyncio.gather(*(self._energy(m, c.start_ms, c.end_ms) for c in cuts))
            # the totals are the rows' sums: asked separately while readings still arrive, a
            # total of the whole period would not match its own rows
            out["meters"][m] = {"usage_wh": [u for u, _ in got], "production_wh": [p for _, p in got],
                                "total_usage_wh": sum(u for u, _ in got), "total_production_wh": sum(p for _, p in got)}
        return out

    async def series(self, req: web.Request) -> web.Response:
        return web.json_response(await self._series(req))

    async def series_csv(self, req: web.Request) -> web.Response:
        d = await self._series(req)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["meter_id", "from", "to", "usage_wh", "production_wh"])
        ends = d["starts"][1:] + [d["to"]]
        for m, s in d["meters"].items():
            for start, end, u, p in zip(d["starts"], ends, s["usage_wh"], s["production_wh"], strict=True):
                w.writerow([m, start, end, u, p])
            w.writerow([m, d["from"], d["to"], s["total_usage_wh"], s["total_production_wh"]])
        name = f"p2pep-energy-{d['from'][:10]}-{d['step']}.csv"
        return web.Response(text=buf.getvalue(), content_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def anchors(self, req: web.Request) -> web.Response:
        if self.anchor is None:
            return web.json_response({"batches": [], "best_height": 0, "configured": False})
        resp = await self.anchor.ListBatches(anchor_pb2.ListBatchesRequest(limit=50), timeout=self.timeout)
        return web.json_response({"configured": True, "best_height": resp.best_height, "batches": [
            {"id": b.id, "root": b.root.hex(), "leaves": b.size, "state": b.state, "txid": b.txid,
             "height": b.height, "confirmations": b.confirmations, "reanchors": b.reanchors,
             "vbytes": b.vbytes or None, "contracts": b.contracts,
             # what anchoring costs each contract in block space (its terms and its summary ride along)
             "vbytes_per_contract": round(b.vbytes / b.contracts, 1) if b.vbytes and b.contracts else None}
            for b in resp.batches]})

    async def grid(self, req: web.Request) -> web.Response:
        meters = await follow(self.settlement.ListMeters, pb.ListMetersRequest(page_size=MAX_PAGE_SIZE), "meters",
                              self.timeout)
        active = await follow(self.settlement.ListContracts, pb.ListSettlementContractsRequest(
            states=[pb.CONTRACT_STATE_ACTIVE]), "contracts", self.timeout)

        async def face(m: pb.MeterInfo) -> dict[str, Any]:
            # its place as registered with settlement, else as its live status says
            place = {"lat": m.location.latitude, "lon": m.location.longitude} if m.HasField("location") else {}
            out: dict[str, Any] = {"meter_id": m.meter_id, "role": m.role, "online": False, **place}
            if self.meters is None:
                return out
            try:
                st = await (await self.meters.stub(m.meter_id)).GetStatus(
                    meter_pb2.GetStatusRequest(), timeout=min(self.timeout, 3.0))
            except (grpc.aio.AioRpcError, MeterUnknown):
                return out
            out.update(online=True, lat=st.latitude, lon=st.longitude, power_w=st.power_w,
                       relay_energized=st.relay_energized, accel=st.clock_accel or 1)
            out.update(place)
            return out

        faces = list(await asyncio.gather(*(face(m) for m in meters)))
        # contracts run on the real clock, the meters' energy on the simulated one: a contract's
        # power is its energy over its window on the meters' clock
        accel = next((f["accel"] for f in faces if f.get("accel")), 1)
        flows = []
        for r in active:
            c = r.contract
            secs = max(1, (c.end.ToMilliseconds() - c.start.ToMilliseconds()) * accel // 1000)
            flows.append({"contract_id": c.contract_id, "from": c.supplier, "to": c.consumer,
                          "power_w": c.energy_wh * 3600 // secs, "energy_wh": c.energy_wh,
                          "delivered_wh": r.delivered_wh, "paid_msat": r.paid_msat,
                          "price_msat_per_kwh": c.price_msat_per_kwh})
        return web.json_response({"meters": faces, "flows": flows, "accel": accel})
