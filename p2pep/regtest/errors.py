"""Errors that name the process at fault and show the tail of its log."""

from __future__ import annotations

from pathlib import Path


def log_tail(path: Path | str | None, lines: int = 25) -> str:
    if path is None:
        return ""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


class RegtestError(RuntimeError):
    """Base class for harness failures."""


class BinaryMissing(RegtestError):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(f"{name} binary not found at {path}: run `make binaries` (or `make setup`)")


class PortInUse(RegtestError):
    def __init__(self, what: str, port: int) -> None:
        super().__init__(f"{what}: port 127.0.0.1:{port} is already in use")
        self.port = port


class ProcessFailed(RegtestError):
    """A process exited, or did not become ready in time."""

    def __init__(self, name: str, problem: str, log: Path | str | None) -> None:
        tail = log_tail(log)
        super().__init__(f"{name}: {problem}\n--- last lines of {log} ---\n{tail}")
        self.name = name
        self.problem = problem
        self.log = log
