"""The scenarios shipped in the repo (``scenarios/*.toml``), by name."""

from __future__ import annotations

import tomllib
from pathlib import Path

from p2pep.scenario.model import Scenario, ScenarioError, parse_scenario

REPO = Path(__file__).resolve().parents[2]
SCENARIO_DIR = REPO / "scenarios"


def scenario_files(directory: Path = SCENARIO_DIR) -> dict[str, Path]:
    """Scenario name (file stem) -> file."""
    return {p.stem: p for p in sorted(directory.glob("*.toml"))}


def load_file(path: Path) -> Scenario:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(str(path), f"not valid TOML: {e}") from e
    scenario = parse_scenario(data, default_name=path.stem)
    return _resolve_paths(scenario, path.parent)


def load_scenario(name_or_path: str, directory: Path = SCENARIO_DIR) -> Scenario:
    """A shipped scenario by name, or any scenario file by path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return load_file(p)
    files = scenario_files(directory)
    if name_or_path not in files:
        known = ", ".join(files) or "none"
        raise ScenarioError("scenario", f"no scenario named {name_or_path!r} (known: {known})")
    return load_file(files[name_or_path])


def list_scenarios(directory: Path = SCENARIO_DIR) -> list[Scenario]:
    return [load_file(p) for p in scenario_files(directory).values()]


def _resolve_paths(s: Scenario, base: Path) -> Scenario:
    """CSV paths in a scenario file are relative to that file."""
    from dataclasses import replace

    meters = tuple(
        replace(m, csv_path=str((base / m.csv_path).resolve())) if m.csv_path and not Path(m.csv_path).is_absolute()
        else m
        for m in s.meters
    )
    return replace(s, meters=meters)
