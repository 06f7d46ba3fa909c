"""Service logs hold no ERROR and no traceback a test did not expect.

Two kinds of service logs:

* in process (services started inside the test): structlog events and stdlib log records
  (grpc, aiohttp, asyncio's "Task exception was never retrieved"...). :func:`installed` taps
  both for the whole session, surviving every ``configure_logging`` (which reconfigures
  structlog and replaces the root logger's handlers); :func:`capturing` collects what one
  test logs. ``tests/conftest.py`` does both for every test and fails the test at teardown
  if something unexpected was logged.
* in files (services run as processes by :class:`p2pep.scenario.runner.ScenarioRunner`,
  ``<run dir>/scenario/logs/*.log``): :func:`assert_service_logs_clean` scans them, once per
  scenario run.

What a test expects is declared with ``@pytest.mark.expected_log_errors("regex", ...)``:
a problem is expected when one regex matches (``re.search``) its text, which is the event
and its ``key=value`` fields, then the exception (``ValueError: boom``) if there is one.
Both checks honour the marker; the file check also takes ``expected=`` per call.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
import structlog

if TYPE_CHECKING:
    from p2pep.scenario.runner import ScenarioRunner

MARKER = "expected_log_errors"
ERROR_LEVELS = frozenset({"error", "exception", "critical", "fatal"})
Patterns = Sequence["re.Pattern[str]"]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


@dataclass(frozen=True)
class LogProblem:
    """One ERROR (or worse) event, or one event carrying a traceback."""

    where: str
    """``structlog``, ``logging:<logger>``, or ``<file>:<line>``."""
    level: str
    text: str
    """The event and its fields, then the exception's last line: what expectations match."""
    traceback: str = ""

    def expected_by(self, patterns: Patterns) -> bool:
        return any(p.search(self.text) for p in patterns)

    def describe(self, tb_lines: int = 12) -> str:
        out = f"[{self.where}] {self.level.upper()}: {self.text}"
        if self.traceback:
            lines = self.traceback.rstrip("\n").splitlines()
            if len(lines) > tb_lines:
                lines = ["..."] + lines[-tb_lines:]
            out += "\n" + "\n".join("    " + line for line in lines)
        return out


def compile_patterns(patterns: Iterable[str | re.Pattern[str]]) -> list[re.Pattern[str]]:
    return [p if isinstance(p, re.Pattern) else re.compile(p) for p in patterns]


def expected_of(item: pytest.Item) -> list[re.Pattern[str]]:
    """The regexes of every ``expected_log_errors`` marker on the test (and its module/class)."""
    return compile_patterns(p for m in item.iter_markers(MARKER) for p in m.args)


def report(problems: Sequence[LogProblem], headline: str) -> str:
    return headline + "\n" + "\n".join(p.describe() for p in problems) + (
        "\n(if a test means to provoke these, declare them: "
        "@pytest.mark.expected_log_errors(<regex>, ...), matched against the text after the level)")


# -- event text ----------------------------------------------------------------------------------------


def _fields_text(event: object, fields: Mapping[str, Any]) -> str:
    parts = [str(event)] + [f"{k}={v}" for k, v in fields.items()]
    return " ".join(parts)


def _exc_info(value: object) -> ExcInfo | None:
    """structlog's ``exc_info`` (True, an exception, or a sys.exc_info() tuple) as a tuple."""
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return type(value[1]), value[1], value[2]
    if value is True:
        exc = sys.exc_info()[1]
        if exc is not None:
            return type(exc), exc, exc.__traceback__
    return None


def _exc_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


# -- in process -------------------------------------------------------------------------------------------


@dataclass
class Capture:
    """What the in-process services logged while this capture was active (thread-safe:
    grpc's and asyncio.to_thread's threads log too)."""

    expected: list[re.Pattern[str]] = field(default_factory=list)
    problems: list[LogProblem] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, problem: LogProblem) -> None:
        with self._lock:
            self.problems.append(problem)

    def unexpected(self) -> list[LogProblem]:
        with self._lock:
            return [p for p in self.problems if not p.expected_by(self.expected)]


_active: Capture | None = None


@contextmanager
def capturing(expected: Iterable[str | re.Pattern[str]] = ()) -> Iterator[Capture]:
    """Collect ERROR events and tracebacks logged in process until the block ends
    (needs :func:`install`)."""
    global _active
    cap = Capture(compile_patterns(expected))
    previous, _active = _active, cap
    try:
        yield cap
    finally:
        _active = previous


def _structlog_tap(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """First structlog processor: notes the event if it is an error or carries a traceback
    (before any renderer turns ``exc_info`` into text), and passes it on unchanged."""
    cap = _active
    if cap is None:
        return event_dict
    info = _exc_info(event_dict.get("exc_info"))
    if method_name in ERROR_LEVELS or info is not None:
        fields = {k: v for k, v in event_dict.items() if k not in ("event", "exc_info")}
        text = _fields_text(event_dict.get("event", ""), fields)
        tb = ""
        if info is not None:
            text += " " + _exc_line(info[1])
            tb = "".join(traceback.format_exception(*info))
        cap.add(LogProblem("structlog", "error" if method_name == "exception" else method_name, text, tb))
    return event_dict


def _note_record(record: logging.LogRecord) -> None:
    cap = _active
    if cap is None:
        return
    info = record.exc_info if record.exc_info and record.exc_info[1] is not None else None
    if record.levelno < logging.ERROR and info is None:
        return
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is still an error to report
        text = f"{record.msg!r} % {record.args!r}"
    tb = ""
    if info is not None:
        assert info[1] is not None
        text += " " + _exc_line(info[1])
        tb = "".join(traceback.format_exception(*info))
    cap.add(LogProblem(f"logging:{record.name}", record.levelname.lower(), text, tb))


def _ensure_tap() -> None:
    procs = structlog.get_config()["processors"]
    if _structlog_tap not in procs:
        procs.insert(0, _structlog_tap)  # in place: loggers already bound to this list see it too


@contextmanager
def installed() -> Iterator[None]:
    """Tap structlog and the stdlib loggers for the block (the whole session).

    structlog: the tap is the first processor, put back after every ``structlog.configure``
    (the services call it when they start). stdlib: a log record factory, which
    ``logging.basicConfig(force=True)`` (also called when services start) leaves in place,
    unlike a handler on the root logger."""
    real_configure = structlog.configure

    def configure(*args: Any, **kwargs: Any) -> None:
        real_configure(*args, **kwargs)
        _ensure_tap()

    real_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = real_factory(*args, **kwargs)
        _note_record(record)
        return record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(structlog, "configure", configure)
        _ensure_tap()
        logging.setLogRecordFactory(factory)
        try:
            yield
        finally:
            logging.setLogRecordFactory(real_factory)
            procs = structlog.get_config()["processors"]
            while _structlog_tap in procs:
                procs.remove(_structlog_tap)


# -- in files (scenario runs) ---------------------------------------------------------------------------------

_STDLIB_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (ERROR|CRITICAL) (\S+) ?(.*)$")
_CONSOLE_LINE = re.compile(r"^\S+(?: \S+)? \[(error|critical|exception)\s*\] (.*)$")  # LOG_JSON=false
_TRACEBACK_START = "Traceback (most recent call last):"
_TRACEBACK_GLUE = ("During handling of the above exception", "The above exception was the direct cause")


def _json_problem(where: str, obj: Mapping[str, Any]) -> LogProblem | None:
    level = str(obj.get("level", "")).lower()
    exc = obj.get("exception")
    if level not in ERROR_LEVELS and not exc:
        return None
    fields = {k: v for k, v in obj.items() if k not in ("event", "level", "timestamp", "exception", "service")}
    text = _fields_text(obj.get("event", ""), fields)
    tb = ""
    if isinstance(exc, list) and exc:  # structlog's dict_tracebacks: one dict per chained exception
        last = exc[-1] if isinstance(exc[-1], dict) else {}
        text += f" {last.get('exc_type', '')}: {last.get('exc_value', '')}"
        tb = json.dumps(exc, indent=1, default=str)
    elif isinstance(exc, str) and exc:
        tb = exc
        text += " " + exc.rstrip().splitlines()[-1]
    return LogProblem(where, level or "error", text, tb)


def scan_log(path: Path, start: int = 0) -> list[LogProblem]:
    """Problems in one service log from byte ``start`` on: JSON events at ERROR or worse or
    with an exception, stdlib ERROR/CRITICAL lines, and bare Python tracebacks (a crash; one
    right after a stdlib ERROR line is that line's)."""
    with open(path, "rb") as f:
        f.seek(start)
        lines = f.read().decode("utf-8", "replace").splitlines()
    prefix = f"{path.name}:" if start == 0 else f"{path.name}:+"
    problems: list[LogProblem] = []
    stdlib_error_before = False  # the line before was a text ERROR line (its traceback follows)
    i = 0
    while i < len(lines):
        line, where = lines[i], f"{prefix}{i + 1}"
        i += 1
        after_stdlib_error, stdlib_error_before = stdlib_error_before, False
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                found = _json_problem(where, obj)
                if found is not None:
                    problems.append(found)
                continue
        m = _STDLIB_LINE.match(line)
        if m:
            problems.append(LogProblem(where, m.group(1).lower(), f"{m.group(3)} logger={m.group(2)}"))
            stdlib_error_before = True
            continue
        m = _CONSOLE_LINE.match(line)
        if m:
            problems.append(LogProblem(where, m.group(1), " ".join(m.group(2).split())))
            stdlib_error_before = True
            continue
        if line.startswith(_TRACEBACK_START):
            block = [line]
            while i < len(lines) and (lines[i].startswith((" ", "\t", _TRACEBACK_START) + _TRACEBACK_GLUE)
                                      or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            if i < len(lines):  # the exception's own line ("ValueError: boom")
                block.append(lines[i])
                i += 1
            last = block[-1].strip()
            if after_stdlib_error:
                prev = problems[-1]
                problems[-1] = LogProblem(prev.where, prev.level, f"{prev.text} {last}", "\n".join(block))
            else:
                problems.append(LogProblem(where, "traceback", last, "\n".join(block)))
    return problems


def _logs_dir(target: ScenarioRunner | Path) -> Path:
    if isinstance(target, Path):
        for cand in (target / "scenario" / "logs", target / "logs", target):
            if cand.is_dir() and any(cand.glob("*.log")):
                return cand
        return target
    return Path(target.layout.root) / "logs"


def log_files(target: ScenarioRunner | Path) -> list[Path]:
    """The service logs of a scenario run: a runner, its run dir, or a logs dir."""
    return sorted(_logs_dir(target).glob("*.log"))


class LogMark(NamedTuple):
    """Where a service log ended: which file (inode) and its size."""

    inode: int
    size: int


def log_offsets(target: ScenarioRunner | Path) -> dict[Path, LogMark]:
    """Where each service log ends now: pass as ``since=`` to check only what a later run on
    the same run dir adds. (A run that starts its logs afresh, as the runner does when it
    moves an earlier run's ``scenario/`` aside, is checked from the start of its files.)"""
    out: dict[Path, LogMark] = {}
    for p in log_files(target):
        st = p.stat()
        out[p] = LogMark(st.st_ino, st.st_size)
    return out


def _start(path: Path, since: Mapping[Path, LogMark] | None) -> int:
    mark = (since or {}).get(path)
    if mark is None:
        return 0
    st = path.stat()
    return mark.size if st.st_ino == mark.inode and st.st_size >= mark.size else 0


# Set by tests/conftest.py while a test runs: its marker's patterns.
current_expected: list[re.Pattern[str]] = []


def service_log_problems(target: ScenarioRunner | Path, *, expected: Iterable[str | re.Pattern[str]] = (),
                         since: Mapping[Path, LogMark] | None = None) -> list[LogProblem]:
    """The problems in a scenario run's service logs that neither ``expected`` nor the
    running test's ``expected_log_errors`` marker allows."""
    patterns = compile_patterns(expected) + current_expected
    out: list[LogProblem] = []
    for path in log_files(target):
        out += [p for p in scan_log(path, _start(path, since)) if not p.expected_by(patterns)]
    return out


def assert_service_logs_clean(target: ScenarioRunner | Path, *, expected: Iterable[str | re.Pattern[str]] = (),
                              since: Mapping[Path, LogMark] | None = None) -> None:
    """Fail if a scenario run's service logs hold an ERROR or a traceback not expected
    (``expected`` regexes, and the test's ``expected_log_errors`` marker)."""
    problems = service_log_problems(target, expected=expected, since=since)
    if problems:
        pytest.fail(report(problems, f"unexpected errors in the service logs of {_logs_dir(target)}:"),
                    pytrace=False)


__all__ = [
    "Capture", "LogMark", "LogProblem", "MARKER", "assert_service_logs_clean", "capturing", "compile_patterns",
    "expected_of", "installed", "log_files", "log_offsets", "report", "scan_log", "service_log_problems",
]
