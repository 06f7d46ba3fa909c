"""The meter's display, served on its HTTP port (beside ``/metrics``): the meter's id and
the pairing code a household types into its portal account to add this meter.

* ``GET /``: the display page; ``GET /api/pairing``: ``{"meter_id", "code", "expires_in_s"}``.

It shows no household data (status, contracts and payments are in the household portal,
behind a sign-in). A Host header check (``P2PEP_METER_DISPLAY_ALLOWED_HOSTS``) keeps a
hostile web page from reading the code through DNS rebinding. In a deployment this page is
the meter's own screen: its port belongs on a local interface.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from p2pep.metering.pairing import PairingCodes
from p2pep.servicekit.http import static_page
from p2pep.webauth.hosts import host_verdict

PAGE = Path(__file__).with_name("static") / "display.html"
UNCHECKED = frozenset({"/metrics", "/healthz", "/livez"})


def add_display_routes(app: web.Application, meter_id: str, pairing: PairingCodes,
                       allowed_hosts: Iterable[str]) -> None:
    """Mount the display on the meter's HTTP app (before the host starts)."""
    hosts = tuple(allowed_hosts)

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in UNCHECKED:
            verdict = host_verdict(request.headers.get("Host"), hosts)
            if verdict != "ok":
                return web.json_response({"error": f"Host header {verdict}"}, status=421 if verdict == "not allowed"
                                         else 400)
        resp = await handler(request)
        resp.headers.setdefault("X-Frame-Options", "DENY")
        return resp

    async def code(_: web.Request) -> web.Response:
        shown = pairing.current()
        return web.json_response({"meter_id": meter_id, "code": shown.code, "expires_in_s": shown.expires_in_s},
                                 headers={"Cache-Control": "no-store"})

    app.middlewares.append(host_check)
    app.router.add_get("/", static_page(PAGE))
    app.router.add_get("/api/pairing", code)
