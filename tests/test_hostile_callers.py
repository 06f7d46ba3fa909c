"""The hostile-caller enumeration without a network (the regtest suite that calls the real
services is tests/test_hostile_callers_regtest.py).

* every RPC of every P2PEP proto gets a hostile request that names the victim, and the
  authorization table (the real checks of ``p2pep.servicekit.auth``) refuses it for a caller
  without certificate (UNAUTHENTICATED; on a real port the TLS handshake refuses it first:
  grpcio cannot ask for an optional client certificate, pinned by a test here) and
  for another meter (PERMISSION_DENIED), except the RPCs whose rule lets any meter through to
  the service's own check (party of a contract, consumer of a contract, ``ListMeters``' view);
* the HTTP routes of the portal and the console, read from their aiohttp routers, are exactly
  the routes the regtest suite knows an answer for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hostile_callers import (
    PORTAL_OTHER_ACCOUNT,
    PUBLIC_ANSWERS,
    Victim,
    call_any,
    console_app,
    foreign_session_wrong,
    hostile_request,
    no_session_answer,
    no_session_wrong,
    other_household_wrong,
    p2pep_methods,
    portal_app,
    public_routes,
    web_routes,
)
from matcher_helpers import settings
from prometheus_client import REGISTRY
from test_console import console  # noqa: F401 - the fixture
from test_meter_service import rig  # noqa: F401 - the fixture of test_portal's
from test_portal import PW, PortalRig, portal  # noqa: F401 - the fixture
from test_settlement_service import FakeMeter, Harness
from tls_helpers import dial, dial_without_certificate, tls_as
from web_helpers import WebClient

from p2pep.access import ACCESS
from p2pep.identity import Identity
from p2pep.servicekit.auth import Caller, Denied, check, check_message
from services.matcher.app import start_matcher

ATTACKER = Caller(Identity("meter", "meter-1"), 1, None)
SERVICE_CHECKED = {"/p2pep.v1.SettlementService/GetContract", "/p2pep.v1.SettlementService/ExportContract",
                   "/p2pep.v1.SettlementService/ListMeters", "/p2pep.v1.MatcherService/ExtendContract"}


def server_calls_seen() -> float:
    """Every call any in-process server's interceptors saw (started, and refused by authorization)."""
    return sum(s.value for m in REGISTRY.collect() if m.name in ("grpc_server_started", "p2pep_grpc_auth_refusals")
               for s in m.samples if s.name.endswith("_total"))


def refusal(method: str, who: Caller | None, request: object) -> grpc.StatusCode | None:
    try:
        rule = ACCESS.get(method)
        check(rule, who, None)
        assert rule is not None and who is not None
        check_message(rule, who, request)
    except Denied as d:
        return d.code
    return None


def test_every_rpc_is_enumerated_from_the_descriptors() -> None:
    methods = dict(p2pep_methods())
    assert len(methods) > 25
    assert set(methods) == {m for m in ACCESS if not m.startswith("/grpc.health")}


def test_every_hostile_request_names_the_victim_and_is_refused_by_the_table() -> None:
    victim = Victim("meter-3", "meter-1", contract_id="c-of-meter-2-and-meter-3")
    admitted = set()
    for path, method in p2pep_methods():
        req = hostile_request(method, victim)
        assert refusal(path, None, req) == grpc.StatusCode.UNAUTHENTICATED, path
        code = refusal(path, ATTACKER, req)
        if code is None:
            admitted.add(path)
            assert ACCESS[path].meter == (), path  # only where the service itself checks the rest
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (path, code)
    assert admitted == SERVICE_CHECKED


def test_hostile_requests_name_the_victim_in_every_meter_field() -> None:
    victim = Victim("meter-3", "meter-1")
    for path, method in p2pep_methods():
        for field_path in ACCESS[path].meter or ():
            from p2pep.access import field_values

            values, _ = field_values(hostile_request(method, victim), field_path)
            assert values and set(values) == {"meter-3"}, (path, field_path, values)


@pytest.mark.parametrize("site", ["portal", "console"])
def test_every_web_route_has_a_known_answer_for_hostile_callers(site: str) -> None:
    routes = web_routes(portal_app() if site == "portal" else console_app())
    assert ("GET", "/") in routes and ("GET", "/metrics") in routes
    public = public_routes(site)
    for method, path in routes:
        answer = no_session_answer(site, method, path)
        assert answer in (200, 303, 401, 409), (method, path)
        if path not in public:
            assert answer in (303, 401), (method, path)  # nothing without a session
    signed_in = {(m, p) for m, p in routes if p not in public and m != "HEAD"}
    if site == "portal":
        assert signed_in == set(PORTAL_OTHER_ACCOUNT)
    assert {(m, p) for m, p in routes if p in public and m != "HEAD"} <= set(PUBLIC_ANSWERS)


async def test_the_enumerated_calls_against_in_process_services(tmp_path: Path) -> None:
    """The same calls as the regtest suite, against settlement, the matcher and a meter in
    process (real mTLS and interceptors): without a certificate the handshake refuses every
    one (UNAVAILABLE); with another meter's, every one but ``ListMeters`` is refused, and each
    streaming kind (unary, server, client and bidirectional streams) goes through ``call_any``.
    The victim's contract does not exist here: the service's own party checks may answer
    NOT_FOUND (the regtest suite names a real contract of the victim)."""
    h = Harness(tmp_path / "settlement")
    victim_meter = FakeMeter("meter-3")
    meter_target = await h.start_meter(victim_meter)
    _, _, settlement = await h.start_settlement()
    matcher = await start_matcher(settings(tmp_path))
    targets = {"p2pep.v1.SettlementService": (settlement.grpc_target, "settlement"),
               "p2pep.v1.MatcherService": (matcher.target, "matcher"),
               "p2pep.v1.MeterService": (meter_target, "meter-3"),
               "p2pep.v1.EnrollmentService": (settlement.grpc_target, "settlement")}
    victim = Victim("meter-3", "meter-1", contract_id="c-1")
    try:
        for path, method in p2pep_methods():
            service = path.split("/")[1]
            if service not in targets:
                continue  # the anchor needs btcd and lnd: the regtest suite calls it
            target, peer = targets[service]
            req = hostile_request(method, victim)
            seen = server_calls_seen()
            async with dial_without_certificate(target, peer) as ch:
                assert (await call_any(ch, path, method, req, timeout=5)).code == grpc.StatusCode.UNAVAILABLE, path
            assert server_calls_seen() == seen, path  # refused at the handshake: no interceptor, no handler ran
            async with dial(target, peer, as_=Identity("meter", "meter-1")) as ch:
                got = await call_any(ch, path, method, req, timeout=5)
            if got.code != grpc.StatusCode.UNIMPLEMENTED:  # ... while a call with a certificate is seen
                assert server_calls_seen() > seen, path
            want = {"/p2pep.v1.SettlementService/ListMeters": {grpc.StatusCode.OK},
                    "/p2pep.v1.EnrollmentService/Enroll": {grpc.StatusCode.UNIMPLEMENTED}}.get(
                        path, {grpc.StatusCode.PERMISSION_DENIED})
            if path in SERVICE_CHECKED:  # no contract c-1 here (the regtest suite names a real one)
                want |= {grpc.StatusCode.NOT_FOUND}
            assert got.code in want, (path, got)
        assert victim_meter.paid == [] and victim_meter.updates == []
    finally:
        await matcher.stop(grace=0.5)
        await h.close()


PORTAL_VALUES = {"meter_id": "home", "order_id": "home:app:demand:1:abcdef", "contract_id": "c-1",
                 "name": "chart.umd.js"}


async def test_every_portal_route_refuses_a_stranger_and_another_household(portal: PortalRig) -> None:  # noqa: F811
    """The portal's routes (from its router) against the portal in process over real meter
    services: without a session, and as household B on household A's meter."""
    routes = [r for r in web_routes(portal_app()) if r[1] not in ("/metrics", "/healthz", "/livez")]  # the rig has no probes
    async with WebClient(portal.base) as a, WebClient(portal.base) as b:
        assert (await a.register("alice", PW))[0] == 201
        assert (await b.register("bob", PW))[0] == 201
        assert (await a.send("POST", "/api/meters", {"meter_id": "home", "code": await portal.code("home")}))[0] == 201
        code = await portal.code("home")
        body = {"name": "alice", "password": "not alice's password", "meter_id": "home", "code": code}
        assert await no_session_wrong("portal", portal.base, routes, PORTAL_VALUES, body) == []
        assert await other_household_wrong(b, routes, PORTAL_VALUES, body) == []
        assert await portal.code("home") == code  # not used up
        assert (await a.get("/api/meters/home/status"))[0] == 200
        assert [m["meter_id"] for m in (await a.get("/api/meters"))[1]["meters"]] == ["home"]


async def test_every_console_route_refuses_a_stranger_and_a_household_session(
        console: tuple[str, Any, Any]) -> None:  # noqa: F811
    """The console's routes (from its router) in process: without a session, and with a
    household's session token as the console's cookie."""
    base = console[0]
    routes = [r for r in web_routes(console_app()) if r[1] not in ("/metrics", "/healthz", "/livez")]  # the rig has no probes
    values = {"contract_id": "c-1", "name": "chart.umd.js"}
    body = {"name": "ops", "password": "not the operator's password", "meter_id": "meter-3", "code": "ABCD-EFGH"}
    assert await no_session_wrong("console", base, routes, values, body) == []
    assert await foreign_session_wrong(base, routes, values, body, "a-portal-session-token") == []


async def test_grpcio_cannot_ask_for_an_optional_client_certificate() -> None:
    """Why a caller without a certificate sees UNAVAILABLE (the handshake) and not
    UNAUTHENTICATED from the auth interceptor (docs/trust-boundary.md): grpcio's server
    credentials map ``require_client_auth`` to "request, require and verify" or to "do not
    request" (nothing in between), and a server that does not request a certificate learns
    nothing of a caller that has one. If a grpcio upgrade changes this, this test says so."""
    seen: list[bool] = []

    class Health(health_pb2_grpc.HealthServicer):
        async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
            seen.append("x509_pem_cert" in context.auth_context())
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    me = tls_as(Identity("service", "settlement"))
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(me.key_pem, me.cert_pem)], root_certificates=me.ca_pem, require_client_auth=False))
    await server.start()
    try:
        async with dial(f"127.0.0.1:{port}", "settlement", as_=Identity("meter", "meter-1")) as ch:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await server.stop(0)
    assert seen == [False]  # a valid client certificate, never asked for: the caller is anonymous
