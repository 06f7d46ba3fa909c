"""Sign-in as aiohttp middlewares and routes, shared by the portal and the console.

:meth:`WebAuth.install` adds, outermost first:

1. **security headers** on every answer (no framing, no sniffing, same-origin referrer);
2. **Host check**: a request for a host not in the allowed list is answered 421 (400 if the
   Host header is missing or malformed) before anything else runs; ``/metrics``,
   ``/healthz`` and ``/livez`` are exempt (probes and scrapers dial addresses, not names);
3. **session**: the session cookie is looked up (server side) and put on the request
   (``request["session"]``, or None);
4. **CSRF**: every POST/PUT/PATCH/DELETE needs the ``X-CSRF-Token`` header equal to the
   session's token (before sign-in: to the pre-session cookie ``GET /api/session`` sets); an
   ``Origin`` naming another host, or ``Sec-Fetch-Site: cross-site``, is refused too: 403;
5. **sign-in required**: every route not in ``public`` answers 401 (``/api/...``) or
   redirects to ``/signin`` (pages) without a session.

Routes: ``GET /signin`` (the page), ``GET /api/session`` (who is signed in, the CSRF token),
``POST /api/signin``, ``POST /api/signout``, and ``POST /api/register`` where accounts may
register themselves (the portal; operators are added by ``p2pep operator add``).

Sign-in failures are rate-limited per account name and per client address (429 with
``Retry-After``); while limited, even the right password is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from p2pep.webauth import metrics
from p2pep.webauth.hosts import host_name, host_verdict
from p2pep.webauth.names import name_problem, normalize_name
from p2pep.webauth.passwords import Passwords, password_problem
from p2pep.webauth.ratelimit import RateLimiter
from p2pep.webauth.store import AuthStore, NameTaken, Session, new_token

log = structlog.get_logger("webauth")

SIGNIN_PAGE = Path(__file__).with_name("static") / "signin.html"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALWAYS_PUBLIC = frozenset({"/metrics", "/healthz", "/livez"})
AUTH_PUBLIC = frozenset({"/signin", "/api/session", "/api/signin", "/api/register"})
SESSION_KEY = web.RequestKey[Session | None]("session")
MAX_FIELD = 1024


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def too_many(what: str, wait: int) -> web.Response:
    """429 with ``Retry-After``."""
    return web.json_response({"error": f"too many {what}; try again in {wait} s", "retry_after_s": wait},
                             status=429, headers={"Retry-After": str(wait)})


@dataclass(frozen=True)
class AuthConfig:
    """What :class:`WebAuth` needs of the settings (:class:`p2pep.settings.webauth.WebAuthSettings`)."""

    site: str  # "portal", "console": names the cookies (both may run on one host name)
    title: str
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    session_ttl_s: int = 8 * 3600
    cookie_secure: bool = False
    signin_failures_per_account: int = 5
    signin_failures_per_client: int = 20
    registrations_per_client: int = 10
    limit_window_s: float = 300.0
    can_register: bool = False
    public: frozenset[str] = field(default_factory=frozenset)  # more routes open without a session

    @classmethod
    def from_settings(cls, s: Any, site: str, title: str, can_register: bool) -> AuthConfig:
        return cls(site=site, title=title, allowed_hosts=tuple(s.allowed_hosts), session_ttl_s=s.session_ttl_s,
                   cookie_secure=s.cookie_secure, signin_failures_per_account=s.signin_failures_per_account,
                   signin_failures_per_client=s.signin_failures_per_client,
                   registrations_per_client=s.registrations_per_client, limit_window_s=s.limit_window_s,
                   can_register=can_register)


def session_of(request: web.Request) -> Session:
    """The request's session (behind :class:`WebAuth`'s sign-in check it is always there)."""
    s = request.get(SESSION_KEY)
    if not isinstance(s, Session):
        raise web.HTTPUnauthorized(text='{"error": "sign in first"}', content_type="application/json")
    return s


async def json_body(request: web.Request, *names: str) -> dict[str, str]:
    """The named string fields of a JSON object body; a 400 (as :class:`web.HTTPBadRequest`) otherwise."""
    def bad(msg: str) -> web.HTTPBadRequest:
        return web.HTTPBadRequest(text=web.json_response({"error": msg}).text, content_type="application/json")

    if request.content_type != "application/json":
        raise bad("send a JSON body (Content-Type: application/json)")
    try:
        body = await request.json()
    except ValueError:
        raise bad("the body is not JSON") from None
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    out = {}
    for n in names:
        v = body.get(n)
        if not isinstance(v, str) or not v or len(v) > MAX_FIELD:
            raise bad(f"{n}: required, a string of 1 to {MAX_FIELD} characters")
        out[n] = v
    return out


class WebAuth:
    def __init__(self, store: AuthStore, config: AuthConfig, passwords: Passwords | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store, self.cfg = store, config
        self.passwords = passwords or Passwords()
        self.clock = clock  # wall time (session expiry); ``monotonic`` paces the rate limits
        c = config
        self.per_account = RateLimiter(c.signin_failures_per_account, c.limit_window_s, clock=monotonic)
        self.per_client = RateLimiter(c.signin_failures_per_client, c.limit_window_s, clock=monotonic)
        self.registrations = RateLimiter(c.registrations_per_client, c.limit_window_s, clock=monotonic)
        self.session_cookie = f"p2pep_{c.site}_session"
        self.csrf_cookie = f"p2pep_{c.site}_csrf"
        self.public = ALWAYS_PUBLIC | AUTH_PUBLIC | c.public

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def install(self, app: web.Application) -> None:
        """Add the middlewares and the sign-in routes (before the app starts)."""
        app.middlewares.extend([self._headers, self._host_check, self._session, self._csrf, self._signed_in])
        app.router.add_get("/signin", self._signin_page)
        app.router.add_get("/api/session", self._get_session)
        app.router.add_post("/api/signin", self._signin)
        app.router.add_post("/api/signout", self._signout)
        if self.cfg.can_register:
            app.router.add_post("/api/register", self._register)

    # --- middlewares ---------------------------------------------------------------------------
    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as e:  # answered as a response (with the headers below), JSON if an error
            if e.status < 400:
                resp = web.Response(status=e.status, headers={k: v for k, v in e.headers.items() if k == "Location"})
            elif e.content_type == "application/json":
                resp = web.Response(status=e.status, text=e.text, content_type="application/json")
            else:
                resp = json_error(e.status, e.reason)
            if "Allow" in e.headers:
                resp.headers["Allow"] = e.headers["Allow"]
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'; form-action 'self'")
        return resp

    @web.middleware
    async def _host_check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ALWAYS_PUBLIC:
            return await handler(request)
        verdict = host_verdict(request.headers.get("Host"), self.cfg.allowed_hosts)
        if verdict != "ok":
            metrics.REFUSED.labels(self.cfg.site, "host").inc()
        if verdict == "missing" or verdict == "malformed":
            return json_error(400, f"Host header {verdict}")
        if verdict != "ok":
            return json_error(421, f"this server does not answer for host {request.headers.get('Host', '')!r}")
        return await handler(request)

    @web.middleware
    async def _session(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request.cookies.get(self.session_cookie)
        request[SESSION_KEY] = await self.store.session(token, self.now_ms()) if token else None
        return await handler(request)

    @web.middleware
    async def _csrf(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in UNSAFE:
            return await handler(request)
        problem = self._csrf_problem(request)
        if problem is not None:
            metrics.REFUSED.labels(self.cfg.site, "csrf").inc()
            return json_error(403, problem)
        return await handler(request)

    def _csrf_problem(self, request: web.Request) -> str | None:
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return "CSRF: cross-site request refused"
        origin = request.headers.get("Origin")
        if origin is not None:
            authority = origin.split("://", 1)[-1]
            if origin == "null" or host_name(authority) != host_name(request.headers.get("Host", "")):
                return "CSRF: request from another origin refused"
        s = request[SESSION_KEY]
        expected = s.csrf_token if s is not None else request.cookies.get(self.csrf_cookie, "")
        given = request.headers.get("X-CSRF-Token", "")
        if not expected or not given or not hmac.compare_digest(expected.encode(), given.encode()):
            return "CSRF token missing or wrong (GET /api/session gives it; send it as the X-CSRF-Token header)"
        return None

    @web.middleware
    async def _signed_in(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request[SESSION_KEY] is not None or request.path in self.public:
            return await handler(request)
        metrics.REFUSED.labels(self.cfg.site, "unauthenticated").inc()
        if request.path.startswith("/api/") or request.method != "GET":
            return json_error(401, "sign in first")
        raise web.HTTPSeeOther("/signin")

    # --- routes --------------------------------------------------------------------------------
    async def _signin_page(self, request: web.Request) -> web.StreamResponse:
        if request[SESSION_KEY] is not None:
            raise web.HTTPSeeOther("/")
        return web.FileResponse(SIGNIN_PAGE, headers={"Cache-Control": "no-cache"})

    async def _get_session(self, request: web.Request) -> web.Response:
        s = request[SESSION_KEY]
        base = {"site": self.cfg.site, "title": self.cfg.title, "can_register": self.cfg.can_register}
        if s is not None:
            return web.json_response({**base, "signed_in": True, "account": s.account_name,
                                      "csrf_token": s.csrf_token}, headers={"Cache-Control": "no-store"})
        token = request.cookies.get(self.csrf_cookie) or new_token()
        resp = web.json_response({**base, "signed_in": False, "csrf_token": token},
                                 headers={"Cache-Control": "no-store"})
        self._set_cookie(resp, self.csrf_cookie, token, None)
        return resp

    def _set_cookie(self, resp: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
        resp.set_cookie(name, value, httponly=True, samesite="Strict", secure=self.cfg.cookie_secure, path="/",
                        max_age=max_age)

    async def _start_session(self, request: web.Request, account_id: int, status: int = 200) -> web.Response:
        old = request.cookies.get(self.session_cookie)
        if old:  # a new id at every sign-in (no fixation)
            await self.store.delete_session(old)
        token, s = await self.store.create_session(account_id, self.now_ms(), self.cfg.session_ttl_s * 1000)
        resp = web.json_response({"signed_in": True, "account": s.account_name, "csrf_token": s.csrf_token},
                                 status=status)
        self._set_cookie(resp, self.session_cookie, token, self.cfg.session_ttl_s)
        resp.del_cookie(self.csrf_cookie, path="/")
        return resp

    def client_key(self, request: web.Request) -> str:
        return f"client:{request.remote or '?'}"

    async def _signin(self, request: web.Request) -> web.Response:
        body = await json_body(request, "name", "password")
        name = normalize_name(body["name"])
        keys = (self.per_account, f"account:{name}"), (self.per_client, self.client_key(request))
        wait = max(limiter.retry_after(k) for limiter, k in keys)
        if wait:
            log.warning("sign-in rate limited", site=self.cfg.site)
            metrics.SIGNINS.labels(self.cfg.site, "limited").inc()
            return too_many("failed sign-ins", wait)
        account = await self.store.account(name)
        ok = await asyncio.to_thread(self.passwords.verify, account.password_hash if account else None,
                                     body["password"])
        if account is None or not ok:
            for limiter, k in keys:
                limiter.hit(k)
            log.info("sign-in failed", site=self.cfg.site)
            metrics.SIGNINS.labels(self.cfg.site, "wrong").inc()
            return json_error(401, "wrong name or password")
        self.per_account.reset(f"account:{name}")
        if self.passwords.needs_rehash(account.password_hash):
            await self.store.set_password_hash(account.id, await asyncio.to_thread(self.passwords.hash,
                                                                                    body["password"]))
        await self.store.purge_expired(self.now_ms())
        log.info("signed in", site=self.cfg.site, account=account.id)
        metrics.SIGNINS.labels(self.cfg.site, "ok").inc()
        return await self._start_session(request, account.id)

    async def _signout(self, request: web.Request) -> web.Response:
        token = request.cookies.get(self.session_cookie)
        if token:
            await self.store.delete_session(token)
        resp = web.json_response({"signed_in": False})
        resp.del_cookie(self.session_cookie, path="/")
        return resp

    async def _register(self, request: web.Request) -> web.Response:
        key = self.client_key(request)
        wait = self.registrations.retry_after(key)
        if wait:
            return too_many("registrations", wait)
        self.registrations.hit(key)
        body = await json_body(request, "name", "password")
        name = normalize_name(body["name"])
        if (problem := name_problem(name)) is not None:
            return json_error(400, f"name: {problem}", param="name")
        if (problem := password_problem(body["password"])) is not None:
            return json_error(400, f"password: {problem}", param="password")
        digest = await asyncio.to_thread(self.passwords.hash, body["password"])
        try:
            account = await self.store.create_account(name, digest, self.now_ms())
        except NameTaken:
            return json_error(409, "name: already taken", param="name")
        log.info("account registered", site=self.cfg.site, account=account.id)
        return await self._start_session(request, account.id, status=201)
