"""Toxiproxy for a scenario run: its server process and its HTTP API, over aiohttp (I/O).

The runner starts one ``toxiproxy-server`` per run (its own API port on loopback, its log
in ``<run dir>/scenario/logs/toxiproxy.log``, its own session so a Ctrl-C reaches only the
runner), creates the proxies of each meter's link (:mod:`p2pep.scenario.links`), loads each
profile's toxics, and cuts and heals links for the scenario's ``partition`` events. The
server keeps no state on disk: stopped, its proxies are gone, and the next run creates them
again. A failed API call raises :class:`ToxiproxyError` with the server's answer.

A link is cut by disabling its proxies (Toxiproxy closes their connections and stops
listening: the link's carrier is gone, connecting is refused) and healed by enabling them
again, on the same ports. Not by adding a toxic to links that carry traffic: Toxiproxy
interrupts each connection's chain of toxics to add one, and that waits on whatever a toxic
is doing (a delayed chunk, a bandwidth sleep, a write to a peer), so it took more than 10 s
under the ``gprs`` profile and the cut came late or not at all. Stalled connections are the
``gprs`` profile's own (its ``stall`` toxic).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from p2pep.regtest.waiting import wait_for
from p2pep.scenario.links import Proxy, Toxic


class ToxiproxyError(RuntimeError):
    """Toxiproxy refused a request (or did not start)."""


class ToxiproxyClient:
    """Toxiproxy's HTTP API at ``http://{api}``."""

    def __init__(self, api: str, timeout_s: float = 10.0) -> None:
        self.base = f"http://{api}"
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def __aenter__(self) -> ToxiproxyClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.close()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self._http.request(method, self.base + path, json=body) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ToxiproxyError(f"toxiproxy {method} {path}: {resp.status} {text.strip()[:300]}")
            return await resp.json(content_type=None) if text.strip() else None

    async def version(self) -> str:
        async with self._http.get(self.base + "/version") as resp:
            return (await resp.text()).strip()

    async def create_proxy(self, proxy: Proxy) -> None:
        await self._call("POST", "/proxies", proxy.body())

    async def add_toxic(self, proxy: str, toxic: Toxic) -> None:
        await self._call("POST", f"/proxies/{proxy}/toxics", toxic.body())

    async def remove_toxic(self, proxy: str, name: str) -> None:
        await self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    async def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(await self._call("GET", f"/proxies/{proxy}/toxics") or [])

    async def set_enabled(self, proxy: str, enabled: bool) -> None:
        await self._call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    async def partition(self, proxies: list[str]) -> None:
        """Cut the link these proxies carry: every connection closed, new ones refused."""
        await asyncio.gather(*(self.set_enabled(p, False) for p in proxies))

    async def heal(self, proxies: list[str]) -> None:
        """Undo :meth:`partition` (a proxy not cut is left as it is)."""
        await asyncio.gather(*(self.set_enabled(p, True) for p in proxies))

    async def partitioned(self, proxy: str) -> bool:
        return not bool((await self._call("GET", f"/proxies/{proxy}"))["enabled"])


class ToxiproxyServer:
    """One ``toxiproxy-server`` process with its API on ``127.0.0.1:port``."""

    def __init__(self, binary: Path, port: int, log_path: Path) -> None:
        self.binary = binary
        self.port = port
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    async def start(self, timeout_s: float = 15.0) -> None:
        """Start it and wait until its API answers."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._popen = subprocess.Popen(
                [str(self.binary), "-host", "127.0.0.1", "-port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

        async def answers() -> bool:
            if not self.alive():
                raise ToxiproxyError(f"toxiproxy-server exited (code {self._popen and self._popen.poll()}); "
                                     f"log: {self.log_path}")
            async with ToxiproxyClient(self.api, timeout_s=2) as c:
                return bool(await c.version())

        try:
            await wait_for(answers, timeout=timeout_s, interval=0.1, what="toxiproxy-server's API")
        except TimeoutError as e:
            await self.stop()
            raise ToxiproxyError(f"{e}; log: {self.log_path}") from None

    async def stop(self) -> None:
        if self._popen is None or self._popen.poll() is not None:
            return
        self._popen.terminate()
        for _ in range(50):
            if self._popen.poll() is not None:
                return
            await asyncio.sleep(0.1)
        self._popen.kill()
        await asyncio.to_thread(self._popen.wait, 10)
