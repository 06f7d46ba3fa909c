"""Sign-in machinery (p2pep.webauth): the pure pieces, then the middlewares on a real aiohttp
server (register, sign-in, sign-out, CSRF, rate limits, Host check, no data without a session)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from web_helpers import WebClient

from p2pep.metering.pairing import PairingCodes, PairingRefused, normalize_code
from p2pep.regtest.ports import free_port
from p2pep.webauth.accounts import AccountError, set_account
from p2pep.webauth.hosts import host_name, host_verdict
from p2pep.webauth.names import name_problem, normalize_name
from p2pep.webauth.passwords import cheap_passwords, password_problem
from p2pep.webauth.ratelimit import RateLimiter
from p2pep.webauth.redact import without_secrets
from p2pep.webauth.store import AuthStore, token_digest
from p2pep.webauth.web import AuthConfig, WebAuth, session_of

PW = "correct horse battery"


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- pure pieces --------------------------------------------------------------------------------

def test_rate_limiter_allows_limit_per_window_then_says_how_long_to_wait() -> None:
    clock = Clock()
    rl = RateLimiter(3, 60, clock=clock)
    for _ in range(3):
        assert rl.retry_after("a") == 0
        rl.hit("a")
    assert rl.retry_after("a") == 60 and rl.retry_after("b") == 0
    clock.t += 30
    assert rl.retry_after("a") == 30
    clock.t += 30.5
    assert rl.retry_after("a") == 0
    rl.hit("a")
    rl.reset("a")
    assert rl.retry_after("a") == 0


def test_rate_limiter_memory_is_bounded() -> None:
    rl = RateLimiter(1, 60, clock=Clock(), max_keys=100)
    for i in range(1000):
        rl.hit(f"k{i}")
    assert len(rl._events) == 100
    assert rl.retry_after("k999") > 0 and rl.retry_after("k0") == 0  # the oldest were forgotten


@pytest.mark.parametrize("header,verdict", [
    ("127.0.0.1:8080", "ok"), ("LOCALHOST", "ok"), ("[::1]:80", "ok"), ("localhost.", "not allowed"),
    ("evil.example:80", "not allowed"), ("", "missing"), (None, "missing"), ("a b", "malformed"),
    ("127.0.0.1:8080/x", "malformed"), ("host:99999999", "malformed"),
])
def test_host_verdicts(header: str | None, verdict: str) -> None:
    assert host_verdict(header, ["127.0.0.1", "localhost", "::1"]) == verdict


def test_host_wildcard_and_names() -> None:
    assert host_verdict("anything.example", ["*"]) == "ok"
    assert host_name("Portal.Example:443") == "portal.example"


@pytest.mark.parametrize("raw,ok", [("alice", True), ("Alice@Example.org", True), ("al", False), ("a b", False),
                                     ("x" * 65, False), ("bob@", False), ("-bob", False), ("meter.owner_3", True)])
def test_account_names(raw: str, ok: bool) -> None:
    assert (name_problem(normalize_name(raw)) is None) == ok


def test_password_rules_and_hashing() -> None:
    assert password_problem("short") and password_problem("aaaaaaaaaaaa") and password_problem("x" * 300)
    assert password_problem(PW) is None
    pw = cheap_passwords()
    h = pw.hash(PW)
    assert h.startswith("$argon2id$") and PW not in h
    assert pw.verify(h, PW) and not pw.verify(h, PW + "!") and not pw.verify(None, PW)
    assert not pw.verify("not a hash", PW)


def test_pairing_code_once_only_expiring_and_locked_after_wrong_tries() -> None:
    clock = Clock()
    codes = iter(["AAAABBBB", "CCCCDDDD", "EEEEFFFF", "GGGGHHHH", "JJJJKKKK"])
    p = PairingCodes(ttl_s=600, max_failures=3, lockout_s=60, clock=clock, make_code=lambda: next(codes))
    assert p.current().code == "AAAA-BBBB"
    p.claim("aaaa-bbbb")  # as typed: case and dash do not matter
    with pytest.raises(PairingRefused):
        p.claim("AAAA-BBBB")  # once only
    assert p.current().code == "CCCC-DDDD"
    clock.t += 601
    with pytest.raises(PairingRefused):
        p.claim("CCCCDDDD")  # expired
    assert p.current().code == "EEEE-FFFF"
    for _ in range(3):
        with pytest.raises(PairingRefused) as e:
            p.claim("WRONGONE")
        assert not e.value.locked
    assert p.current().code == "GGGG-HHHH"  # a new code after the third wrong one
    with pytest.raises(PairingRefused) as e:
        p.claim("GGGGHHHH")  # locked, even with the right code
    assert e.value.locked and e.value.retry_after_s > 0
    clock.t += 61
    p.claim("GGGGHHHH")
    assert normalize_code(" ab-cd ") == "ABCD"


def test_preimages_are_dropped_at_any_depth() -> None:
    doc = {"payments": [{"preimage": "00" * 32, "amount_msat": "5"}], "x": {"r_preimage": "y", "keep": 1}}
    assert without_secrets(doc) == {"payments": [{"amount_msat": "5"}], "x": {"keep": 1}}


async def test_sessions_are_stored_hashed_and_expire(tmp_path: Path) -> None:
    store = await AuthStore.open(str(tmp_path / "auth.db"))
    try:
        acct = await store.create_account("alice", "h", 0)
        token, s = await store.create_session(acct.id, now_ms=1000, ttl_ms=500)
        assert s.account_name == "alice" and s.csrf_token and s.expires_ms == 1500
        rows = await store.db.fetchall("SELECT token_sha256 FROM sessions")
        assert [r[0] for r in rows] == [token_digest(token)]  # the token itself is not stored
        assert await store.session(token, 1499) == s
        assert await store.session(token, 1500) is None
        assert await store.db.scalar("SELECT count(*) FROM sessions") == 0  # the expired one is gone
    finally:
        await store.close()


async def test_set_account_validates_and_resets_sessions(tmp_path: Path) -> None:
    db = str(tmp_path / "auth.db")
    with pytest.raises(AccountError, match="password"):
        await set_account(db, "ops", "short", cheap_passwords())
    with pytest.raises(AccountError, match="name"):
        await set_account(db, "o", PW, cheap_passwords())
    assert await set_account(db, "Ops", PW, cheap_passwords()) == "ops"
    store = await AuthStore.open(db)
    acct = await store.account("ops")
    assert acct is not None
    await store.create_session(acct.id, 0, 10**12)
    await store.close()
    await set_account(db, "ops", PW + "2", cheap_passwords())
    store = await AuthStore.open(db)
    assert await store.db.scalar("SELECT count(*) FROM sessions") == 0
    await store.close()


# --- the middlewares on a real server -------------------------------------------------------------

Site = tuple[str, WebAuth]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    store = await AuthStore.open(str(tmp_path / "auth.db"))
    auth = WebAuth(store, AuthConfig(site="test", title="Test", can_register=True, signin_failures_per_account=3,
                                     signin_failures_per_client=6, registrations_per_client=5, session_ttl_s=3600),
                   passwords=cheap_passwords(), clock=Clock(time.time()))
    app = web.Application()
    auth.install(app)

    async def mine(req: web.Request) -> web.Response:
        return web.json_response({"account": session_of(req).account_name})

    async def change(req: web.Request) -> web.Response:
        return web.json_response({"changed": True})

    async def page(req: web.Request) -> web.Response:
        return web.Response(text="<p>secret page</p>", content_type="text/html")

    async def healthz(req: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})

    app.router.add_get("/", page)
    app.router.add_get("/api/mine", mine)
    app.router.add_post("/api/change", change)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", auth
    await runner.cleanup()
    await store.close()


async def test_register_sign_in_sign_out(site: Site) -> None:
    base, _ = site
    async with WebClient(base) as c:
        status, body = await c.register("Alice", PW)
        assert status == 201 and body["account"] == "alice"
        assert await c.get("/api/mine") == (200, {"account": "alice"})
        cookies = {m.key: m for m in c.http.cookie_jar}
        sess = cookies["p2pep_test_session"]
        assert sess["httponly"] and sess["samesite"] == "Strict"
        assert (await c.signout())[0] == 200
        assert (await c.get("/api/mine"))[0] == 401
        assert (await c.signin("alice", "wrong password!"))[0] == 401
        status, body = await c.signin("ALICE", PW)
        assert status == 200 and body["account"] == "alice"
        assert (await c.get("/api/mine"))[1] == {"account": "alice"}
    async with WebClient(base) as other:
        assert (await other.register("alice", PW))[0] == 409
        status, body = await other.register("bob", "short")
        assert status == 400 and body["param"] == "password" and body["error"].startswith("password:")


async def test_sessions_expire_and_sign_in_makes_a_new_one(site: Site) -> None:
    base, auth = site
    assert isinstance(auth.clock, Clock)
    async with WebClient(base) as c:
        await c.register("frank", PW)
        first = next(m.value for m in c.http.cookie_jar if m.key == "p2pep_test_session")
        await c.signin("frank", PW)
        second = next(m.value for m in c.http.cookie_jar if m.key == "p2pep_test_session")
        assert first != second
        assert await auth.store.session(first, auth.now_ms()) is None  # the old one is gone (no fixation)
        assert (await c.get("/api/mine"))[0] == 200
        auth.clock.t += 3599
        assert (await c.get("/api/mine"))[0] == 200
        auth.clock.t += 2
        assert (await c.get("/api/mine"))[0] == 401  # server-side expiry, whatever the cookie says


async def test_nothing_without_a_session(site: Site) -> None:
    base, _ = site
    async with WebClient(base) as c:
        status, body = await c.get("/api/mine")
        assert status == 401 and body == {"error": "sign in first"}
        status, _ = await c.get("/")
        assert status == 303
        async with c.http.get("/", allow_redirects=False) as r:
            assert r.headers["Location"] == "/signin"
        status, body = await c.get("/api/nowhere")
        assert status == 401
        await c.refresh()
        status, body = await c.send("POST", "/api/change")  # a valid pre-session token is no session
        assert status == 401
        c.http.cookie_jar.update_cookies({"p2pep_test_session": "forged"})
        assert (await c.get("/api/mine"))[0] == 401
        async with c.http.get("/signin") as r:
            assert r.status == 200 and "Sign in" in await r.text()


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("p2pep_webauth_refused_total", {"site": "test", "reason": reason}) or 0.0


async def test_csrf_refusals_are_403_json_and_change_nothing(site: Site) -> None:
    base, auth = site
    before = refused("csrf")
    async with WebClient(base) as c:
        await c.refresh()
        status, body = await c.send("POST", "/api/register", {"name": "carol", "password": PW}, csrf="")
        assert status == 403 and "CSRF" in body["error"]
        assert await auth.store.account("carol") is None
        assert (await c.register("carol", PW))[0] == 201
        for token in ("", "wrong", "x" * 43):
            status, body = await c.send("POST", "/api/change", csrf=token)
            assert status == 403 and "CSRF" in body["error"], token
        status, body = await c.send("POST", "/api/change", headers={"Origin": "http://evil.example"})
        assert status == 403 and "origin" in body["error"]
        status, body = await c.send("POST", "/api/change", headers={"Sec-Fetch-Site": "cross-site"})
        assert status == 403
        status, body = await c.send("POST", "/api/signout", csrf="nope")
        assert status == 403
        assert (await c.get("/api/mine"))[0] == 200  # still signed in
        assert await c.send("POST", "/api/change") == (200, {"changed": True})
        assert (await c.send("POST", "/api/change", headers={"Origin": base}))[0] == 200
        # a token of another session does not do
        async with WebClient(base) as d:
            await d.register("dave", PW)
            assert (await c.send("POST", "/api/change", csrf=d.csrf))[0] == 403
    assert refused("csrf") - before == 8  # counted, with bounded labels


async def test_sign_in_rate_limited_per_account_and_per_client(site: Site) -> None:
    base, _ = site
    async with WebClient(base) as c:
        await c.register("erin", PW)
        await c.signout()
        for _ in range(3):
            assert (await c.signin("erin", "not the password"))[0] == 401
        status, body = await c.signin("erin", PW)  # limited: even the right password
        assert status == 429 and body["retry_after_s"] > 0 and "try again" in body["error"]
        async with c.http.post("/api/signin", json={"name": "erin", "password": PW},
                               headers={"X-CSRF-Token": c.csrf}) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) > 0
        # per client: failures on many names from one address
        for i in range(3):
            assert (await c.signin(f"nobody{i}", "not the password"))[0] == 401
        status, _ = await c.signin("someone-else", "whatever password")
        assert status == 429


async def test_registration_rate_limited_per_client(site: Site) -> None:
    base, _ = site
    async with WebClient(base) as c:
        got = []
        for i in range(6):
            c.csrf = ""
            c.http.cookie_jar.clear()
            got.append((await c.register(f"user{i}", PW))[0])
    assert got == [201] * 5 + [429]


@pytest.mark.parametrize("host,status", [("evil.example", 421), ("evil.example:80", 421), ("bad host", 400)])
async def test_host_check(site: Site, host: str, status: int) -> None:
    base, _ = site
    async with aiohttp.ClientSession(base) as http:
        for path in ("/", "/api/session", "/signin"):
            async with http.get(path, headers={"Host": host}, allow_redirects=False) as r:
                assert r.status == status and "error" in await r.json(), path
        async with http.post("/api/signin", headers={"Host": host}, json={}) as r:
            assert r.status == status
        async with http.get("/healthz", headers={"Host": host}) as r:  # probes dial addresses
            assert r.status == 200


async def test_bad_bodies_are_400_json(site: Site) -> None:
    base, _ = site
    async with WebClient(base) as c:
        await c.refresh()
        for body in (None, [], {"name": "x"}, {"name": 3, "password": PW}):
            status, got = await c.send("POST", "/api/signin", body)
            assert status == 400 and got["error"], body
        status, got = await c.get("/api/session")
        assert status == 200 and got["signed_in"] is False and got["can_register"] is True


async def test_security_headers(site: Site) -> None:
    base, _ = site
    async with aiohttp.ClientSession(base) as http, http.get("/api/session") as r:
        assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"


def test_operator_add_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from p2pep.cli import main

    db = tmp_path / "console" / "auth.db"
    monkeypatch.setenv("P2PEP_OPERATOR_PASSWORD", "short")
    assert main(["operator", "add", "ops", "--db", str(db)]) == 2
    assert capsys.readouterr().err.startswith("error: password:")
    monkeypatch.setenv("P2PEP_OPERATOR_PASSWORD", PW)
    assert main(["operator", "add", "Ops", "--db", str(db)]) == 0
    assert "operator ops" in capsys.readouterr().out

    async def stored() -> str | None:
        store = await AuthStore.open(str(db))
        try:
            acct = await store.account("ops")
            return acct.password_hash if acct else None
        finally:
            await store.close()

    import asyncio
    digest = asyncio.run(stored())
    assert digest is not None and digest.startswith("$argon2id$") and PW not in digest
