"""Service processes of a scenario: started as ``python -m services.X``, health-checked,
stopped gently.

Each process gets its own session (so a Ctrl-C in the terminal reaches only the
runner, which then stops the services in order) and appends to its own log file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from p2pep.regtest.errors import ProcessFailed
from p2pep.regtest.waiting import timeout_scale
from p2pep.scenario.launch import ServiceLaunch
from p2pep.servicekit.channels import channel as dial
from p2pep.servicekit.tls import Tls

REPO = Path(__file__).resolve().parents[2]


class ServiceProcess:
    def __init__(self, launch: ServiceLaunch, tls: Tls, python: str = sys.executable) -> None:
        self.launch = launch
        self.tls = tls  # the harness's operator certificate (health checks are mutual TLS too)
        self.python = python
        self._popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def name(self) -> str:
        return self.launch.name

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.launch.data_dir.mkdir(parents=True, exist_ok=True)
        self.launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.launch.env}
        with open(self.launch.log_path, "ab") as out:
            out.write(f"--- start {self.starts + 1}: {self.python} -m {self.launch.module}\n".encode())
            out.flush()
            self._popen = subprocess.Popen(
                [self.python, "-m", self.launch.module],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=str(REPO), start_new_session=True,
            )
        self.starts += 1

    def failed(self, problem: str) -> ProcessFailed:
        return ProcessFailed(self.name, problem, self.launch.log_path)

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until the service's gRPC health check answers SERVING; fail with its log
        tail if it exits first or the (scaled) deadline passes."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout * timeout_scale()
        last = "no answer yet"
        async with dial(self.launch.target, peer=self.launch.name, tls=self.tls) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if not self.alive():
                    raise self.failed(f"exited with code {self.returncode} before it was healthy")
                try:
                    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                except grpc.aio.AioRpcError as e:
                    last = f"{e.code().name}: {e.details()}"
                if loop.time() >= end:
                    raise self.failed(f"not healthy after {timeout * timeout_scale():.0f}s (last: {last})")
                await asyncio.sleep(0.2)

    def send(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self._popen is not None
            self._popen.send_signal(sig)

    async def wait_exit(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.alive() and loop.time() < end:
            await asyncio.sleep(0.05)
        return not self.alive()

    async def stop(self, sig: signal.Signals = signal.SIGTERM, grace: float = 15.0) -> int | None:
        """Send ``sig`` and wait; SIGKILL after ``grace`` seconds. Returns the exit code."""
        if not self.alive():
            return self.returncode
        self.send(sig)
        if sig != signal.SIGKILL and not await self.wait_exit(grace):
            self.send(signal.SIGKILL)
        await self.wait_exit(10)
        return self.returncode
