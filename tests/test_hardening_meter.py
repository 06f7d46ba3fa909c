"""Hostile input at the meter (issue 11, "Hardening that belongs here"): terms_json with
lone surrogates, unknown keys and numbers beyond 64 bits is INVALID_ARGUMENT and grows no
metric label; the household app's numeric query parameters answer 400 with a JSON body;
the meter keeps its key under its state folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from test_meter_service import Rig, make_terms, pair, rig, tj  # noqa: F401  (rig: the fixture)
from test_portal import PW, PortalRig, portal  # noqa: F401  (portal: the fixture)
from web_helpers import WebClient

from p2pep.metering.request_checks import TERMS_FIELDS, Refusal, parse_terms
from p2pep.settings.meter import MeterSettings
from p2pep.v1 import meter_pb2

REFUSED = "p2pep_meter_requests_refused_total"


def _field_labels() -> set[str]:
    return {s.labels["field"] for m in REGISTRY.collect() if m.name == REFUSED.removesuffix("_total")
            for s in m.samples if s.name == REFUSED}


def _doc(r: Rig, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(tj(make_terms(r)))
    doc.update(changes)
    return doc


async def test_hostile_terms_json_is_invalid_argument_and_grows_no_label(rig: Rig) -> None:  # noqa: F811
    home, _ = await pair(rig)
    good = _doc(rig)
    cases = [
        json.dumps({**good, "contract_id": "k-\ud800"}),  # a lone surrogate in a value (JSON escapes it)
        json.dumps({**good, "\udfff": 1}),  # ... in an unknown key
        '{"contract_id": "\\ud800\\udc00\\ud800"}',
        *[json.dumps({**good, f"extra-{i}": i}) for i in range(20)],  # unknown keys, each different
        json.dumps({**good, "x\n\u2028y" * 50: 1}),
        json.dumps({**good, "energy_wh": 10**30}),  # numbers beyond 64 bits
        json.dumps({**good, "end_ms": 2**63 + 5}),
        json.dumps({**good, "price_msat_per_kwh": 10**12, "energy_wh": 10**12}),
        json.dumps({**good, "tier": 10**20}),
        "1" * 5000,  # an integer of 5000 digits: Python's json refuses it with a ValueError
        "[" * 100_000,  # deeper than the parser's recursion
        json.dumps(good) + " " * 20_000,
    ]
    before = _field_labels()
    for text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await home.SignContract(meter_pb2.SignContractRequest(terms_json=text))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (text[:80], err.value.details())
        assert (err.value.details() or "").startswith("terms_json"), err.value.details()
    labels = _field_labels() - before
    assert labels <= TERMS_FIELDS, labels
    assert not any("extra" in label or "\\u" in label for label in _field_labels())
    assert rig.apps["home"].meter.book.all() == []
    # a good request still works
    await home.SignContract(meter_pb2.SignContractRequest(terms_json=tj(make_terms(rig))))


def test_parse_terms_names_only_known_fields() -> None:
    from p2pep.metering.signing import MeterKey

    a, b = MeterKey.generate().pubkey_hex, MeterKey.generate().pubkey_hex
    good = dict(contract_id="c", consumer="x", supplier="y", consumer_pubkey=a, supplier_pubkey=b, energy_wh=10,
                price_msat_per_kwh=1, start_ms=0, end_ms=10, tier=1, increment_wh=10, v=2,
                consumer_node="02" + "11" * 32, supplier_node="03" + "22" * 32)
    assert parse_terms(json.dumps(good)).energy_wh == 10
    for bad in ({**good, "zz\ud800": 1}, {**good, "consumer": "\ud800"}, {**good, "start_ms": -1},
                {**good, "energy_wh": 2**64}, {**good, "end_ms": 253_402_300_800_000}, {**good, "v": 1},
                {k: v for k, v in good.items() if k != "tier"}, {**good, "tier": True}, {**good, "tier": 1.0}):
        with pytest.raises(Refusal) as err:
            parse_terms(json.dumps(bad))
        assert err.value.status == "INVALID_ARGUMENT" and err.value.field in TERMS_FIELDS, err.value
        str(err.value).encode("utf-8")  # always sendable as a status message


@pytest.mark.parametrize("query", ["limit=\u00b2", "limit=%C2%B2", "limit=\u0663", "limit=-1", "limit=+5",
                                   "limit=1e3", "limit=99999999999999999999999999", "limit=%20", "limit=",
                                   "limit=0x10", "limit=%ED%A0%80"])
async def test_household_limit_must_be_ascii_digits_in_range(portal: PortalRig, query: str) -> None:  # noqa: F811
    """The household app (the portal) answers 400 with a JSON body naming the parameter."""
    async with WebClient(portal.base) as a:
        assert (await a.register("alice@example.org", PW))[0] == 201
        code = await portal.code("home")
        assert (await a.send("POST", "/api/meters", {"meter_id": "home", "code": code}))[0] == 201
        status, body = await a.get(f"/api/meters/home/payments?{query}")
        assert status == 400, query
        assert body["param"] == "limit" and body["error"].startswith("limit: must be an integer from 1 to 500")
        status, body = await a.get(f"/api/meters/home/status?{query.replace('limit', 'payments')}")
        assert status == 400 and body["param"] == "payments"
        assert (await a.get("/api/meters/home/payments?limit=500"))[0] == 200


def test_meter_key_and_database_default_under_its_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    s = MeterSettings(meter_id="meter-7", role="consumer", settlement_target="127.0.0.1:1", price_msat_per_kwh=1)
    folder = tmp_path / "state" / "p2pep" / "meters" / "meter-7"
    assert s.state_folder == folder
    assert s.key_file == folder / "meter.key" and s.db_file == str(folder / "meter.sqlite")
    explicit = MeterSettings(meter_id="meter-7", role="consumer", settlement_target="127.0.0.1:1",
                             price_msat_per_kwh=1, state_dir=tmp_path / "elsewhere")
    assert explicit.key_file == tmp_path / "elsewhere" / "meter.key"
    given = MeterSettings(meter_id="meter-7", role="consumer", settlement_target="127.0.0.1:1",
                          price_msat_per_kwh=1, key_path=tmp_path / "k", db_path=str(tmp_path / "d"))
    assert given.key_file == tmp_path / "k" and given.db_file == str(tmp_path / "d")


async def test_a_meter_started_without_paths_keeps_nothing_in_the_working_directory(
        rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    app = await rig.meter("home", "consumer", key_path=None, db_path="")
    folder = tmp_path / "state" / "p2pep" / "meters" / "home"
    assert list(cwd.iterdir()) == []
    key = folder / "meter.key"
    assert key.read_text().strip() == app.meter.key.secret_hex
    assert key.stat().st_mode & 0o777 == 0o600 and folder.stat().st_mode & 0o077 == 0
    assert (folder / "meter.sqlite").exists()
