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
* ``GET /api/meters/{id}/activity``: its Lightning payments, the anchoring of its
  contracts (txid, height, confirmations) and each contract document's check (the offline
  part of ``p2pep verify``, run here: :func:`document_check`);
  ``GET /api/meters/{id}/contracts/{cid}/document``: a contract's document (only a contract
  of this meter).
* ``GET /api/meters/{id}/peers?q=&role=sells|buys&max_distance_m=&max_price_msat_per_kwh=``:
  every registered meter but this one (settlement's registry, so an offline one too, marked
  so) with role, price, power now, distance, coordinates for the map (as registered with
  settlement, so also of a meter never seen online; else from its status) and what it offers now
  (its resting orders in the matcher's book: side, kWh, price, expiry); never its registers,
  payments, addresses or order ids.
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

from p2pep.anchor.document import DocumentError, reject_duplicate_keys
from p2pep.anchor.verify import verify_offline
from p2pep.paging import follow
from p2pep.servicekit.http import BadParam, int_param, pb_json
from p2pep.servicekit.meter_links import MeterLinks, MeterUnknown
from p2pep.v1 import anchor_pb2, anchor_pb2_grpc, common_pb2, matcher_pb2, matcher_pb2_grpc, meter_pb2, settlement_pb2
from p2pep.webauth.redact import without_secrets
from p2pep.webauth.web import json_error

log = structlog.get_logger("portal.household")

SIDES = {"demand": common_pb2.SIDE_DEMAND, "supply": common_pb2.SIDE_SUPPLY}
METER_ID = re.compile(r"^[A-Za-z0-9._@/-]{1,64}$")
MAX_BODY_INT = 10**12
DOCUMENTS_SHOWN = 20
PEERS_TTL_S = 5.0
ROLES_OF = {"sells": ("producer", "prosumer"), "buys": ("consumer", "prosumer")}
SIDE_OF = {"sells": "supply", "buys": "demand"}
MAX_DISTANCE_M = 40_000_000  # more than half the Earth's circumference
MAX_PRICE = 100_000_000  # msat per kWh, as an order may ask (order_request)
ANCHORING_CHECKS = frozenset({"proofs.contract", "proofs.settlement"})


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


def document_check(doc: dict[str, Any] | None, best_height: int) -> dict[str, Any]:
    """What the Activity log says of a contract's document, computed by the portal with the
    code ``p2pep verify`` runs offline (:func:`p2pep.anchor.verify.verify_offline`: the terms'
    and summary's hashes, both meters' and settlement's signatures, each proof's leaf hash and
    Merkle path), with each proof's confirmations from the anchor service's best height.

    ``verified``: every check passed and every proof is in a block (>= 1 confirmation);
    ``pending``: only anchoring is missing (a leaf not anchored yet, or no best height known),
    which is every contract's state for a few blocks; ``failed``: anything else, the failed
    checks named. The portal cannot stand in for the household's own node: checking the
    transactions against a chain one trusts stays ``p2pep verify FILE`` (the page says so)."""
    if doc is None:
        return {"state": "pending", "failed": [], "confirmations": None}
    report = verify_offline(doc)
    failed = [c.name for c in report.failures]
    heights = [int(p.get("height") or 0) for p in doc.get("proofs", []) if isinstance(p, dict)]
    confs = min((best_height - h + 1 for h in heights), default=None) if best_height and all(heights) else None
    if not set(failed) <= ANCHORING_CHECKS:
        state = "failed"
    elif failed or not heights or confs is None or confs < 1:
        state = "pending"
    else:
        state = "verified"
    return {"state": state, "failed": failed, "confirmations": confs}


def public_offers(orders: Any) -> dict[str, list[dict[str, Any]]]:
    """Resting orders of the matcher's book as the neighbours may see them, by meter: side,
    energy still open, price, expiry. Not the order id (it names the order to cancel), its
    partners (who trades with whom) or its contract links."""
    out: dict[str, list[dict[str, Any]]] = {}
    for o in orders:
        if o.remaining_wh <= 0 or o.side not in (common_pb2.SIDE_SUPPLY, common_pb2.SIDE_DEMAND):
            continue
        out.setdefault(o.meter_id, []).append({
            "side": "supply" if o.side == common_pb2.SIDE_SUPPLY else "demand", "energy_wh": int(o.remaining_wh),
            "price_msat_per_kwh": int(o.price_msat_per_kwh),
            "expiry_ms": o.expiry.ToMilliseconds() if o.HasField("expiry") else None})
    for offers in out.values():
        offers.sort(key=lambda x: (x["side"], x["price_msat_per_kwh"]))
    return out


@dataclass(frozen=True)
class PeerFilter:
    """A neighbour search: name contains ``q``; ``role`` ``sells`` (a producer or prosumer, or
    anyone with an open supply now) or ``buys`` (the same for demand); at most
    ``max_distance_m`` away (a meter whose place is unknown is not within any distance); a
    price at most ``max_price_msat_per_kwh`` (its standing price or an open offer's, on the
    searched side when ``role`` is given)."""

    q: str = ""
    role: str = ""
    max_distance_m: int | None = None
    max_price_msat_per_kwh: int | None = None

    @classmethod
    def of(cls, query: Any) -> PeerFilter:
        q = query.get("q", "")
        if len(q) > 64:
            raise BadParam("q", "at most 64 characters")
        role = query.get("role", "")
        if role not in ("", *ROLES_OF):
            raise BadParam("role", "sells, buys or empty")
        dist = int_param(query, "max_distance_m", 0, 1, MAX_DISTANCE_M) if "max_distance_m" in query else None
        price = (int_param(query, "max_price_msat_per_kwh", 0, 1, MAX_PRICE)
                 if "max_price_msat_per_kwh" in query else None)
        return cls(q.strip(), role, dist, price)

    def matches(self, peer: dict[str, Any]) -> bool:
        offers = peer.get("offers") or []
        if self.q and self.q.lower() not in peer["meter_id"].lower():
            return False
        if self.role:
            side = SIDE_OF[self.role]
            if peer.get("role") not in ROLES_OF[self.role] and not any(o["side"] == side for o in offers):
                return False
            offers = [o for o in offers if o["side"] == side]
        if self.max_distance_m is not None and (peer.get("distance_m") is None
                                                or peer["distance_m"] > self.max_distance_m):
            return False
        if self.max_price_msat_per_kwh is not None:
            prices = [o["price_msat_per_kwh"] for o in offers]
            if peer.get("price_msat_per_kwh"):
                prices.append(peer["price_msat_per_kwh"])
            if not any(p <= self.max_price_msat_per_kwh for p in prices):
                return False
        return True


def registered_place(m: settlement_pb2.MeterInfo) -> dict[str, Any]:
    """A meter's place as registered with settlement (``{}``: it registered none)."""
    if not m.HasField("location"):
        return {}
    return {"lat": m.location.latitude, "lon": m.location.longitude}


def with_distances(me: dict[str, Any] | None, faces: list[dict[str, Any]], meter_id: str) -> list[dict[str, Any]]:
    """The other meters, each with its distance from ``me`` when both places are known (an
    offline meter's last known place counts), nearest first, then the unknown by name."""
    out = []
    for f in faces:
        if f["meter_id"] == meter_id:
            continue
        peer = dict(f)
        if me and "lat" in me and "lat" in f:
            peer["distance_m"] = distance_m(me["lat"], me["lon"], f["lat"], f["lon"])
        out.append(peer)
    out.sort(key=lambda p: (p.get("distance_m") is None, p.get("distance_m", 0), p["meter_id"]))
    return out


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
                 anchor: anchor_pb2_grpc.AnchorServiceAsyncStub | None = None,
                 matcher: matcher_pb2_grpc.MatcherServiceAsyncStub | None = None,
                 peers_ttl_s: float = PEERS_TTL_S) -> None:
        self.links, self.timeout, self.anchor, self.matcher = links, timeout, anchor, matcher
        self.peers_ttl_s = peers_ttl_s
        self._peers: tuple[float, list[dict[str, Any]], bool] = (-1e9, [], False)
        self._peers_lock = asyncio.Lock()
        # where each meter said it is, and its standing price, when it last answered: settlement's
        # registry holds no coordinates, so an offline neighbour stays on the map where it was seen
        self._last_seen: dict[str, dict[str, Any]] = {}

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
        try:  # duplicate keys refused as `p2pep verify` refuses them: one reading of the document
            parsed = json.loads(doc.json, object_pairs_hook=reject_duplicate_keys) if doc.json else None
        except (ValueError, DocumentError):
            log.warning("settlement sent an unreadable contract document", contract_id=contract_id)
            return None
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
        anchoring, checks = [], {}
        for rec in cs[:DOCUMENTS_SHOWN]:
            cid = rec.contract.contract_id
            doc = await self._document(cid)
            checks[cid] = document_check(doc, best)
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
                           "state": settlement_pb2.ContractState.Name(r.state),
                           "check": checks[r.contract.contract_id]} for r in cs[:DOCUMENTS_SHOWN]]}))

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
    async def _offers(self, meter_ids: list[str]) -> dict[str, list[dict[str, Any]]] | None:
        """The meters' resting orders in the matcher's book (None: no matcher, or it did not answer)."""
        if self.matcher is None or not meter_ids:
            return None if self.matcher is None else {}
        try:
            book = await self.matcher.GetBook(matcher_pb2.GetBookRequest(depth=1, meter_ids=meter_ids),
                                              timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            log.info("matcher unreachable; offers not shown", code=e.code().name)
            return None
        return public_offers(book.orders)

    async def _directory(self) -> tuple[list[dict[str, Any]], bool]:
        """Every registered meter's public face (cached a few seconds): role, its place as
        registered with settlement (so a neighbour never seen online is on the map too), and
        while it answers its price and power now (then its last known price, marked offline);
        what it offers now; and whether the offers are known. A meter registered without a
        place is placed where its live status (or, offline, its last one) says."""
        async with self._peers_lock:
            t, cached, known = self._peers
            loop = asyncio.get_running_loop()
            if loop.time() - t < self.peers_ttl_s:
                return cached, known
            reg = await follow(self.links.settlement.ListMeters, settlement_pb2.ListMetersRequest(), "meters",
                               self.timeout)

            async def face(m: settlement_pb2.MeterInfo) -> dict[str, Any]:
                out: dict[str, Any] = {"meter_id": m.meter_id, "role": m.role, "online": False}
                registered = registered_place(m)
                try:
                    stub = await self.links.stub(m.meter_id)
                    st = await stub.GetStatus(meter_pb2.GetStatusRequest(), timeout=min(self.timeout, 3.0))
                except (grpc.aio.AioRpcError, MeterUnknown):
                    out.update(self._last_seen.get(m.meter_id, {}))
                    out.update(registered)
                    return out
                place = {"lat": st.latitude, "lon": st.longitude, "price_msat_per_kwh": st.price_msat_per_kwh}
                self._last_seen[m.meter_id] = place
                out.update(online=True, power_w=st.power_w, **place)
                out.update(registered)
                return out

            faces, offers = await asyncio.gather(asyncio.gather(*(face(m) for m in reg)),
                                                 self._offers([m.meter_id for m in reg]))
            for f in faces:
                f["offers"] = (offers or {}).get(f["meter_id"], [])
            self._peers = (loop.time(), list(faces), offers is not None)
            return self._peers[1], self._peers[2]

    async def peers(self, req: web.Request, meter_id: str) -> web.Response:
        want = PeerFilter.of(req.query)
        faces, offers_known = await self._directory()
        me = next((f for f in faces if f["meter_id"] == meter_id), None)
        out = [p for p in with_distances(me, faces, meter_id) if want.matches(p)]
        return web.json_response({"me": me, "peers": out, "offers_known": offers_known})

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
