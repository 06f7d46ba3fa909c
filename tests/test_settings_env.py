"""Settings <-> environment: every service reads its variables through ``load_settings``
(one line, no traceback, on a bad one), and launchers write them with ``settings_env``."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from p2pep.servicekit.settings import (
    BadSettings,
    BaseServiceSettings,
    env_name,
    setting_of,
    settings_env,
    settings_from_env,
)

ROOT = Path(__file__).resolve().parent.parent


class Sample(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="P2PEP_SAMPLE_", extra="ignore")

    target: str = Field(min_length=1)
    count: int = Field(default=3, gt=0)
    ratio: Decimal | None = None
    when: datetime | None = None
    path: Path = Path("x.db")
    names: list[str] = Field(default_factory=list)


def test_values_become_the_variables_the_class_reads() -> None:
    env = settings_env(Sample, target="127.0.0.1:1", count=7, ratio=Decimal("1.6"), log_json=False,
                       when=datetime.fromisoformat("2026-06-21T11:00:00+02:00"), path=Path("/d/s.db"),
                       names=["a", "b"], shutdown_grace_s=2.5)
    assert env == {
        "P2PEP_SAMPLE_TARGET": "127.0.0.1:1", "P2PEP_SAMPLE_COUNT": "7", "P2PEP_SAMPLE_RATIO": "1.6",
        "P2PEP_SAMPLE_LOG_JSON": "false", "P2PEP_SAMPLE_WHEN": "2026-06-21T11:00:00+02:00",
        "P2PEP_SAMPLE_PATH": "/d/s.db", "P2PEP_SAMPLE_NAMES": '["a","b"]', "P2PEP_SAMPLE_SHUTDOWN_GRACE_S": "2.5",
    }
    s = settings_from_env(Sample, env)
    assert type(s) is Sample
    assert (s.target, s.count, s.ratio, s.log_json, s.path, s.names) == (
        "127.0.0.1:1", 7, Decimal("1.6"), False, Path("/d/s.db"), ["a", "b"])
    assert s.when == datetime.fromisoformat("2026-06-21T11:00:00+02:00")
    assert env_name(Sample, "count") == "P2PEP_SAMPLE_COUNT" and setting_of(Sample, "p2pep_sample_count") == "count"


def test_a_name_that_is_not_a_field_is_refused() -> None:
    with pytest.raises(ValueError, match="Sample has no setting 'cuont'"):
        settings_env(Sample, target="t", cuont=7)
    with pytest.raises(ValueError, match=r"P2PEP_SAMPLE_CUONT is not a setting of Sample \(it reads P2PEP_SAMPLE_"):
        settings_from_env(Sample, {"P2PEP_SAMPLE_TARGET": "t", "P2PEP_SAMPLE_CUONT": "7"})
    with pytest.raises(ValueError, match="None has no environment form"):
        settings_env(Sample, target="t", ratio=None)


def test_a_bad_value_is_refused_before_anything_starts() -> None:
    with pytest.raises(BadSettings) as info:
        settings_env(Sample, target="t", count=-1)
    assert str(info.value) == "Sample: P2PEP_SAMPLE_COUNT: Input should be greater than 0"
    assert info.value.variables == ["P2PEP_SAMPLE_COUNT"]
    with pytest.raises(BadSettings, match="P2PEP_SAMPLE_TARGET: Field required"):
        settings_env(Sample, count=2)


def test_only_the_given_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a launch is checked against is its own environment, not the launcher's."""
    monkeypatch.setenv("P2PEP_SAMPLE_COUNT", "-5")
    monkeypatch.setenv("P2PEP_SAMPLE_TARGET", "from-the-launcher")
    s = settings_from_env(Sample, {"P2PEP_SAMPLE_TARGET": "t"})
    assert (s.target, s.count) == ("t", 3)
    with pytest.raises(BadSettings, match="P2PEP_SAMPLE_TARGET: Field required"):
        settings_from_env(Sample, {})


BAD_ENV = {
    "matcher": {"P2PEP_MATCHER_MAX_BATCH": "0"},
    "settlement": {"P2PEP_SETTLEMENT_INCREMENT_WH": "-1"},
    "anchor": {"P2PEP_ANCHOR_POLL_S": "0"},
    "console": {"P2PEP_CONSOLE_SETTLEMENT_TARGET": "127.0.0.1:1", "P2PEP_CONSOLE_RPC_TIMEOUT_S": "soon"},
    "meter": {"P2PEP_METER_ROLE": "landlord"},
}


@pytest.mark.parametrize("service", sorted(BAD_ENV))
def test_a_service_started_with_a_bad_variable_exits_with_one_line(service: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PEP_")}
    env.update(BAD_ENV[service])
    res = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"{service}: bad configuration: ")
    for variable in BAD_ENV[service]:
        if not variable.endswith("_TARGET"):
            assert f"{variable}: " in lines[0]
