"""The test harness itself (tests/conftest.py, tests/logcheck.py): every property test is
deterministic; no test passes whose services logged an error it did not expect."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import logcheck
import pytest
import structlog
from hypothesis import HealthCheck, is_hypothesis_test

from p2pep.servicekit import configure_logging

pytest_plugins = ["pytester"]

HYPOTHESIS_MODULES = sorted(p.stem for p in Path(__file__).parent.glob("test_*.py")
                            if p.stem != __name__ and "from hypothesis import" in p.read_text())


def test_hypothesis_modules_are_found() -> None:
    assert "test_settling_increments" in HYPOTHESIS_MODULES


@pytest.mark.parametrize("module", HYPOTHESIS_MODULES)
def test_property_tests_do_not_depend_on_machine_speed_or_luck(module: str) -> None:
    """The ``p2pep`` profile reaches every property test, also those with their own
    ``@settings`` (which inherit it): no deadline, no "too slow" health check, the same
    examples every run."""
    mod = importlib.import_module(module)
    tests = [f for f in vars(mod).values() if callable(f) and is_hypothesis_test(f)]
    assert tests, f"{module} imports hypothesis but has no property test"
    for f in tests:
        s = f._hypothesis_internal_use_settings  # the settings the test runs with
        assert s.deadline is None, f"{module}.{f.__name__}: deadline {s.deadline}"
        assert s.derandomize and s.database is None, f"{module}.{f.__name__}: not derandomized"
        assert HealthCheck.too_slow in s.suppress_health_check, f"{module}.{f.__name__}: too_slow checked"
        assert s.print_blob, f"{module}.{f.__name__}: no reproduction blob"


# -- service logs: no ERROR or traceback a test did not expect ----------------------------------------------


def test_in_process_errors_and_tracebacks_are_captured_across_reconfiguration() -> None:
    log = structlog.get_logger("harness")
    with logcheck.capturing(["expected thing"]) as cap:
        configure_logging("INFO", json=True, service="harness")  # as every service does when it starts
        log.info("all fine")
        log.warning("a warning is no problem")
        log.error("expected thing happened", n=1)
        log.error("settlement task failed", task="x")
        try:
            raise ValueError("boom")
        except ValueError:
            log.warning("recovered", exc_info=True)  # a traceback, even below ERROR
        logging.getLogger("asyncio").error("Task exception was never retrieved")
        logging.getLogger("grpc").info("stdlib info is no problem")
    texts = [p.text for p in cap.unexpected()]
    assert texts == ["settlement task failed task=x", "recovered ValueError: boom",
                     "Task exception was never retrieved"]
    assert "raise ValueError" in cap.unexpected()[1].traceback
    assert [p.where for p in cap.problems] == ["structlog"] * 3 + ["logging:asyncio"]


def _write_log(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "--- start 1: python -m services.settlement",
        json.dumps({"event": "settlement loaded", "level": "info", "timestamp": "t"}),
        json.dumps({"event": "contract worker failed", "level": "error", "contract_id": "c1", "timestamp": "t",
                    "exception": [{"exc_type": "OSError", "exc_value": "disk I/O error", "frames": []}]}),
        json.dumps({"event": "reading stream failed", "level": "warning",
                    "exception": [{"exc_type": "RuntimeError", "exc_value": "x", "frames": []}]}),
        "2026-12-02 09:42:39,070 ERROR aiohttp.server Error handling request",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in f',
        "    raise KeyError('k')",
        "KeyError: 'k'",
        "2026-12-02 09:42:39,071 INFO aiohttp.access GET /",
        "Traceback (most recent call last):",
        '  File "m.py", line 2, in <module>',
        "RuntimeError: meter could not start",
        "2026-12-02T09:42:37Z [error    ] matcher unreachable for contract end contract_id=c2",
    ]
    path.write_text("\n".join(lines) + "\n")


def test_scenario_log_files_are_scanned_for_errors_and_tracebacks(tmp_path: Path) -> None:
    log = tmp_path / "run" / "scenario" / "logs" / "settlement.log"
    _write_log(log)
    problems = logcheck.service_log_problems(tmp_path / "run")
    assert [(p.where, p.level, p.text) for p in problems] == [
        ("settlement.log:3", "error", "contract worker failed contract_id=c1 OSError: disk I/O error"),
        ("settlement.log:4", "warning", "reading stream failed RuntimeError: x"),
        ("settlement.log:5", "error", "Error handling request logger=aiohttp.server KeyError: 'k'"),
        ("settlement.log:11", "traceback", "RuntimeError: meter could not start"),
        ("settlement.log:14", "error", "matcher unreachable for contract end contract_id=c2"),
    ]
    assert "raise KeyError" in problems[2].traceback
    left = logcheck.service_log_problems(log.parent, expected=["disk I/O", r"^reading stream", "could not start",
                                                                "logger=aiohttp"])
    assert [p.where for p in left] == ["settlement.log:14"]
    with pytest.raises(pytest.fail.Exception, match="matcher unreachable"):
        logcheck.assert_service_logs_clean(log.parent, expected=[".*contract_id=c1", "stream", "start", "request"])


def test_a_later_run_on_the_same_run_dir_is_checked_on_its_own(tmp_path: Path) -> None:
    log = tmp_path / "scenario" / "logs" / "meter-1.log"
    _write_log(log)
    before = logcheck.log_offsets(tmp_path)
    with open(log, "a") as f:
        f.write(json.dumps({"event": "final reading failed", "level": "error"}) + "\n")
    problems = logcheck.service_log_problems(tmp_path, since=before)
    assert [(p.where, p.text) for p in problems] == [("meter-1.log:+1", "final reading failed")]
    # a later run that moves the earlier one's logs aside (as the runner does) is checked whole
    (tmp_path / "scenario").rename(tmp_path / "scenario.1")
    _write_log(log)
    assert len(logcheck.service_log_problems(tmp_path, since=before)) == 5


@pytest.mark.expected_log_errors("contract worker", "stream failed", "handling request", "could not start",
                                 "matcher unreachable")
def test_the_marker_declares_what_both_checks_expect(tmp_path: Path, log_errors: logcheck.Capture) -> None:
    _write_log(tmp_path / "scenario" / "logs" / "settlement.log")
    logcheck.assert_service_logs_clean(tmp_path)
    structlog.get_logger("harness").error("contract worker failed", contract_id="c9")
    assert [p.text for p in log_errors.problems] == ["contract worker failed contract_id=c9"]
    assert log_errors.unexpected() == []


def test_a_test_whose_services_log_an_unexpected_error_fails(pytester: pytest.Pytester) -> None:
    here = Path(__file__).parent
    pytester.makeconftest((here / "conftest.py").read_text())
    pytester.makepyfile(logcheck=(here / "logcheck.py").read_text())
    pytester.makepyfile(tls_helpers=(here / "tls_helpers.py").read_text())
    pytester.makepyfile(test_inner='''
        import pytest, structlog
        log = structlog.get_logger("inner")

        def test_unexpected():
            log.error("settlement task failed", task="worker")

        @pytest.mark.expected_log_errors("task failed")
        def test_expected():
            log.error("settlement task failed", task="worker")

        def test_clean():
            log.info("fine")

        def test_failed_anyway():
            log.error("settlement task failed", task="worker")
            assert False
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1, failed=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_unexpected*",
                                 "*unexpected errors in the service logs*",
                                 "*settlement task failed task=worker*"])
