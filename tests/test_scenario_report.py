"""Report building from fake collected data (no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from p2pep.lndrpc import lightning_pb2 as ln
from p2pep.scenario.catalog import load_scenario
from p2pep.scenario.report import (
    EventOutcome,
    RelaySample,
    RunFacts,
    build_report,
    relay_transitions,
    supplier_reconciliation,
)
from p2pep.settling.increments import cumulative_msat
from p2pep.v1 import common_pb2, meter_pb2, settlement_pb2

SIM0 = 1_782_032_400_000  # 2026-06-21T09:00:00Z
ACTIVE = settlement_pb2.CONTRACT_STATE_ACTIVE
COMPLETED = settlement_pb2.CONTRACT_STATE_COMPLETED
DEFAULTED = settlement_pb2.CONTRACT_STATE_DEFAULTED


def contract(cid: str, supplier: str, price: int, delivered: int, paid_wh: int, state: int = ACTIVE,
             start_min: int = 0, end_min: int = 15, energy: int = 300) -> settlement_pb2.ContractRecord:
    c = common_pb2.Contract(contract_id=cid, consumer="meter-3", supplier=supplier, energy_wh=energy,
                            price_msat_per_kwh=price, tier=common_pb2.TIER_SPLIT, hash=bytes.fromhex("ab" * 32))
    c.start.FromMilliseconds(SIM0 + start_min * 60_000)
    c.end.FromMilliseconds(SIM0 + end_min * 60_000)
    return settlement_pb2.ContractRecord(
        contract=c, state=state, delivered_wh=delivered, paid_wh=paid_wh,
        paid_msat=cumulative_msat(paid_wh, price), increments_paid=paid_wh // 10, increment_wh=10)


def payments_for(r: settlement_pb2.ContractRecord) -> list[settlement_pb2.Payment]:
    out = []
    price = r.contract.price_msat_per_kwh
    for k in range(1, r.paid_wh // 10 + 1):
        a, b = (k - 1) * 10, k * 10
        p = settlement_pb2.Payment(
            contract_id=r.contract.contract_id, increment=k, from_wh=a, to_wh=b,
            amount_msat=cumulative_msat(b, price) - cumulative_msat(a, price),
            payment_hash=f"{r.contract.contract_id}-{k}".encode().hex(), fee_msat=1000,
            payer=r.contract.consumer, payee=r.contract.supplier)
        p.settled.FromMilliseconds(SIM0 + k * 1000)
        out.append(p)
    return out


def invoices_for(pays: list[settlement_pb2.Payment]) -> list[ln.Invoice]:
    return [ln.Invoice(memo=f"p2pep {p.contract_id} #{p.increment}", amt_paid_msat=p.amount_msat,
                       state=ln.Invoice.SETTLED) for p in pays]


def status(name: str, role: str, energized: bool = True, imp: int = 0, exp: int = 0) -> meter_pb2.MeterStatus:
    s = meter_pb2.MeterStatus(meter_id=name, role=role, import_wh=imp, export_wh=exp, relay_energized=energized,
                              active_contracts=2 if energized else 0, paid_msat=1, earned_msat=2)
    s.sim_time.FromMilliseconds(SIM0 + 90 * 60_000)
    return s


def facts(**kw: object) -> RunFacts:
    s = load_scenario("hackathon")
    t = datetime(2026, 1, 1, tzinfo=UTC)
    c1 = contract("c-1", "meter-1", 250_000, 120, 120)
    c2 = contract("c-2", "meter-2", 280_000, 95, 90)
    pays = payments_for(c1) + payments_for(c2)
    f = RunFacts(
        scenario=s, run_dir="/tmp/run", started_at=t, ended_at=t, real_seconds=91.5,
        sim_reached_ms=SIM0 + 90 * 60_000,
        nodes={n: {"pubkey": f"02{i:02x}" + "00" * 31, "rpcserver": "x", "p2p": "y"}
               for i, n in enumerate(["hub", "meter-1", "meter-2", "meter-3"])},
        statuses={"meter-1": status("meter-1", "producer", exp=130), "meter-2": status("meter-2", "producer", exp=100),
                  "meter-3": status("meter-3", "consumer", imp=215)},
        status_fresh={"meter-1": True, "meter-2": True, "meter-3": True},
        contracts=[c2, c1],
        payments=list(reversed(pays)),
        invoices={"meter-1": invoices_for(payments_for(c1)) + [ln.Invoice(memo="other", amt_paid_msat=5,
                                                                          state=ln.Invoice.SETTLED)],
                  "meter-2": invoices_for(payments_for(c2)) + [ln.Invoice(memo="c-2 open", amt_paid_msat=0,
                                                                          state=ln.Invoice.OPEN)]},
        relay_samples={"meter-3": [RelaySample(1.0, SIM0, False, "STARTUP", 0, 0),
                                   RelaySample(2.0, SIM0 + 60_000, True, "COVERED", 2, 1),
                                   RelaySample(3.0, SIM0 + 120_000, True, "COVERED", 2, 1)]},
    )
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def test_report_of_a_good_run_passes_its_checks() -> None:
    r = build_report(facts())
    json.dumps(r)  # JSON-able
    assert r["ok"], (r["failed_checks"], r["errors"])
    assert [c["contract_id"] for c in r["contracts"]] == ["c-1", "c-2"] or len(r["contracts"]) == 2
    c1 = next(c for c in r["contracts"] if c["contract_id"] == "c-1")
    assert c1["state"] == "CONTRACT_STATE_ACTIVE" and c1["tier"] == "TIER_SPLIT" and c1["hash"] == "ab" * 32
    assert c1["delivered_wh"] == 120 and c1["paid_msat"] == 30_000 and c1["start"].startswith("2026-06-21T09:00")
    assert r["totals"]["payments"] == 12 + 9 and r["totals"]["delivered_wh"] == 215
    p = r["payments"][0]
    assert set(p) >= {"payment_hash", "amount_msat", "contract_id", "increment"}
    assert r["meters"]["meter-1"]["earned_msat_by_payments"] == 30_000
    assert r["meters"]["meter-3"]["paid_msat_by_payments"] == 30_000 + cumulative_msat(90, 280_000)
    assert r["meters"]["meter-3"]["import_wh"] == 215 and r["meters"]["meter-3"]["node_pubkey"].startswith("02")
    m1 = r["suppliers"]["meter-1"]
    assert m1["received_msat"] == 30_000 == m1["expected_msat"] and m1["unattributed_received_msat"] == 5
    m2 = r["suppliers"]["meter-2"]["contracts"][0]
    # 95 Wh delivered, 90 Wh paid: owed 5 Wh = 1 400 msat, less than one increment (2 801)
    assert m2["difference_msat"] == -1_400 and m2["within_one_increment"] and m2["one_increment_msat"] == 2_801
    assert r["checks"]["consumer_split_across_suppliers"]["detail"] == {"meter-3": ["meter-1", "meter-2"]}
    assert [t["energized"] for t in r["relay"]["meter-3"]["transitions"]] == [False, True]
    assert r["nodes"]["hub"]["pubkey"]


def test_supplier_short_by_more_than_an_increment_fails() -> None:
    f = facts()
    f.invoices["meter-1"] = f.invoices["meter-1"][:-3]  # (the foreign invoice and) two increments never reached meter-1's node
    r = build_report(f)
    assert not r["checks"]["suppliers_paid_as_delivered"]["ok"]
    assert "suppliers_paid_as_delivered" in r["failed_checks"] and not r["ok"]


def test_uncovered_relay_double_payment_and_overpayment_are_caught() -> None:
    f = facts()
    f.relay_samples["meter-3"].append(RelaySample(4.0, SIM0 + 180_000, True, "COVERED", 0, 1))
    f.payments.append(f.payments[0])
    over = contract("c-9", "meter-1", 250_000, delivered=10, paid_wh=20, state=COMPLETED)
    f.contracts.append(over)
    r = build_report(f)
    assert r["checks"]["relay_never_energized_without_cover"]["detail"]["uncovered_samples"] == {"meter-3": 1}
    assert not r["checks"]["no_increment_paid_twice"]["ok"]
    assert r["checks"]["paid_only_delivered"]["detail"][0]["contract_id"] == "c-9"
    assert not r["checks"]["payments_match_contracts"]["ok"]


def test_defaulted_contract_owes_at_most_one_increment() -> None:
    ok = contract("c-1", "meter-1", 250_000, delivered=57, paid_wh=50, state=DEFAULTED)
    bad = contract("c-2", "meter-2", 280_000, delivered=75, paid_wh=50, state=DEFAULTED)
    r = build_report(facts(contracts=[ok], payments=payments_for(ok), invoices={}))
    assert r["checks"]["defaulted_owe_at_most_one_increment"]["ok"]
    assert r["checks"]["some_contract_defaulted"]["detail"] == ["c-1"]
    r = build_report(facts(contracts=[ok, bad], payments=payments_for(ok) + payments_for(bad)))
    detail = r["checks"]["defaulted_owe_at_most_one_increment"]["detail"]
    assert [d["ok"] for d in detail] == [True, False]


def test_a_defaulted_contract_may_owe_the_failed_increment_and_part_of_the_next() -> None:
    """The increment whose payment failed (10 Wh) and what flowed of the next while it was
    being paid (seen in CI: 11 Wh) is at most one complete increment; two complete ones is not."""
    part = contract("c-1", "meter-1", 350_000, delivered=61, paid_wh=50, state=DEFAULTED)
    two = contract("c-2", "meter-2", 350_000, delivered=70, paid_wh=50, state=DEFAULTED)
    r = build_report(facts(contracts=[part, two], payments=payments_for(part) + payments_for(two), invoices={}))
    assert [d["ok"] for d in r["checks"]["defaulted_owe_at_most_one_increment"]["detail"]] == [True, False]
    owed = r["checks"]["suppliers_owed_at_most_one_increment"]["detail"]
    assert owed["meter-1"]["ok"] and not owed["meter-2"]["ok"]


def test_producer_leaves_checks() -> None:
    s = load_scenario("producer-leaves")
    gone = contract("c-2", "meter-2", 250_000, 60, 60, state=DEFAULTED, end_min=45)
    after = contract("c-5", "meter-1", 300_000, 200, 200, start_min=0, end_min=45)
    leave = EventOutcome("stop meter-2", "stop", "meter-2", 1800, applied_real_s=30.0,
                         applied_sim_ms=SIM0 + 30 * 60_000, ok=True,
                         detail={"delivered_wh_before": {"c-2": 60, "c-5": 150}})
    f = facts(scenario=s, contracts=[gone, after], payments=payments_for(gone) + payments_for(after),
              events=[leave], invoices={})
    r = build_report(f)
    assert r["checks"]["supplier_left_and_contracts_ended"]["ok"]
    assert r["checks"]["consumer_rematched_or_blocked"]["detail"][0]["served_by_after"] == ["c-5"]
    # it came back and signed a new contract, active at the end: not one it held when it left
    again = contract("c-9", "meter-2", 250_000, 20, 20, state=ACTIVE, start_min=72, end_min=87)
    r = build_report(facts(scenario=s, contracts=[gone, after, again],
                           payments=payments_for(gone) + payments_for(after) + payments_for(again),
                           events=[leave], invoices={}))
    assert r["checks"]["supplier_left_and_contracts_ended"]["ok"], r["checks"]["supplier_left_and_contracts_ended"]
    still = contract("c-2", "meter-2", 250_000, 60, 60, state=ACTIVE, end_min=45)
    # at the end of the simulated period meter-2's contract was still active; later all ended
    ended = contract("c-2", "meter-2", 250_000, 60, 60, state=COMPLETED, end_min=45)
    r = build_report(facts(scenario=s, contracts=[ended], contracts_at_sim_end=[still],
                           payments=payments_for(still), events=[leave], relay_samples={}))
    assert not r["checks"]["supplier_left_and_contracts_ended"]["ok"]
    assert not r["checks"]["consumer_rematched_or_blocked"]["ok"]
    assert r["at_sim_end"]["contracts_by_state"] == {"CONTRACT_STATE_ACTIVE": 1}
    assert {"supplier_left_and_contracts_ended", "consumer_rematched_or_blocked"} <= set(r["failed_checks"])
    # ... or blocked after the stop is fine too
    samples = {"meter-3": [RelaySample(31.0, SIM0 + 31 * 60_000, False, "NO_CONTRACT", 0, 3)]}
    r = build_report(facts(scenario=s, contracts=[ended], payments=payments_for(ended), events=[leave],
                           relay_samples=samples))
    assert r["checks"]["consumer_rematched_or_blocked"]["detail"][0]["blocked_after"]


def test_interrupted_or_errored_run_is_not_ok() -> None:
    assert not build_report(facts(interrupted=True))["ok"]
    assert not build_report(facts(errors=["settlement exited"]))["ok"]


def test_reconciliation_ignores_unsettled_and_foreign_invoices() -> None:
    c = contract("abc", "meter-1", 250_000, 20, 20)
    inv = [ln.Invoice(memo="abc 1", amt_paid_msat=2_500, state=ln.Invoice.SETTLED),
           ln.Invoice(memo="abc 2", amt_paid_msat=2_500, state=ln.Invoice.SETTLED),
           ln.Invoice(memo="abc 3", amt_paid_msat=0, state=ln.Invoice.CANCELED),
           ln.Invoice(memo="xyz", amt_paid_msat=7, state=ln.Invoice.SETTLED)]
    rec = supplier_reconciliation("meter-1", [c], inv, 10)
    assert rec["received_msat"] == 5_000 == rec["expected_msat"] and rec["invoices_settled"] == 2
    assert rec["unattributed_received_msat"] == 7


def test_relay_transitions_compress_samples() -> None:
    samples = [RelaySample(float(i), SIM0 + i, e, "R", 1, 0) for i, e in enumerate([False, False, True, True, False])]
    assert [t["energized"] for t in relay_transitions(samples)] == [False, True, False]


def test_supplier_debt_is_counted_over_all_contracts() -> None:
    # each contract owes less than one increment, but together meter-1 is owed three
    debts = [contract(f"d-{i}", "meter-1", 250_000, delivered=9, paid_wh=0, state=DEFAULTED) for i in range(3)]
    r = build_report(facts(contracts=debts, payments=[], invoices={}))
    assert r["checks"]["defaulted_owe_at_most_one_increment"]["ok"]
    owed = r["checks"]["suppliers_owed_at_most_one_increment"]
    assert not owed["ok"]
    assert owed["detail"]["meter-1"] == {"unpaid_msat": 3 * 2_250, "one_increment_msat": 2_501, "ok": False,
                                         "contracts_with_debt": 3}
    assert owed["detail"]["meter-2"]["ok"]


def test_supplier_total_must_be_within_one_increment() -> None:
    # two contracts, each 6 Wh unpaid (within one increment apiece), 12 Wh in total: not within
    a = contract("a", "meter-1", 250_000, delivered=26, paid_wh=20)
    b = contract("b", "meter-1", 250_000, delivered=16, paid_wh=10)
    pays = payments_for(a) + payments_for(b)
    r = build_report(facts(contracts=[a, b], payments=pays, invoices={"meter-1": invoices_for(pays)}))
    sup = r["suppliers"]["meter-1"]
    assert sup["every_contract_within_one_increment"] and not sup["within_one_increment"]
    assert sup["difference_msat"] == -3_000 and sup["one_increment_msat"] == 2_501
    assert not r["checks"]["suppliers_paid_as_delivered"]["ok"]
