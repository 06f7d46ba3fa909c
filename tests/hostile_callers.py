"""Hostile callers, enumerated rather than hand-listed (issue 11's acceptance suite).

* :func:`p2pep_methods`: every RPC of every P2PEP service, from the generated descriptors
  (``p2pep.v1.*_pb2``); a new RPC or service is called without editing the tests.
* :func:`hostile_request`: a syntactically valid request for any method, built from its
  input descriptor, that names the victim wherever a field can (``meter_id``, ``order.meter_id``,
  ``meter_ids``, ``contract_id``, ...) and points money at the attacker (``supplier_node``,
  ``payment_request``, ...). ``Victim.overrides`` sharpens fields by name with real data
  (the victim's contract, a real invoice of the attacker's node).
* :func:`call_any`: calls a method by path on a channel, whatever its streaming kind, and
  returns the status code and the answers.
* :func:`web_routes`, :func:`portal_app`, :func:`console_app`: the routes of the portal's and
  the console's aiohttp apps, assembled in process exactly as ``services/portal/__main__.py``
  and ``services/console/__main__.py`` assemble them (the same ``build_http_app``,
  ``WebAuth.install`` and ``add_*_routes``), so the list is the router's, never a copy.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

import p2pep.v1
from p2pep.servicekit.http import build_http_app
from p2pep.webauth.web import AuthConfig, WebAuth
from services.console.reports import Reports
from services.console.web import Console, add_console_routes
from services.portal.household import Household
from services.portal.web import Portal, add_portal_routes

TAG = "hostile"


def p2pep_methods() -> list[tuple[str, MethodDescriptor]]:
    """``("/p2pep.v1.Service/Method", descriptor)`` for every RPC of every P2PEP proto."""
    out = []
    for info in pkgutil.iter_modules(p2pep.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"p2pep.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            out += [(f"/{service.full_name}/{m.name}", m) for m in service.methods]
    return sorted(out, key=lambda x: x[0])


@dataclass
class Victim:
    """Whom the hostile calls target and in whose favour."""

    meter_id: str  # the victim meter
    attacker: str  # the meter whose certificate calls
    contract_id: str = f"{TAG}-contract"  # a contract of the victim the attacker is no party of
    attacker_node: str = "02" + "ee" * 32
    overrides: dict[str, Any] = field(default_factory=dict)  # field name -> value


def _string(f: FieldDescriptor, v: Victim, tag: str) -> str:
    name = f.name
    if name in v.overrides:
        return str(v.overrides[name])
    if name == "page_token":  # the first page (a token it never got is refused as INVALID_ARGUMENT)
        return ""
    if name in ("meter_id", "meter_ids", "consumer", "payer"):
        return v.meter_id
    if name in ("supplier", "payee"):
        return v.attacker
    if name in ("contract_id", "renews_contract_id"):
        return v.contract_id
    if name in ("node_pubkey", "supplier_node"):
        return v.attacker_node
    if name in ("address", "node_address"):
        return "127.0.0.1:9"
    if name == "role":
        return "consumer"
    return f"{TAG}-{tag}-{name}"


def _fill(msg: Message, v: Victim, tag: str, depth: int) -> None:
    desc: Descriptor = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Timestamp":
        msg.seconds = int(time.time()) + 600  # type: ignore[attr-defined]
        return
    if desc.full_name == "google.protobuf.Duration":
        msg.seconds = 600  # type: ignore[attr-defined]
        return
    oneofs: set[str] = set()
    for f in desc.fields:
        if f.containing_oneof is not None:
            if f.containing_oneof.name in oneofs:
                continue
            oneofs.add(f.containing_oneof.name)
        repeated = f.is_repeated
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 4:
                continue
            sub = getattr(msg, f.name).add() if repeated else getattr(msg, f.name)
            _fill(sub, v, tag, depth + 1)
            continue
        override = v.overrides.get(f.name)
        if f.type == FieldDescriptor.TYPE_STRING:
            value: Any = _string(f, v, tag)
        elif isinstance(override, int) and f.type not in (FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_BOOL):
            value = override
        elif f.type == FieldDescriptor.TYPE_BYTES:
            value = b"\x01" * 32
        elif f.type == FieldDescriptor.TYPE_BOOL:
            value = False
        elif f.type == FieldDescriptor.TYPE_ENUM:
            values = [e.number for e in f.enum_type.values if e.number != 0]
            value = values[-1] if values else 0
        else:  # integers: small and positive (a hostile order, an increment, a limit)
            value = 10
        if repeated:
            getattr(msg, f.name).append(value)
        else:
            setattr(msg, f.name, value)


def hostile_request(method: MethodDescriptor, victim: Victim) -> Message:
    """A valid ``method.input_type`` message that acts for, or reads, ``victim.meter_id``."""
    msg = GetMessageClass(method.input_type)()
    _fill(msg, victim, method.name, 0)
    return msg


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    answers: list[Message]


async def call_any(ch: grpc.aio.Channel, path: str, method: MethodDescriptor, request: Message,
                   timeout: float = 10.0) -> Outcome:
    """Call ``path`` with ``request`` (a client stream sends just it) and read every answer."""
    ser = type(request).SerializeToString
    des = GetMessageClass(method.output_type).FromString
    answers: list[Message] = []
    try:
        if method.client_streaming and method.server_streaming:
            stream = ch.stream_stream(path, request_serializer=ser, response_deserializer=des)(
                iter([request]), timeout=timeout)
            answers = [a async for a in stream]
        elif method.server_streaming:
            stream = ch.unary_stream(path, request_serializer=ser, response_deserializer=des)(request, timeout=timeout)
            answers = [a async for a in stream]
        elif method.client_streaming:
            answers = [await ch.stream_unary(path, request_serializer=ser, response_deserializer=des)(
                iter([request]), timeout=timeout)]
        else:
            answers = [await ch.unary_unary(path, request_serializer=ser, response_deserializer=des)(
                request, timeout=timeout)]
    except grpc.aio.AioRpcError as e:
        return Outcome(e.code(), e.details() or "", answers)
    return Outcome(grpc.StatusCode.OK, "", answers)


# --- HTTP ----------------------------------------------------------------------------------------


def web_routes(app: web.Application) -> list[tuple[str, str]]:
    """``(METHOD, path template)`` of every route of ``app`` (HEAD included, as aiohttp adds it)."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, route
        out.add((route.method, str(path)))
    return sorted(out)


def _auth(site: str, can_register: bool) -> WebAuth:
    return WebAuth(None, AuthConfig(site=site, title=site, can_register=can_register))  # type: ignore[arg-type]


def portal_app() -> web.Application:
    """The portal's app as ``services.portal.__main__`` assembles it (no store, no links: routes only)."""
    app = build_http_app(lambda: True)
    auth = _auth("portal", can_register=True)
    auth.install(app)
    add_portal_routes(app, Portal(None, auth, None, 1.0), Household(None, 1.0))  # type: ignore[arg-type]
    return app


def console_app() -> web.Application:
    """The console's app as ``services.console.__main__`` assembles it (routes only)."""
    app = build_http_app(lambda: True)
    add_console_routes(app, Console(None, None, 1.0), _auth("console", can_register=False),  # type: ignore[arg-type]
                       Reports(None, 1.0))  # type: ignore[arg-type]
    return app


def public_routes(site: str) -> frozenset[str]:
    """The paths answered without a session on ``site`` (WebAuth's own notion)."""
    return _auth(site, can_register=site == "portal").public


def expand(path: str, values: Mapping[str, str]) -> str:
    """``/api/meters/{meter_id}/status`` with ``values`` filled in."""
    for k, val in values.items():
        path = path.replace("{" + k + "}", val)
    assert "{" not in path, path
    return path


# What each route answers a hostile caller. Every route of the router must be in exactly one
# of these (tests/test_hostile_callers.py checks it), so a new route is considered here first.
# Bodies sent: ``{"name": <the victim household's name>, "password": <wrong>, "meter_id":
# <the victim's meter>, "code": <its current pairing code>}``; HEAD answers as GET.

PUBLIC_ANSWERS: dict[tuple[str, str], int] = {
    ("GET", "/metrics"): 200,  # Prometheus (no household data)
    ("GET", "/healthz"): 200,
    ("GET", "/livez"): 200,
    ("GET", "/signin"): 200,  # the sign-in page (303 to / once signed in)
    ("GET", "/api/session"): 200,  # signed_in false (or the caller's own account) and a CSRF token
    ("POST", "/api/signin"): 401,  # the victim's name with a wrong password
    ("POST", "/api/register"): 409,  # the victim's name: taken (portal only)
}
"""Public routes (open without a session, by design) and what a stranger gets."""

PORTAL_OTHER_ACCOUNT: dict[tuple[str, str], int] = {
    ("GET", "/"): 200,  # the app's page (static; it shows the caller's own account)
    ("GET", "/api/meters"): 200,  # the caller's own meters: the victim's is not among them
    ("POST", "/api/meters"): 409,  # pairing the victim's meter: it belongs to another account
    ("DELETE", "/api/meters/{meter_id}"): 404,
    ("GET", "/api/meters/{meter_id}/status"): 404,
    ("GET", "/api/meters/{meter_id}/contracts"): 404,
    ("GET", "/api/meters/{meter_id}/payments"): 404,
    # the household app's views and trades: none for another account's meter
    ("GET", "/api/meters/{meter_id}/orders"): 404,
    ("POST", "/api/meters/{meter_id}/orders"): 404,
    ("DELETE", "/api/meters/{meter_id}/orders/{order_id}"): 404,
    ("GET", "/api/meters/{meter_id}/wallet"): 404,
    ("POST", "/api/meters/{meter_id}/address"): 404,
    ("GET", "/api/meters/{meter_id}/energy"): 404,
    ("GET", "/api/meters/{meter_id}/activity"): 404,
    ("GET", "/api/meters/{meter_id}/contracts/{contract_id}/document"): 404,
    ("GET", "/api/meters/{meter_id}/peers"): 404,
    ("GET", "/api/meters/{meter_id}/events"): 404,
    ("GET", "/static/{name}"): 200,  # the app's chart library (no household data)
    ("POST", "/api/signout"): 200,  # ends the caller's own session (called last)
}
"""The portal's signed-in routes, called by another household for the victim's meter."""


def no_session_answer(site: str, method: str, path: str) -> int:
    """What a caller without a session gets (with a pre-session CSRF token on unsafe methods)."""
    if path in public_routes(site):
        return PUBLIC_ANSWERS[("GET" if method == "HEAD" else method, path)]
    if path.startswith("/api/") or method != "GET":
        return 401  # (HEAD of a page too: WebAuth redirects only a GET)
    return 303  # a page: to /signin


async def hit(c: Any, method: str, path: str, body: Mapping[str, str], csrf: bool = True) -> int:
    """The status ``method path`` answers ``c`` (a ``web_helpers.WebClient``), its CSRF token sent or not."""
    headers = {"X-CSRF-Token": c.csrf} if csrf and c.csrf else {}
    unsafe = method not in ("GET", "HEAD")
    async with c.http.request(method, path, json=dict(body) if unsafe else None, headers=headers,
                              allow_redirects=False) as r:
        await r.read()
        return int(r.status)


async def no_session_wrong(site: str, base: str, routes: list[tuple[str, str]], values: Mapping[str, str],
                           body: Mapping[str, str]) -> list[str]:
    """Every route without a session (with a pre-session CSRF token, and without any token for
    unsafe methods): what answered otherwise than :func:`no_session_answer` / 403."""
    from web_helpers import WebClient

    wrong = []
    async with WebClient(base) as bare, WebClient(base) as stranger:
        await stranger.refresh()  # a pre-session CSRF token: unsafe calls reach the sign-in check
        for method, path in routes:
            url = expand(path, values)
            got = await hit(stranger, method, url, body)
            if got != no_session_answer(site, method, path):
                wrong.append(f"(c) no session: {site} {method} {path}: {got}")
            if method not in ("GET", "HEAD") and (got := await hit(bare, method, url, body, csrf=False)) != 403:
                wrong.append(f"(c) no CSRF token: {site} {method} {path}: {got}")
    return wrong


async def other_household_wrong(b: Any, routes: list[tuple[str, str]], values: Mapping[str, str],
                                body: Mapping[str, str]) -> list[str]:
    """Every portal route as household ``b`` (a signed-in ``WebClient``) on another account's
    meter ``values["meter_id"]``: what answered otherwise than :data:`PORTAL_OTHER_ACCOUNT` (sign-out last)."""
    import json

    wrong = []
    ordered = [r for r in routes if r[1] != "/api/signout"] + [r for r in routes if r[1] == "/api/signout"]
    for method, path in ordered:
        key = ("GET" if method == "HEAD" else method, path)
        want = PORTAL_OTHER_ACCOUNT.get(key) or PUBLIC_ANSWERS[key]
        if key == ("GET", "/signin"):
            want = 303  # signed in: to the app
        url = expand(path, values)
        got = await hit(b, method, url, body)
        if got != want:
            wrong.append(f"(c) another household: portal {method} {path}: {got} (want {want})")
        if key == ("GET", "/api/meters"):
            _, listed = await b.get(url)
            if values["meter_id"] in json.dumps(listed):
                wrong.append(f"(c) another household sees the meter: {listed}")
    return wrong


async def foreign_session_wrong(base: str, routes: list[tuple[str, str]], values: Mapping[str, str],
                                body: Mapping[str, str], token: str) -> list[str]:
    """Every console route with ``token`` (a household's portal session) as the console's
    session cookie: it must be no session at all there (the stores are apart)."""
    from web_helpers import WebClient

    wrong = []
    async with WebClient(base) as c:
        await c.refresh()
        c.http.cookie_jar.update_cookies({"p2pep_console_session": token})
        sent = [k.key for k in c.http.cookie_jar]
        assert "p2pep_console_session" in sent, sent
        for method, path in routes:
            got = await hit(c, method, expand(path, values), body)
            if got != no_session_answer("console", method, path):
                wrong.append(f"(c) a household's session at the console: {method} {path}: {got}")
    return wrong
