"""The live view renders from a snapshot (no network, no runner)."""

from __future__ import annotations

from rich.console import Console

from p2pep.scenario.cli import _summary
from p2pep.scenario.live import View, kwh, render, sats
from p2pep.v1 import common_pb2, meter_pb2, settlement_pb2

SIM0 = 1_782_032_400_000  # 11:00 in Berlin


def test_units_are_formatted_from_integers() -> None:
    assert kwh(1234) == "1.23" and kwh(5) == "0.00" and kwh(-1500) == "-1.50"
    assert sats(2_500) == "2.500" and sats(1_234_567) == "1,234.567"


def test_render_shows_meters_contracts_payments() -> None:
    st = meter_pb2.MeterStatus(meter_id="meter-3", role="consumer", import_wh=1530, relay_energized=True,
                               active_contracts=2, paid_msat=382_500, power_w=2000)
    blocked = meter_pb2.MeterStatus(meter_id="meter-1", role="producer", export_wh=800, relay_energized=False,
                                    relay_reason="NO_CONTRACT", earned_msat=200_000)
    c = common_pb2.Contract(contract_id="c-0123456789abcdef", consumer="meter-3", supplier="meter-1",
                            energy_wh=300, price_msat_per_kwh=250_000)
    c.start.FromMilliseconds(SIM0)
    c.end.FromMilliseconds(SIM0 + 900_000)
    rec = settlement_pb2.ContractRecord(contract=c, state=settlement_pb2.CONTRACT_STATE_DEFAULTED, delivered_wh=120,
                                        paid_msat=30_000)
    pay = settlement_pb2.Payment(contract_id=c.contract_id, increment=12, from_wh=110, to_wh=120, amount_msat=2_500,
                                 payment_hash="ab" * 32, payer="meter-3", payee="meter-1")
    v = View("hackathon", "demo", "running", 42.0, SIM0, SIM0 + 45 * 60_000, SIM0 + 90 * 60_000, "Europe/Berlin",
             meters=[("meter-1", "producer", blocked, True), ("meter-2", "producer", None, False),
                     ("meter-3", "consumer", st, True)],
             contracts=[rec], payments=[pay], messages=[(1.0, "network up")], blocks_mined=7,
             urls={"console": "http://127.0.0.1:4100/", "portal": "http://127.0.0.1:4101/",
                   "meter-3": "http://127.0.0.1:4103/", "prometheus": "http://127.0.0.1:9090"},
             login="operator / s3cret")
    console = Console(record=True, width=160)
    console.print(render(v))
    out = console.export_text()
    for needle in ["hackathon", "sim 11:45", "50%", "meter-3", "energized", "1.53", "382.500", "stopped",
                   "meter-3 → meter-1", "0.12 / 0.30", "defaulted", "110–120", "network up", "7 blocks",
                   "console http://127.0.0.1:4100/ (sign in: operator / s3cret)",
                   "household portal http://127.0.0.1:4101/", "meter-3 display http://127.0.0.1:4103/",
                   "prometheus http://127.0.0.1:9090"]:
        assert needle in out, needle


def test_summary_lists_failed_checks() -> None:
    report = {
        "scenario": {"name": "x"}, "run": {"real_seconds": 90.0, "interrupted": False},
        "totals": {"contracts": 1, "payments": 2, "delivered_wh": 20, "paid_msat": 5000, "fees_msat": 2000,
                   "contracts_by_state": {"CONTRACT_STATE_ACTIVE": 1}},
        "meters": {"meter-1": {"role": "producer", "export_wh": 20, "paid_msat_by_payments": 0,
                               "earned_msat_by_payments": 5000}},
        "suppliers": {"meter-1": {"received_msat": 5000, "delivered_wh": 20, "expected_msat": 5000,
                                  "within_one_increment": True}},
        "events": [], "expected_checks": ["payments_made", "no_increment_paid_twice"],
        "checks": {"payments_made": {"ok": True}, "no_increment_paid_twice": {"ok": False, "detail": [1]}},
        "errors": [], "ok": False,
    }
    text = _summary(report)
    assert "check no_increment_paid_twice: FAILED" in text and text.endswith("NOT OK")
