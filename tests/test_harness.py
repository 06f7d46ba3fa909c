"""The test harness itself (tests/conftest.py): every property test is deterministic."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, is_hypothesis_test

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
