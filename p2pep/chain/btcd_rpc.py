"""Async JSON-RPC client for btcd (TLS with btcd's self-signed cert, basic auth)."""

from __future__ import annotations

import base64
import itertools
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class BtcdRpcError(RuntimeError):
    """btcd answered with a JSON-RPC error (or not at all)."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"btcd {method}: {message}" + (f" (code {code})" if code is not None else ""))
        self.method = method
        self.code = code
        self.message = message


@dataclass(frozen=True)
class BtcdRpcConfig:
    host: str  # "127.0.0.1:18334"
    user: str
    password: str
    cert_path: str


class BtcdRpc:
    """One aiohttp session per client; use as an async context manager or call close()."""

    def __init__(self, config: BtcdRpcConfig, timeout: float = 30.0) -> None:
        self.config = config
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.config.cert_path)
        ctx.check_hostname = False  # btcd's cert names localhost; we dial 127.0.0.1
        return ctx

    async def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": _basic_auth(self.config.user, self.config.password)},
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl()),
            )
        return self._session

    async def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}
        try:
            sess = await self._sess()
            async with sess.post(f"https://{self.config.host}/", json=body) as resp:
                if resp.status == 401:
                    raise BtcdRpcError(method, None, "unauthorized (wrong rpc user/password)")
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BtcdRpcError(method, None, f"cannot reach btcd at {self.config.host}: {exc!r}") from exc
        err = data.get("error")
        if err:
            raise BtcdRpcError(method, err.get("code"), err.get("message", str(err)))
        return data.get("result")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> BtcdRpc:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
