"""The household app's trading, wallet, charts, activity, peers and live updates (behind the
portal's sign-in; every route answers only for a meter of the signed-in account, else 404,
see :meth:`services.portal.web.Portal.owned`).

* ``GET /api/meters/{id}/orders``; ``POST`` ``{"side": "demand"|"supply", "energy_wh",
  "price_msat_per_kwh", "timeout_s", "partner"?}``; ``DELETE /api/meters/{id}/orders/{order_id}``:
  the household's own orders, placed and cancelled by its meter (``PlaceOrder``, ...).
* ``GET /api/meters/{id}/wallet``: its lnd node's on-chain and channel balances;
  ``POST /api/meters/{id}/address``: a fresh receive address (``NewAddress``).
* ``GET /api/meters/{id}/energy?range=today|week``: usage and production per hour of the
  meter's day (today) or per day (the last 7), on the meter's clock, from settlement's readings.
* ``GET /api/meters/{id}/activity``: its Lightning payments and the anchoring of its
  contracts (txid, height, confirmations); ``GET /api/meters/{id}/contracts/{cid}/document``:
  a contract's document (only a contract of this meter).
* ``GET /api/meters/{id}/peers``: the other meters (role, price, power now, distance) with
  their coordinates for the map; never their registers or addresses.
* ``GET /api/meters/{id}/events``: server-sent events, one ``status`` event per change of
  the meter's status (``WatchStatus``), the same JSON as ``/status``.

Amounts stay integers (Wh, msat); times are real unix ms and the status carries the meter's
clock (``clock_accel``, ``real_time``, ``sim_time``) so the page shows one clock.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
import structlog
from aiohttp import web

from p2pep.paging import follow
from p2pep.servicekit.http import BadParam, pb_json
from p2pep.servicekit.meter_links import MeterLinks, MeterUnknown
from p2pep.v1 import anchor_pb2, anchor_pb2_grpc, common_pb2, meter_pb2, settlement_pb2
from p2pep.webauth.redact import without_secrets
from p2pep.webauth.web import json_error

log = structlog.get_logger("portal.household")

SIDES = {"demand": common_pb2.SIDE_DEMAND, "supply": common_pb2.SIDE_SUPPLY}
METER_ID = re.compile(r"^[A-Za-z0-9._@/-]{1,64}$")
MAX_BODY_INT = 10**12
DOCUMENTS_SHOWN = 20
PEERS_TTL_S = 5.0


@dataclass(frozen=True)
class Bucket:
    start_ms: int
    end_ms: int
    label: str


def buckets(sim_now_ms: int, tz: str, kind: str) -> list[Bucket]:
    """The chart's buckets on the meter's clock: the hours of its current day up to now
    (``today``), or its last 7 days ending today (``week``); the last bucket ends now."""
    try:
        zone = ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    now = datetime.fromtimestamp(sim_now_ms / 1000, tz=UTC).astimezone(zone)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    out: list[Bucket] = []
    if kind == "today":
        for h in range(now.hour + 1):
            t0 = midnight + timedelta(hours=h)
            out.append(Bucket(int(t0.timestamp() * 1000), int((t0 + timedelta(hours=1)).timestamp() * 1000),
                              f"{h:02d}:00"))
    else:
        for d in range(6, -1, -1):
            t0 = midnight - timedelta(days=d)
            t1 = t0 + timedelta(days=1)
            out.append(Bucket(int(t0.timestamp() * 1000), int(t1.timestamp() * 1000), t0.strftime("%a %d")))
    last = out[-1]
    out[-1] = Bucket(last.start_ms, min(last.end_ms, sim_now_ms), last.label)
    return out


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> int:
    """Great-circle distance (haversine, mean Earth radius), whole metres."""
    r = 6_371_008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return round(2 * r * math.asin(min(1.0, math.sqrt(a))))


def _int(body: dict[str, Any], name: str, lo: int, hi: int) -> int:
    v = body.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadParam(name, f"required: an integer from {lo} to {hi}")
    return v


async def _json_object(req: web.Request) -> dict[str, Any]:
    if req.content_type != "application/json":
        raise BadParam("body", "send a JSON body (Content-Type: application/json)")
    try:
        body = await req.json()
    except ValueError:
        raise BadParam("body", "not JSON") from None
    if not isinstance(body, dict):
        raise BadParam("body", "must be a JSON object")
    return body


def order_request(body: dict[str, Any]) -> meter_pb2.PlaceOrderRequest:
    """A PlaceOrder request from the page's JSON; a :class:`BadParam` names what is wrong."""
    side = body.get("side")
    if side not in SIDES:
        raise BadParam("side", "required: demand or supply")
    partners: list[str] = []
    partner = body.get("partner", "")
    if partner not in (None, ""):
        if not isinstance(partner, str) or not METER_ID.match(partner):
            raise BadParam("partner", "a meter id, or empty")
        partners.append(partner)
    return meter_pb2.PlaceOrderRequest(
        side=SIDES[side], energy_wh=_int(body, "energy_wh", 1, 1_000_000),
        price_msat_per_kwh=_int(body, "price_msat_per_kwh", 1, 100_000_000),
        timeout_s=_int(body, "timeout_s", 1, 86_400), partners=partners)


def status_json(st: meter_pb2.MeterStatus) -> dict[str, Any]:
    return pb_json(st)


class Household:
    def __init__(self, links: MeterLinks, timeout: float,
                 anchor: anchor_pb2_grpc.AnchorServiceAsyncStub | None = None) -> None:
        self.links, self.timeout, self.anchor = links, timeout, anchor
        self._peers: tuple[float, list[dict[str, Any]]] = (-1e9, [])
        self._peers_lock = asyncio.Lock()

    # --- trading ----------------------------------------------------------------------------------
    async def orders(self, req: web.Request, meter_id: str) -> web.Response:
        stub = await self.links.stub(meter_id)
        resp = await stub.ListOrders(meter_pb2.ListOrdersRequest(), timeout=self.timeout)
        return web.json_response({"orders": [pb_json(o) for o in resp.orders]})

    async def place(self, req: web.Request, meter_id: str) -> web.Response:
        order = order_request(await _json_object(req))
        if meter_id in order.partners:
            raise BadParam("partner", "not your own meter")
        stub = await self.links.stub(meter_id)
        resp = await stub.PlaceOrder(order, timeout=self.timeout)
        log.info("household order placed", meter_id=meter_id, order_id=resp.order.order_id)
        return web.json_response(pb_json(resp), status=201)

    async def cancel(self, req: web.Request, meter_id: str) -> web.Response:
        order_id = req.match_info["order_id"]
        if not 0 < len(order_id) <= 200:
            raise BadParam("order_id", "not an order id")
        stub = await self.links.stub(meter_id)
        resp = await stub.CancelOrder(meter_pb2.CancelOrderRequest(order_id=order_id), timeout=self.timeout)
        return web.json_response(pb_json(resp))

    # --- wallet -----------------------------------------------------------------------------------
    async def wallet(self, req: web.Request, meter_id: str) -> web.Response:
        stub = await self.links.stub(meter_id)
        st = await stub.GetStatus(meter_pb2.GetStatusRequest(), timeout=self.timeout)
        return web.json_response({"meter_id": meter_id, "node_pubkey": st.node_pubkey,
                                  "onchain_sat": st.wallet_sat, "channel_local_sat": st.channel_local_sat,
                                  "channel_remote_sat": st.channel_remote_sat})

    async def address(self, req: web.Request, meter_id: str) -> web.Response:
        stub = await self.links.stub(meter_id)
        resp = await stub.NewAddress(meter_pb2.NewAddressRequest(), timeout=self.timeout)
        return web.json_response({"address": resp.address}, status=201)

    # --- usage and production -------------------------------------------------------------------
    async def energy(self, req: web.Request, meter_id: str) -> web.Response:
        kind = req.query.get("range", "today")
        if kind not in ("today", "week"):
            raise BadParam("range", "today or week")
        stub = await self.links.stub(meter_id)
        st = await stub.GetStatus(meter_pb2.GetStatusRequest(), timeout=self.timeout)
        if not st.HasField("sim_time"):
            return json_error(503, "the meter is starting: no clock yet")
        bs = buckets(st.sim_time.ToMilliseconds(), st.tz, kind)

        async def one(b: Bucket) -> tuple[int, int]:
            q = settlement_pb2.EnergyQuery(meter_id=meter_id)
            getattr(q, "from").FromMilliseconds(b.start_ms)
            q.to.FromMilliseconds(b.end_ms)
            u = await self.links.settlement.GetUsage(q, timeout=self.timeout)
            p = await self.links.settlement.GetProduction(q, timeout=self.timeout)
            return u.energy_wh, p.energy_wh

        got = await asyncio.gather(*(one(b) for b in bs))
        return web.json_response({
            "meter_id": meter_id, "range": kind, "tz": st.tz, "labels": [b.label for b in bs],
            "starts_ms": [b.start_ms for b in bs], "usage_wh": [u for u, _ in got],
            "production_wh": [p for _, p in got]})

    # --- activity: payments, anchoring, documents ----------------------------------------------
    async def _document(self, contract_id: str) -> dict[str, Any] | None:
        try:
            doc = await self.links.settlement.ExportContract(
                settlement_pb2.GetContractRequest(contract_id=contract_id), timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        parsed = json.loads(doc.json) if doc.json else None
        return parsed if isinstance(parsed, dict) else None

    async def activity(self, req: web.Request, meter_id: str) -> web.Response:
        stub = await self.links.stub(meter_id)
        ps = await stub.ListPayments(meter_pb2.MeterPaymentsRequest(limit=100), timeout=self.timeout)
        cs = await follow(stub.ListContracts, meter_pb2.MeterContractsRequest(), "contracts", self.timeout)
        best = 0
        if self.anchor is not None:
            try:
                best = (await self.anchor.ListBatches(anchor_pb2.ListBatchesRequest(limit=1),
                                                      timeout=self.timeout)).best_height
            except grpc.aio.AioRpcError as e:
                log.info("anchor unreachable; confirmations not shown", code=e.code().name)
        anchoring = []
        for rec in cs[:DOCUMENTS_SHOWN]:
            cid = rec.contract.contract_id
            doc = await self._document(cid)
            for p in (doc or {}).get("proofs", []):
                if not isinstance(p, dict):
                    continue
                height = int(p.get("height") or 0)
                anchoring.append({"contract_id": cid, "leaf": p.get("leaf"), "txid": p.get("txid"),
                                  "height": height,
                                  "confirmations": best - height + 1 if best and height else None})
        return web.json_response(without_secrets({
            "payments": [pb_json(p) for p in ps.payments], "anchoring": anchoring, "best_height": best,
            "contracts": [{"contract_id": r.contract.contract_id, "hash": r.contract.hash.hex(),
                           "state": settlement_pb2.ContractState.Name(r.state)} for r in cs[:DOCUMENTS_SHOWN]]}))

    async def document(self, req: web.Request, meter_id: str) -> web.Response:
        cid = req.match_info["contract_id"]
        stub = await self.links.stub(meter_id)
        cs = await follow(stub.ListContracts, meter_pb2.MeterContractsRequest(), "contracts", self.timeout)
        if cid not in {r.contract.contract_id for r in cs}:  # only this meter's own contracts
            return json_error(404, "contract_id: no such contract of this meter", param="contract_id")
        doc = await self._document(cid)
        if doc is None:
            return json_error(404, "contract_id: settlement holds no document for it", param="contract_id")
        return web.json_response(without_secrets(doc), headers={
            "Content-Disposition": f'attachment; filename="{cid}.json"'})

    # --- peers ------------------------------------------------------------------------------------
    async def _directory(self) -> list[dict[str, Any]]:
        """Every registered meter's public face (cached a few seconds): role, price, power
        now, coordinates. Meters that do not answer are listed without them."""
        async with self._peers_lock:
            t, cached = self._peers
            loop = asyncio.get_running_loop()
            if loop.time() - t < PEERS_TTL_S:
                return cached
            reg = await self.links.settlement.ListMeters(settlement_pb2.ListMetersRequest(), timeout=self.timeout)

            async def face(m: settlement_pb2.MeterInfo) -> dict[str, Any]:
                out: dict[str, Any] = {"meter_id": m.meter_id, "role": m.role, "online": False}
                try:
                    stub = await self.links.stub(m.meter_id)
                    st = await stub.GetStatus(meter_pb2.GetStatusRequest(), timeout=min(self.timeout, 3.0))
                except (grpc.aio.AioRpcError, MeterUnknown):
                    return out
                out.update(online=True, lat=st.latitude, lon=st.longitude, price_msat_per_kwh=st.price_msat_per_kwh,
                           power_w=st.power_w)
                return out

            faces = list(await asyncio.gather(*(face(m) for m in reg.meters)))
            self._peers = (loop.time(), faces)
            return faces

    async def peers(self, req: web.Request, meter_id: str) -> web.Response:
        q = req.query.get("q", "")
        if len(q) > 64:
            raise BadParam("q", "at most 64 characters")
        faces = await self._directory()
        me = next((f for f in faces if f["meter_id"] == meter_id), None)
        out = []
        for f in faces:
            if f["meter_id"] == meter_id or (q and q.lower() not in f["meter_id"].lower()):
                continue
            peer = dict(f)
            if me and me.get("online") and f.get("online"):
                peer["distance_m"] = distance_m(me["lat"], me["lon"], f["lat"], f["lon"])
            out.append(peer)
        out.sort(key=lambda p: (p.get("distance_m") is None, p.get("distance_m", 0), p["meter_id"]))
        return web.json_response({"me": me, "peers": out})

    # --- live updates -----------------------------------------------------------------------------
    async def events(self, req: web.Request, meter_id: str) -> web.StreamResponse:
        stub = await self.links.stub(meter_id)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(req)
        call = stub.WatchStatus(meter_pb2.GetStatusRequest())
        try:
            async for st in call:
                data = json.dumps(status_json(st), separators=(",", ":"))
                await resp.write(f"event: status\ndata: {data}\n\n".encode())
        except grpc.aio.AioRpcError as e:  # the page shows the meter offline; EventSource reconnects
            try:
                await resp.write(f"event: offline\ndata: {json.dumps({'error': e.code().name})}\n\n".encode())
            except ConnectionResetError:
                pass
        except ConnectionResetError:  # the page went away: the normal end of a stream
            pass
        finally:
            call.cancel()
        return resp
