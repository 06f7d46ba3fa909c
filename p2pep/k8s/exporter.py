"""The lnd exporter sidecar: a node's ``tls.cert`` and ``admin.macaroon`` into a Secret.

Runs next to lnd in each lnd StatefulSet of the regtest overlay (``python -m
p2pep.k8s.exporter``, or ``p2pep k8s export-lnd``), as Lightning operators do it (Galoy's lnd
chart exports lnd's certificate and admin macaroon to a Secret from a sidecar). It reads lnd's
data volume, mounted read-only, and writes Secret ``p2pep-lnd-admin-<node>`` through the
Kubernetes API with its pod's ServiceAccount (create, or replace when it exists). The bootstrap
Job reads that Secret to bake each service's own macaroon; no service ever mounts it. Under
podman (the pod-level run, no API server) the translation gives it the folder store instead
(``P2PEP_KUBE_STORE=folder``, :mod:`p2pep.k8s.store`): the same loop writes the same Secret
as files where the Job's pod reads them.

Invariants:

* It only reads lnd's files and writes that one Secret (its Role: ``create`` on secrets,
  ``update`` on its own Secret's name); it never talks to lnd.
* A Secret is written only with both files present and non-empty, and written again only
  when their content changes (a new ``tls.cert``, a regenerated macaroon): an unchanged
  node costs a stat and a read every ``interval_s``, no API call.
* An API failure is logged and retried at the next interval; it never stops the sidecar
  (and so never lnd's pod). ``/livez`` answers while the loop runs; ``/healthz`` is 200
  once the current files have been exported once (the pod's readiness), 503 before, with
  what it waits for.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import structlog
from aiohttp import web

from p2pep.k8s import MACAROON_SUBDIR, admin_secret
from p2pep.k8s.settings import ExportSettings, KubeApiSettings
from p2pep.servicekit.logs import configure_logging
from p2pep.servicekit.settings import load_settings

log = structlog.get_logger(__name__)

TLS_CERT = "tls.cert"
ADMIN_MACAROON = "admin.macaroon"


class SecretWriter(Protocol):
    async def put_secret(self, name: str, files: Mapping[str, bytes]) -> str: ...


def lnd_files(lnd_dir: Path) -> dict[str, bytes] | None:
    """``tls.cert`` and ``admin.macaroon`` of the lnd at ``lnd_dir``, or None until both exist."""
    out: dict[str, bytes] = {}
    for key, path in ((TLS_CERT, lnd_dir / TLS_CERT), (ADMIN_MACAROON, lnd_dir / MACAROON_SUBDIR / ADMIN_MACAROON)):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not data:
            return None  # lnd is writing it
        out[key] = data
    return out


def digest(files: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(files):
        h.update(k.encode() + b"\0" + hashlib.sha256(files[k]).digest())
    return h.hexdigest()


class Exporter:
    """One node's export loop (:meth:`step` is one pass; :meth:`run` loops until stopped)."""

    def __init__(self, node: str, lnd_dir: Path, api: SecretWriter, interval_s: float = 5.0) -> None:
        self.node = node
        self.secret = admin_secret(node)
        self.lnd_dir = lnd_dir
        self.api = api
        self.interval_s = interval_s
        self.exported: str | None = None  # digest of what the Secret holds
        self.waiting_for = "lnd's tls.cert and admin.macaroon"

    async def step(self) -> bool:
        """Export the files if they exist and changed since the last export; True once the
        Secret holds the current files."""
        files = await asyncio.to_thread(lnd_files, self.lnd_dir)
        if files is None:
            self.waiting_for = "lnd's tls.cert and admin.macaroon"
            return self.exported is not None
        d = digest(files)
        if d == self.exported:
            return True
        outcome = await self.api.put_secret(self.secret, files)
        self.exported = d
        self.waiting_for = ""
        log.info("lnd files exported", secret=self.secret, outcome=outcome, node=self.node)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.step()
            except Exception as exc:  # noqa: BLE001 - logged and retried: the sidecar never stops lnd's pod
                self.waiting_for = f"the Kubernetes API ({exc})".splitlines()[0]
                log.warning("export failed, retrying", secret=self.secret, error=str(exc).splitlines()[0])
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    def health_app(self) -> web.Application:
        async def livez(_: web.Request) -> web.Response:
            return web.json_response({"status": "SERVING"})

        async def healthz(_: web.Request) -> web.Response:
            if self.exported is not None:
                return web.json_response({"status": "SERVING", "secret": self.secret})
            return web.json_response({"status": "NOT_SERVING", "waiting_for": [self.waiting_for]}, status=503)

        app = web.Application()
        app.router.add_get("/livez", livez)
        app.router.add_get("/healthz", healthz)
        return app


async def serve(settings: ExportSettings, api: SecretWriter, stop: asyncio.Event) -> None:
    """The export loop and its health endpoints until ``stop`` is set."""
    exporter = Exporter(settings.node, Path(settings.lnd_dir), api, settings.interval_s)
    runner = web.AppRunner(exporter.health_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.health_host, settings.health_port)
    await site.start()
    log.info("exporter started", node=settings.node, secret=exporter.secret, lnd_dir=settings.lnd_dir)
    try:
        await exporter.run(stop)
    finally:
        await runner.cleanup()


async def amain() -> int:
    from p2pep.k8s.store import open_store

    settings = load_settings(ExportSettings, "export-lnd")
    configure_logging(settings.log_level, json=settings.log_json, service="export-lnd")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_store(load_settings(KubeApiSettings, "export-lnd")) as store:
        await serve(settings, store, stop)
    log.info("exporter stopped")
    return 0


def main() -> int:
    return asyncio.run(amain())


if __name__ == "__main__":
    raise SystemExit(main())
