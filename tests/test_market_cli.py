"""``p2pep market clear``: JSONL in, trades + summary out, bad lines refused with line numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from p2pep.market import cli


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="p2pep")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "orders.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


ORDERS = [
    '{"id":"s1","meter_id":"A","side":"supply","energy_wh":100,"price_msat_per_kwh":10}',
    '{"id":"s2","meter_id":"B","side":"supply","energy_wh":100,"price_msat_per_kwh":30}',
    "",
    '{"id":"d1","meter_id":"C","side":"demand","energy_wh":150,"price_msat_per_kwh":25}',
    '{"id":"d2","meter_id":"D","side":"demand","energy_wh":100,"price_msat_per_kwh":5,"partners":["A"]}',
]


def lines(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines()]


def test_pay_as_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["market", "clear", str(write(tmp_path, ORDERS)), "--mode", "pay-as-clear"]) == 0
    out = lines(capsys.readouterr().out)
    assert out[:-1] == [
        {"buy_order": "d1", "sell_order": "s1", "buyer": "C", "seller": "A", "energy_wh": 100,
         "price_msat_per_kwh": 17, "tier": 4}
    ]
    assert out[-1]["matched_wh"] == 100 and out[-1]["clearing_price_msat_per_kwh"] == 17
    assert out[-1]["orders"] == 4 and out[-1]["trades"] == 1


def test_continuous_in_file_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["market", "clear", str(write(tmp_path, ORDERS)), "--mode", "continuous"]) == 0
    out = lines(capsys.readouterr().out)
    assert [(t["buy_order"], t["sell_order"], t["price_msat_per_kwh"]) for t in out[:-1]] == [("d1", "s1", 10)]
    assert out[-1]["clearing_price_msat_per_kwh"] is None and out[-1]["matched_wh"] == 100


def test_bad_lines_are_all_reported_and_nothing_cleared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = ORDERS + [
        '{"id":"x1","meter_id":"A","side":"sell","energy_wh":1,"price_msat_per_kwh":1}',
        '{"id":"x2","meter_id":"A","side":"supply","energy_wh":0,"price_msat_per_kwh":1}',
        '{"id":"x3","meter_id":"A","side":"supply","energy_wh":1.5,"price_msat_per_kwh":1}',
        '{"id":"x4","meter_id":"A","side":"supply","energy_wh":1,"price_msat_per_kwh":-3}',
        '{"id":"s1","meter_id":"A","side":"supply","energy_wh":1,"price_msat_per_kwh":1}',
        '{"id":"x5","meter_id":"A","side":"supply","energy_wh":1}',
        "not json",
        '{"id":"x6","meter_id":"A","side":"demand","energy_wh":1,"price_msat_per_kwh":1,"partners":["A"]}',
    ]
    path = write(tmp_path, bad)
    assert run(["market", "clear", str(path)]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    err = cap.err.splitlines()
    assert err[:-1] == [
        f"{path}:6: side: unknown side 'sell' (supply or demand)",
        f"{path}:7: energy_wh: must be > 0, got 0",
        f"{path}:8: energy_wh: must be an integer, got float",
        f"{path}:9: price_msat_per_kwh: must be > 0, got -3",
        f"{path}:10: id: duplicate order id 's1' (first on line 1)",
        f"{path}:11: price_msat_per_kwh: missing",
        f"{path}:12: json: not valid JSON (Expecting value at column 1)",
        f"{path}:13: partners[0]: a meter cannot nominate itself",
    ]
    assert "8 bad line(s); nothing cleared" in err[-1]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["market", "clear", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_registered_in_p2pep_cli() -> None:
    from p2pep import cli as top

    assert "p2pep.market.cli" in top.COMMAND_MODULES
