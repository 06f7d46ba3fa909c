"""A child process of the harness: started detached, logged, stopped gently."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from p2pep.regtest.errors import ProcessFailed


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_pid(pid: int | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if not pid_alive(pid):
        return
    assert pid is not None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    end = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.05)


@dataclass
class Proc:
    """A named process. Detached (own session) so `p2pep regtest up` can exit and leave it running."""

    name: str
    argv: list[str]
    log: Path
    pid: int | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        try:
            self._popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            out.close()
        self.pid = self._popen.pid

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return pid_alive(self.pid)

    def check(self) -> None:
        """Raise ProcessFailed (with its log tail) if the process has exited."""
        if not self.alive():
            code = self._popen.returncode if self._popen is not None else None
            raise ProcessFailed(self.name, f"exited unexpectedly (code {code})", self.log)

    def stop(self, grace: float = 10.0) -> None:
        stop_pid(self.pid, grace)
        if self._popen is not None:
            try:
                self._popen.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass

    def kill(self) -> None:
        if self.pid and self.alive():
            os.kill(self.pid, signal.SIGKILL)
            if self._popen is not None:
                self._popen.wait(timeout=10)
