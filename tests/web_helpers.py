"""A browser-like client for the signed-in pages (portal, console): a cookie jar that keeps
cookies for IP hosts, and the CSRF token from ``GET /api/session`` sent on every POST/DELETE."""

from __future__ import annotations

from typing import Any

import aiohttp


class WebClient:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def __aenter__(self) -> WebClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def refresh(self) -> dict[str, Any]:
        async with self.http.get("/api/session") as r:
            assert r.status == 200, await r.text()
            body = dict(await r.json())
        self.csrf = body["csrf_token"]
        return body

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.get(path, allow_redirects=False, **kw) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def send(self, method: str, path: str, body: Any = None, csrf: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = {"X-CSRF-Token": self.csrf if csrf is None else csrf, **(headers or {})}
        async with self.http.request(method, path, json=body, headers=h, allow_redirects=False) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def register(self, name: str, password: str) -> tuple[int, Any]:
        if not self.csrf:
            await self.refresh()
        status, body = await self.send("POST", "/api/register", {"name": name, "password": password})
        if status == 201:
            self.csrf = body["csrf_token"]
        return status, body

    async def signin(self, name: str, password: str) -> tuple[int, Any]:
        if not self.csrf:
            await self.refresh()
        status, body = await self.send("POST", "/api/signin", {"name": name, "password": password})
        if status == 200:
            self.csrf = body["csrf_token"]
        return status, body

    async def signout(self) -> tuple[int, Any]:
        status, body = await self.send("POST", "/api/signout")
        self.csrf = ""
        return status, body
