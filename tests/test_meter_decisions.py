"""Pure decisions of the meter service: order sizing, request checks, its contract book."""

from __future__ import annotations

import json
from datetime import date
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pep.canonical import canonical_json
from p2pep.metering.contract_book import ContractBook, ContractView, Party
from p2pep.metering.ordering import (
    PlacedOrder,
    demand_wh,
    order_id,
    ordered_wh,
    supply_wh,
    window_index,
)
from p2pep.metering.profiles import WMS_PER_WH
from p2pep.metering.request_checks import (
    Code,
    DecodedInvoice,
    Refusal,
    SigningPolicy,
    check_contract_for_billing,
    check_counterparty_registered,
    check_counterparty_signature,
    check_increment,
    check_invoice_to_pay,
    check_not_paying_ahead,
    check_report_matches_terms,
    check_terms,
    fee_limit_msat,
    own_check_allows,
    own_check_blocks,
    parse_terms,
)
from p2pep.metering.signing import MeterKey
from p2pep.settings.meter import MeterSettings, parse_node_address
from p2pep.settling.allocation import AllocationTarget, allocate
from p2pep.settling.contracts import ContractState, ContractTerms, sign_contract
from p2pep.settling.increments import amount_msat
from services.meter.sources import ConstantPowerSource, build_source

CONSUMER_KEY = MeterKey.from_hex("11" * 32)
SUPPLIER_KEY = MeterKey.from_hex("22" * 32)
CONSUMER_NODE = "02" + "c1" * 32
SUPPLIER_NODE = "03" + "5a" * 32
NOW = 1_800_000_000_000


def terms(**kw: object) -> ContractTerms:
    base: dict[str, object] = dict(
        contract_id="c-1", consumer="home", supplier="solar", consumer_pubkey=CONSUMER_KEY.pubkey_hex,
        supplier_pubkey=SUPPLIER_KEY.pubkey_hex, consumer_node=CONSUMER_NODE, supplier_node=SUPPLIER_NODE,
        energy_wh=500, price_msat_per_kwh=100_000,
        start_ms=NOW, end_ms=NOW + 15_000, tier=1, increment_wh=10,
    )
    base.update(kw)
    return ContractTerms(**base)  # type: ignore[arg-type]


def policy(meter_id: str = "home", key: MeterKey = CONSUMER_KEY, role: str = "consumer",
           price: int = 120_000, node: str | None = None) -> SigningPolicy:
    if node is None:
        node = CONSUMER_NODE if meter_id == "home" else SUPPLIER_NODE
    return SigningPolicy(meter_id, key.pubkey_hex, node, role, price, 100, 86_400_000)


def refused(code: Code, field: str):  # type: ignore[no-untyped-def]
    class _Ctx:
        def __enter__(self) -> None:
            return None

        def __exit__(self, et, e, tb) -> bool:  # type: ignore[no-untyped-def]
            assert et is Refusal, f"expected a refusal, got {et}"
            assert (e.code, e.field) == (code, field), str(e)
            return True

    return _Ctx()


# -- order sizing ---------------------------------------------------------------------------------


def test_demand_is_expected_import_minus_contract_energy_left() -> None:
    need = 2000 * 900_000  # 2 kW over 15 min = 500 Wh
    assert demand_wh(need, 0) == 500
    assert demand_wh(need, 120) == 380
    assert demand_wh(need, 800) == 0
    assert demand_wh(need + 1, 0) == 501  # rounded up: the relay must not be short


def test_supply_is_expected_export_minus_what_is_owed() -> None:
    assert supply_wh(WMS_PER_WH * 300 + 1, 0) == 300  # rounded down: never offer what may not come
    assert supply_wh(WMS_PER_WH * 300, 100) == 200
    assert supply_wh(0, 0) == 0


@given(st.integers(0, 10**9), st.integers(0, 10**6))
def test_order_sizes_never_negative(wms: int, left: int) -> None:
    assert demand_wh(wms, left) >= 0 and supply_wh(wms, left) >= 0
    assert demand_wh(wms, left) + left >= wms / WMS_PER_WH


def test_window_index_and_order_ids() -> None:
    assert window_index(900_000 * 7 + 5, 900_000) == 7
    a, b = order_id("home", 7, "demand"), order_id("home", 7, "demand")
    assert a != b and a.startswith("home:w7:demand:")
    orders = [PlacedOrder("a", "demand", 100, 1000, 2000), PlacedOrder("b", "supply", 50, 1000, 2000),
              PlacedOrder("c", "demand", 30, 10, 20)]
    assert ordered_wh(orders, "demand", 500) == 100


# -- SignContract checks ------------------------------------------------------------------------------


def test_consumer_signs_terms_within_its_limit() -> None:
    assert check_terms(terms(), policy(), now_ms=NOW, ordered_wh=None, committed_wh=0) is Party.CONSUMER
    sup = policy("solar", SUPPLIER_KEY, "producer", 90_000)
    assert check_terms(terms(), sup, now_ms=NOW, ordered_wh=None, committed_wh=0) is Party.SUPPLIER


@pytest.mark.parametrize(
    ("t", "p", "field"),
    [
        (terms(consumer="other"), policy(), "terms_json.consumer"),
        (terms(consumer_pubkey=SUPPLIER_KEY.pubkey_hex, supplier_pubkey=CONSUMER_KEY.pubkey_hex), policy(),
         "terms_json.consumer_pubkey"),
        (terms(), policy(role="producer"), "terms_json.consumer"),
        (terms(), policy(node="02" + "ee" * 32), "terms_json.consumer_node"),
        (terms(consumer_node=SUPPLIER_NODE, supplier_node=CONSUMER_NODE), policy(), "terms_json.consumer_node"),
        (terms(), policy("solar", SUPPLIER_KEY, "producer", 90_000, node=CONSUMER_NODE), "terms_json.supplier_node"),
        (terms(price_msat_per_kwh=130_000), policy(), "terms_json.price_msat_per_kwh"),
        (terms(price_msat_per_kwh=80_000), policy("solar", SUPPLIER_KEY, "producer", 90_000),
         "terms_json.price_msat_per_kwh"),
        (terms(increment_wh=500), policy(), "terms_json.increment_wh"),
        (terms(start_ms=NOW - 20_000, end_ms=NOW - 1), policy(), "terms_json.end_ms"),
        (terms(end_ms=NOW + 2 * 86_400_000), policy(), "terms_json.end_ms"),
    ],
)
def test_terms_refused_naming_the_field(t: ContractTerms, p: SigningPolicy, field: str) -> None:
    with refused(Code.FAILED_PRECONDITION, field):
        check_terms(t, p, now_ms=NOW, ordered_wh=None, committed_wh=0)


def test_terms_beyond_recent_orders_are_refused() -> None:
    check_terms(terms(energy_wh=300), policy(), now_ms=NOW, ordered_wh=500, committed_wh=200)
    with refused(Code.FAILED_PRECONDITION, "terms_json.energy_wh"):
        check_terms(terms(energy_wh=301), policy(), now_ms=NOW, ordered_wh=500, committed_wh=200)


def test_parse_terms_names_the_bad_field() -> None:
    doc = terms().canonical()
    assert parse_terms(canonical_json(doc).decode()) == terms()
    with refused(Code.INVALID_ARGUMENT, "terms_json"):
        parse_terms("{not json")
    with refused(Code.INVALID_ARGUMENT, "terms_json"):
        parse_terms("[1]")
    with refused(Code.INVALID_ARGUMENT, "terms_json.energy_wh"):
        parse_terms(json.dumps({**doc, "energy_wh": -5}))
    del doc["price_msat_per_kwh"]
    with refused(Code.INVALID_ARGUMENT, "terms_json.price_msat_per_kwh"):
        parse_terms(json.dumps(doc))


# -- invoice / pay checks -----------------------------------------------------------------------------


def view(party: Party = Party.CONSUMER, state: ContractState = ContractState.ACTIVE, **kw: object) -> ContractView:
    v = ContractView(terms(**kw), party, b"sig", NOW)
    v.state = state
    return v


def test_billing_needs_a_contract_signed_as_that_party() -> None:
    with refused(Code.FAILED_PRECONDITION, "contract_id"):
        check_contract_for_billing(None, "c-9", Party.CONSUMER)
    with refused(Code.FAILED_PRECONDITION, "contract_id"):
        check_contract_for_billing(view(Party.SUPPLIER), "c-1", Party.CONSUMER)
    with refused(Code.FAILED_PRECONDITION, "contract_id"):
        check_contract_for_billing(view(state=ContractState.REJECTED), "c-1", Party.CONSUMER)
    assert check_contract_for_billing(view(state=ContractState.ENDED_EARLY), "c-1", Party.CONSUMER)
    # settlement collects what was delivered under a defaulted contract once the failure passed
    assert check_contract_for_billing(view(state=ContractState.DEFAULTED), "c-1", Party.CONSUMER)


def test_increment_must_be_next_and_exact() -> None:
    v = view(price_msat_per_kwh=123_457)
    assert check_increment(v, increment=1, from_wh=0, to_wh=10, amount_msat=1234, last_number=0, last_to_wh=0,
                           contract_ended=False) == amount_msat(0, 10, 123_457) == 1234
    with refused(Code.INVALID_ARGUMENT, "amount_msat"):
        check_increment(v, increment=1, from_wh=0, to_wh=10, amount_msat=1235, last_number=0, last_to_wh=0,
                        contract_ended=False)
    with refused(Code.FAILED_PRECONDITION, "increment"):
        check_increment(v, increment=3, from_wh=20, to_wh=30, amount_msat=None, last_number=1, last_to_wh=10,
                        contract_ended=False)
    with refused(Code.FAILED_PRECONDITION, "to_wh"):  # partial increment while the contract runs
        check_increment(v, increment=2, from_wh=10, to_wh=15, amount_msat=None, last_number=1, last_to_wh=10,
                        contract_ended=False)
    assert check_increment(v, increment=2, from_wh=10, to_wh=15, amount_msat=None, last_number=1, last_to_wh=10,
                           contract_ended=True) == amount_msat(10, 15, 123_457)


def test_invoice_to_pay_must_match_amount_payee_and_time() -> None:
    t = terms()
    inv = DecodedInvoice(SUPPLIER_NODE.upper(), "h", 1000, NOW + 1)
    check_invoice_to_pay(inv, terms=t, amount_msat=1000, now_ms=NOW)
    with refused(Code.INVALID_ARGUMENT, "payment_request"):
        check_invoice_to_pay(inv, terms=t, amount_msat=999, now_ms=NOW)
    with refused(Code.FAILED_PRECONDITION, "payment_request"):  # the payee is the signed terms' supplier_node
        check_invoice_to_pay(DecodedInvoice("02" + "ee" * 32, "h", 1000, NOW + 1), terms=t, amount_msat=1000,
                             now_ms=NOW)
    with refused(Code.FAILED_PRECONDITION, "payment_request"):  # the consumer's own node is no payee either
        check_invoice_to_pay(DecodedInvoice(CONSUMER_NODE, "h", 1000, NOW + 1), terms=t, amount_msat=1000,
                             now_ms=NOW)
    with refused(Code.FAILED_PRECONDITION, "payment_request"):
        check_invoice_to_pay(inv, terms=t, amount_msat=1000, now_ms=NOW + 1)


def test_consumer_signs_only_for_the_supplier_as_registered() -> None:
    t = terms()
    check_counterparty_registered(t, Party.CONSUMER, (SUPPLIER_KEY.pubkey_hex, SUPPLIER_NODE))
    with refused(Code.FAILED_PRECONDITION, "terms_json.supplier"):
        check_counterparty_registered(t, Party.CONSUMER, None)
    with refused(Code.FAILED_PRECONDITION, "terms_json.supplier_node"):  # a stranger's node as payee
        check_counterparty_registered(t, Party.CONSUMER, (SUPPLIER_KEY.pubkey_hex, "02" + "ee" * 32))
    with refused(Code.FAILED_PRECONDITION, "terms_json.supplier_pubkey"):
        check_counterparty_registered(t, Party.CONSUMER, (CONSUMER_KEY.pubkey_hex, SUPPLIER_NODE))


def test_a_report_changes_state_and_progress_never_terms() -> None:
    t = terms()
    same = {"contract_id": "c-1", "consumer": "home", "supplier": "solar", "energy_wh": 500,
            "price_msat_per_kwh": 100_000, "start_ms": NOW, "end_ms": NOW + 15_000, "increment_wh": 10,
            "consumer_node": CONSUMER_NODE, "supplier_node": SUPPLIER_NODE.upper()}
    check_report_matches_terms(t, same, t.hash())
    check_report_matches_terms(t, {"contract_id": "c-1"}, b"")  # restating nothing is fine
    for name, value, field in [("supplier_node", "02" + "ee" * 32, "supplier_node"),
                               ("consumer_node", SUPPLIER_NODE, "consumer_node"),
                               ("supplier", "mallory", "contract.supplier"),
                               ("price_msat_per_kwh", 1, "contract.price_msat_per_kwh"),
                               ("energy_wh", 501, "contract.energy_wh"),
                               ("end_ms", NOW + 1, "contract.end"),
                               ("increment_wh", 5, "increment_wh")]:
        with refused(Code.INVALID_ARGUMENT, field):
            check_report_matches_terms(t, {**same, name: value}, t.hash())
    with refused(Code.INVALID_ARGUMENT, "contract.hash"):
        check_report_matches_terms(t, same, terms(supplier_node="02" + "ee" * 32).hash())


def test_a_contract_runs_only_with_the_counterpartys_signature() -> None:
    t = terms()
    check_counterparty_signature(t, Party.CONSUMER, sign_contract(t, SUPPLIER_KEY))
    check_counterparty_signature(t, Party.SUPPLIER, sign_contract(t, CONSUMER_KEY))
    with refused(Code.FAILED_PRECONDITION, "supplier_signature"):
        check_counterparty_signature(t, Party.CONSUMER, b"")
    with refused(Code.FAILED_PRECONDITION, "supplier_signature"):  # its own signature is not the supplier's
        check_counterparty_signature(t, Party.CONSUMER, sign_contract(t, CONSUMER_KEY))
    with refused(Code.FAILED_PRECONDITION, "supplier_signature"):  # a stranger's key
        check_counterparty_signature(t, Party.CONSUMER, sign_contract(t, MeterKey.from_hex("33" * 32)))
    other = terms(supplier_node="02" + "ee" * 32)
    with refused(Code.FAILED_PRECONDITION, "consumer_signature"):  # signed other terms
        check_counterparty_signature(t, Party.SUPPLIER, sign_contract(other, CONSUMER_KEY))


def test_never_pays_ahead_of_imports_by_more_than_one_increment() -> None:
    check_not_paying_ahead(paid_wh_total=0, increment_wh_to_pay=10, import_since_first_contract_wh=0, increment_wh=10)
    check_not_paying_ahead(paid_wh_total=10, increment_wh_to_pay=10, import_since_first_contract_wh=10,
                           increment_wh=10)
    with refused(Code.FAILED_PRECONDITION, "to_wh"):
        check_not_paying_ahead(paid_wh_total=10, increment_wh_to_pay=10, import_since_first_contract_wh=9,
                               increment_wh=10)


def test_own_check_never_lets_two_increments_go_unpaid() -> None:
    assert own_check_allows(0, 8, 10)
    assert own_check_allows(11, 8, 10)
    assert not own_check_allows(12, 8, 10)
    assert fee_limit_msat(100_000) == 2000


def test_own_check_is_per_contract_so_a_split_demand_does_not_deadlock() -> None:
    # two suppliers, each with 9 Wh unpaid: nothing is due at settlement, 18 Wh in total
    assert own_check_blocks([("a", 9, 10), ("b", 9, 10)], 4) is None
    why = own_check_blocks([("a", 9, 10), ("b", 17, 10)], 4)
    assert why is not None and "contract b" in why
    a, b = view(contract_id="a", energy_wh=10), view(contract_id="b", energy_wh=100)
    a.attributed_wh, b.attributed_wh = 10, 30
    book = ContractBook([a, b])  # a is used up: it gets no more energy, so the step cannot push it
    assert [c for c, _, _ in book.exposure()] == ["b"]


@given(st.lists(st.integers(0, 9), min_size=1, max_size=200))
def test_unpaid_stays_below_two_increments_when_paying_each_completed_one(steps: list[int]) -> None:
    """Flowing only when the own check allows, and paying each increment once complete
    (the worst case: payment lags by one step), unpaid never reaches two increments."""
    inc, imported, paid = 10, 0, 0
    for step in steps:
        if own_check_allows(imported - paid, step, inc):
            imported += step
        assert imported - paid < 2 * inc
        if imported - paid >= inc:
            paid += inc


# -- the contract book ----------------------------------------------------------------------------------


def test_attribution_mirrors_settlement_allocation() -> None:
    a = view(contract_id="a", energy_wh=30)
    b = view(contract_id="b", energy_wh=90, end_ms=NOW + 15_000, supplier="wind")
    book = ContractBook([a, b])
    expected = allocate(40, [AllocationTarget("a", 30, a.terms.average_power_w(), 1, group="solar"),
                             AllocationTarget("b", 90, b.terms.average_power_w(), 1, group="wind")]).shares
    assert book.attribute_import(40) == {k: v for k, v in expected.items() if v}
    assert 0 < expected["a"] < 30 and 0 < expected["b"] < 90  # two suppliers: in parallel
    assert a.attributed_wh + b.attributed_wh == 40
    book.attribute_import(1000)  # more than the contracts' room: the rest is nobody's
    assert (a.attributed_wh, b.attributed_wh) == (30, 90)
    assert book.energy_left_wh(Party.CONSUMER) == 0


def test_attribution_fills_contracts_with_one_supplier_one_at_a_time() -> None:
    a, b = view(contract_id="a", energy_wh=30), view(contract_id="b", energy_wh=90)
    book = ContractBook([b, a])
    assert book.attribute_import(25) == {"a": 25}
    assert book.attribute_import(25) == {"a": 5, "b": 20}


def test_unpaid_counts_open_contracts_and_writes_off_ended_ones() -> None:
    a, b = view(contract_id="a"), view(contract_id="b")
    book = ContractBook([a, b])
    book.attribute_import(30)
    assert book.unpaid_wh() == 30
    book.record_payment("a", 0, 10, 1000)
    assert book.unpaid_wh() == 20 and book.paid_wh_total() == 10
    upd = book.apply_report("b", state=ContractState.ENDED_EARLY, delivered_wh=15, paid_wh=10, paid_msat=1000,
                            increments_paid=1)
    assert upd.ended and upd.changed and not upd.activated
    assert book.unpaid_wh() == a.unpaid_wh
    # a final state is never left, counters never go backwards
    book.apply_report("b", state=ContractState.ACTIVE, delivered_wh=3, paid_wh=0, paid_msat=0, increments_paid=0)
    assert (b.state, b.delivered_wh) == (ContractState.ENDED_EARLY, 15)


def test_covers_report_paid_up_and_energy_left() -> None:
    a = view(contract_id="a", energy_wh=100)
    book = ContractBook([a, view(contract_id="p", state=ContractState.PROPOSED)])
    book.attribute_import(19)
    (cover,) = book.covers()
    assert (cover.contract_id, cover.energy_left_wh, cover.paid_up) == ("a", 81, True)
    book.attribute_import(1)
    assert not book.covers()[0].paid_up
    assert book.energy_left_wh(Party.CONSUMER) == 80 + 500  # the proposed one counts for order sizing


# -- sources and settings ---------------------------------------------------------------------------------


def test_constant_source_flows_exactly() -> None:
    src = ConstantPowerSource(2000, 0, ZoneInfo("UTC"))
    flows = src.day_flows(date(2026, 6, 21))
    assert flows.imports.total_wms == 2000 * 86_400_000 and flows.exports.total_wms == 0


def settings(**kw: object) -> MeterSettings:
    base: dict[str, object] = dict(meter_id="m1", role="consumer", settlement_target="x:1",
                                   price_msat_per_kwh=100_000)
    base.update(kw)
    return MeterSettings(**base)  # type: ignore[arg-type]


def test_constant_source_direction_follows_role() -> None:
    assert build_source(settings(role="consumer", constant_w=1500)) == ConstantPowerSource(1500, 0, ZoneInfo("Europe/Berlin"))
    assert build_source(settings(role="producer", constant_w=1500)).export_w == 1500  # type: ignore[attr-defined]
    pro = build_source(settings(role="prosumer", constant_w=-700))
    assert (pro.import_w, pro.export_w) == (0, 700)  # type: ignore[attr-defined]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = "03" + "ab" * 32 + "@127.0.0.1:9735"
    for k, v in dict(METER_ID="meter-3", ROLE="consumer", SETTLEMENT_TARGET="127.0.0.1:50051",
                     PRICE_MSAT_PER_KWH="150000", PARTNERS="meter-1, meter-2", HUB=hub, PV_KWP="4.5",
                     SIM_START="2026-06-21T06:00:00+02:00", ACCEL="120").items():
        monkeypatch.setenv(f"P2PEP_METER_{k}", v)
    s = MeterSettings()  # type: ignore[call-arg]
    assert s.partners == ["meter-1", "meter-2"] and s.peak_watts() == 4500 and s.accel == 120
    assert s.tick_sim_ms == 250 * 120 and s.window_ms == 900_000
    assert parse_node_address(s.hub) == ("03" + "ab" * 32, "127.0.0.1:9735")
    monkeypatch.setenv("P2PEP_METER_HUB", "nonsense")
    with pytest.raises(ValueError, match="hub"):
        MeterSettings()  # type: ignore[call-arg]
    monkeypatch.setenv("P2PEP_METER_HUB", "")
    monkeypatch.setenv("P2PEP_METER_SOURCE", "csv")
    with pytest.raises(ValueError, match="csv_path"):
        MeterSettings()  # type: ignore[call-arg]


def test_bad_configuration_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pep.servicekit import load_settings

    for k in ("METER_ID", "ROLE", "SETTLEMENT_TARGET", "PRICE_MSAT_PER_KWH"):
        monkeypatch.delenv(f"P2PEP_METER_{k}", raising=False)
    monkeypatch.setenv("P2PEP_METER_ROLE", "landlord")
    with pytest.raises(SystemExit) as info:
        load_settings(MeterSettings, "meter")
    msg = str(info.value)
    assert "P2PEP_METER_METER_ID" in msg and "P2PEP_METER_ROLE" in msg and "P2PEP_METER_PRICE_MSAT_PER_KWH" in msg
