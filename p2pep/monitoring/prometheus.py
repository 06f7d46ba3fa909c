"""A real Prometheus (Debian's ``prometheus`` package) on loopback, for a run, and its HTTP API.

:class:`LocalPrometheus` starts ``prometheus`` with its own data dir (never the package's
``/var/lib/prometheus``; the package's own service is never used), the run's generated
configuration and ``--web.listen-address=127.0.0.1:<port>``. It is a
:class:`~p2pep.regtest.process.Proc`: detached, logged to a file, stopped with SIGTERM.
:class:`PrometheusApi` reads ``/api/v1`` (targets, instant queries, alerts) over aiohttp.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from p2pep.monitoring.scrape import write_config
from p2pep.regtest.ports import free_port
from p2pep.regtest.process import Proc
from p2pep.regtest.waiting import wait_for


class PrometheusMissing(RuntimeError):
    """``prometheus`` is not installed (``make setup`` installs Debian's)."""


def prometheus_binary() -> Path:
    found = shutil.which("prometheus")
    if not found:
        raise PrometheusMissing("prometheus is not installed: `make setup` (scripts/install-system-deps.sh) "
                                "installs Debian's `prometheus` package")
    return Path(found)


@dataclass
class LocalPrometheus:
    config: Path
    data_dir: Path
    port: int = 0
    retention: str = "1d"

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.proc = Proc("prometheus", [
            str(prometheus_binary()),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.data_dir / 'data'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
        ], self.data_dir / "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc.start()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        async def ready() -> bool:
            self.proc.check()
            async with aiohttp.ClientSession() as http, http.get(f"{self.url}/-/ready") as resp:
                return resp.status == 200

        await wait_for(ready, timeout=timeout, interval=0.25, what=f"prometheus ready at {self.url}")

    def stop(self) -> None:
        self.proc.stop(grace=10)


class PrometheusApi:
    """The few calls of Prometheus's HTTP API the tests and ``p2pep up`` use."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        async with aiohttp.ClientSession(timeout=self.timeout) as http, \
                http.get(f"{self.url}{path}", params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params or ''}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def targets(self) -> list[dict[str, Any]]:
        data = await self._get("/api/v1/targets", {"state": "active"})
        return list(data["activeTargets"])

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector: one entry per series)."""
        data = await self._get("/api/v1/query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    async def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        return list((await self._get("/api/v1/alerts"))["alerts"])

    async def rules(self) -> list[dict[str, Any]]:
        return list((await self._get("/api/v1/rules"))["groups"])


class Run(Protocol):
    """What :func:`serve_beside` needs of a scenario run (a ``ScenarioRunner``)."""

    phase: str
    run_dir: Path
    extra_urls: dict[str, str]
    """Pages shown beside the run's own (the live view's line of URLs, next to the console's)."""

    def say(self, msg: str) -> None: ...


async def serve_beside(run: Run, finished: asyncio.Event, scrape_interval: str = "5s") -> str | None:
    """``p2pep up``'s Prometheus: once the run's services run, write its scrape configuration
    (``<run dir>/prometheus/prometheus.yml``), start Prometheus on loopback with the rules,
    say its URL and show it beside the console's (``run.extra_urls["prometheus"]``), and stop
    it when ``finished`` is set. Returns the URL (None: not started, e.g. not installed, which
    is said, never an error)."""
    if shutil.which("prometheus") is None:
        run.say("prometheus is not installed (`make setup` installs it): no metrics server for this run")
        return None
    while run.phase != "running" and not finished.is_set():
        try:
            await asyncio.wait_for(finished.wait(), 0.5)
        except TimeoutError:
            pass
    if finished.is_set():
        return None
    config = write_config(run.run_dir, scrape_interval=scrape_interval)
    prom = LocalPrometheus(config, run.run_dir / "prometheus")
    prom.start()
    try:
        await prom.wait_ready(60)
        run.say(f"prometheus: {prom.url} (alerts: {prom.url}/alerts; dashboards: monitoring/grafana/)")
        run.extra_urls["prometheus"] = prom.url
        await finished.wait()
    except Exception as exc:  # noqa: BLE001 - monitoring never stops the demo
        run.say(f"prometheus did not start: {exc} (log: {prom.proc.log})")
        return None
    finally:
        run.extra_urls.pop("prometheus", None)
        await asyncio.to_thread(prom.stop)
    return prom.url
