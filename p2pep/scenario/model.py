"""What a scenario is: network shape, meters, timing, events (pure data + parsing).

Scenarios are written in TOML (``scenarios/*.toml``); :func:`parse_scenario` turns
the parsed mapping into a :class:`Scenario` and refuses bad input with a
:class:`ScenarioError` naming the field (``meters[2].price_msat_per_kwh: ...``).

Units follow the rest of P2PEP: power in integer W, energy in integer Wh, prices
in integer msat/kWh, PV size in integer Wp. Durations are written as
``"90m"``, ``"1h30m"``, ``"45s"`` (simulated time unless said otherwise).

Links: a meter with ``link = "<profile>"`` (:data:`p2pep.scenario.links.PROFILES`) reaches the
services, and they reach it, through Toxiproxy with that profile's toxics; a
``partition`` event (``target = "link:meter-N"``, ``for = "15m"``) cuts a meter's link for a
simulated duration and heals it after, before the scenario ends. A meter without ``link`` but
with a partition event gets the ``none`` profile (its proxies, no toxics); a meter with
neither is dialled directly, as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Role = Literal["producer", "consumer", "prosumer"]
SourceKind = Literal["h0", "pv", "constant", "csv"]
EventAction = Literal["stop", "start", "drain_channel", "partition"]

ROLES: tuple[str, ...] = ("producer", "consumer", "prosumer")
SOURCES: tuple[str, ...] = ("h0", "pv", "constant", "csv")
ACTIONS: tuple[str, ...] = ("stop", "start", "drain_channel", "partition")
SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGKILL", "SIGINT")
CORE_SERVICES: tuple[str, ...] = ("matcher", "settlement", "anchor", "console")
# Event targets besides the meters and the core services: the regtest network's lnd nodes,
# stopped and started again on the same data (by node name, "hub" or a meter's), and btcd. In
# regtest mode btcd deletes its block database whenever it starts: started again, it fetches the
# chain back from the network's second btcd, which relays blocks only (docs/faults.md).
LND_PREFIX = "lnd:"
BTCD = "btcd"


# A partition event's target: a meter's link to the services ("link:meter-3").
LINK_PREFIX = "link:"


def lnd_target(target: str) -> str | None:
    """The node an event's target names (``lnd:meter-2`` -> ``meter-2``), or None."""
    return target.removeprefix(LND_PREFIX) if target.startswith(LND_PREFIX) else None


def link_target(target: str) -> str | None:
    """The meter whose link an event's target names (``link:meter-3`` -> ``meter-3``), or None."""
    return target.removeprefix(LINK_PREFIX) if target.startswith(LINK_PREFIX) else None

# Checks every scenario must pass (names as in p2pep.scenario.report.CHECKS).
DEFAULT_EXPECT: tuple[str, ...] = (
    "suppliers_paid_as_delivered",
    "relay_never_energized_without_cover",
    "no_increment_paid_twice",
    "paid_only_delivered",
    "payments_match_contracts",
    "defaulted_owe_at_most_one_increment",
)
# Checks a scenario may add with `expect = [...]`.
OPTIONAL_CHECKS: tuple[str, ...] = (
    "consumer_split_across_suppliers",
    "some_contract_defaulted",
    "supplier_left_and_contracts_ended",
    "consumer_rematched_or_blocked",
    "payments_made",
    "suppliers_owed_at_most_one_increment",
    "relay_blocked_while_link_down",
)

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class ScenarioError(ValueError):
    """A scenario definition that cannot be run; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def parse_duration_s(text: str | int, field: str) -> int:
    """``"1h30m"`` -> 5400; a bare integer is seconds."""
    if isinstance(text, bool):
        raise ScenarioError(field, "must be a duration like '90m' or '1h30m'")
    if isinstance(text, int):
        if text < 0:
            raise ScenarioError(field, "must not be negative")
        return text
    if not isinstance(text, str):
        raise ScenarioError(field, "must be a duration like '90m' or '1h30m'")
    m = _DURATION.match(text.strip())
    if not m or not any(m.groups()):
        raise ScenarioError(field, f"{text!r} is not a duration like '90m', '1h30m' or '45s'")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def format_duration(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


@dataclass(frozen=True)
class NetworkShape:
    hub: bool = True
    fund_sat: int = 50_000_000
    channel_sat: int = 10_000_000
    push_sat: int = 5_000_000
    utxos: int = 1  # funding outputs per node wallet (a meter opening several channels needs several)


@dataclass(frozen=True)
class Timing:
    sim_start: datetime
    duration_s: int  # simulated
    accel: int  # simulated seconds per real second
    tick_s: float  # real seconds between readings
    window_s: int  # simulated seconds per order window

    @property
    def real_duration_s(self) -> float:
        return self.duration_s / self.accel

    @property
    def sim_start_ms(self) -> int:
        return int(self.sim_start.timestamp() * 1000)

    @property
    def sim_end_ms(self) -> int:
        return self.sim_start_ms + self.duration_s * 1000


@dataclass(frozen=True)
class MeterSpec:
    name: str  # meter id, and the name of its lnd node in the regtest network
    role: Role
    source: SourceKind
    price_msat_per_kwh: int
    constant_w: int = 0
    pv_wp: int = 0
    annual_kwh: int = 0
    csv_path: str = ""
    lat: float = 52.52
    lon: float = 13.405
    tz: str = "Europe/Berlin"
    env: Mapping[str, str] = field(default_factory=dict)  # extra P2PEP_METER_* overrides (MeterSettings)
    link: str = ""  # a profile of p2pep.scenario.links ("gprs", "satellite", "none"); "": dialled directly


@dataclass(frozen=True)
class Event:
    at_s: int  # simulated seconds after sim start
    action: EventAction
    target: str  # a meter name, a core service, "lnd:<node>" (the hub's or a meter's node), "btcd", "link:<meter>"
    signal: str = "SIGTERM"  # stop
    for_s: int = 0  # partition: simulated seconds until the link is healed
    keep_increments: int = 5  # drain_channel: increments the consumer can still pay
    sweep_wallet: bool = True  # drain_channel: also send its on-chain funds away
    note: str = ""

    def describe(self) -> str:
        if self.action == "stop":
            what = f"stop {self.target} ({self.signal})"
        elif self.action == "start":
            what = f"start {self.target} again"
        elif self.action == "partition":
            what = f"partition {link_target(self.target)}'s link for {format_duration(self.for_s)}"
        else:
            what = f"drain {self.target}'s channels to ~{self.keep_increments} increments"
            if self.sweep_wallet:
                what += " and sweep its wallet"
        return f"at sim+{format_duration(self.at_s)}: {what}"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    network: NetworkShape
    timing: Timing
    meters: tuple[MeterSpec, ...]
    increment_wh: int = 10
    payment_timeout_s: int = 10
    matcher_mode: str = "continuous"
    events: tuple[Event, ...] = ()
    # service -> its settings' environment variables (raw names, e.g. P2PEP_SETTLEMENT_SWEEP_INTERVAL_S)
    services_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    expect: tuple[str, ...] = DEFAULT_EXPECT  # checks (p2pep.scenario.report) that must hold
    anchor: bool = False  # also run the anchor service (the hub's wallet anchors contract hashes)

    def meter(self, name: str) -> MeterSpec:
        for m in self.meters:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def meter_names(self) -> list[str]:
        return [m.name for m in self.meters]

    @property
    def linked_meters(self) -> dict[str, str]:
        """Meters behind Toxiproxy, with their link profile: those with a ``link``, and those
        a partition event targets (``none`` unless they say otherwise)."""
        cut = {link_target(e.target) for e in self.events if e.action == "partition"}
        return {m.name: m.link or "none" for m in self.meters if m.link or m.name in cut}

    @property
    def consumers(self) -> list[MeterSpec]:
        return [m for m in self.meters if m.role in ("consumer", "prosumer")]

    @property
    def suppliers(self) -> list[MeterSpec]:
        return [m for m in self.meters if m.role in ("producer", "prosumer")]

    def increment_msat(self, price_msat_per_kwh: int) -> int:
        """What one increment costs at a price (rounded up: a bound, not an amount)."""
        return -(-self.increment_wh * price_msat_per_kwh // 1000)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description for reports."""
        return {
            "name": self.name,
            "description": self.description,
            "network": {"hub": self.network.hub, "fund_sat": self.network.fund_sat,
                        "channel_sat": self.network.channel_sat, "push_sat": self.network.push_sat,
                        "utxos": self.network.utxos},
            "timing": {"sim_start": self.timing.sim_start.isoformat(), "duration_s": self.timing.duration_s,
                       "accel": self.timing.accel, "tick_s": self.timing.tick_s, "window_s": self.timing.window_s,
                       "real_duration_s": self.timing.real_duration_s},
            "increment_wh": self.increment_wh,
            "payment_timeout_s": self.payment_timeout_s,
            "matcher_mode": self.matcher_mode,
            "anchor": self.anchor,
            "expect": list(self.expect),
            "meters": [
                {"name": m.name, "role": m.role, "source": m.source, "price_msat_per_kwh": m.price_msat_per_kwh,
                 "constant_w": m.constant_w, "pv_wp": m.pv_wp, "annual_kwh": m.annual_kwh,
                 "csv_path": m.csv_path, "lat": m.lat, "lon": m.lon, "tz": m.tz, "link": m.link}
                for m in self.meters
            ],
            "events": [{"at_s": e.at_s, "action": e.action, "target": e.target, "signal": e.signal,
                        "keep_increments": e.keep_increments, "sweep_wallet": e.sweep_wallet, "for_s": e.for_s,
                        "description": e.describe()} for e in self.events],
        }


# --- parsing -----------------------------------------------------------------------------


def _get(m: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    f = f"{where}.{key}" if where else key
    if key not in m:
        if default is ...:
            raise ScenarioError(f, "is required")
        return default
    v = m[key]
    if isinstance(v, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise ScenarioError(f, f"must be {_typename(typ)}, not a boolean")
    if not isinstance(v, typ):
        raise ScenarioError(f, f"must be {_typename(typ)}, not {type(v).__name__}")
    return v


def _typename(typ: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", float: "a number", bool: "true or false", dict: "a table",
             list: "a list"}
    ts = typ if isinstance(typ, tuple) else (typ,)
    return " or ".join(names.get(t, t.__name__) for t in ts)


def _positive(v: int, f: str) -> int:
    if v <= 0:
        raise ScenarioError(f, "must be > 0")
    return v


def _check_keys(m: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for k in m:
        if k not in allowed:
            raise ScenarioError(f"{where}.{k}" if where else k, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _parse_network(m: Mapping[str, Any]) -> NetworkShape:
    _check_keys(m, {"hub", "fund_sat", "channel_sat", "push_sat", "utxos"}, "network")
    net = NetworkShape(
        hub=_get(m, "hub", bool, "network", True),
        fund_sat=_positive(_get(m, "fund_sat", int, "network", 50_000_000), "network.fund_sat"),
        channel_sat=_positive(_get(m, "channel_sat", int, "network", 10_000_000), "network.channel_sat"),
        push_sat=_get(m, "push_sat", int, "network", 5_000_000),
        utxos=_get(m, "utxos", int, "network", 1),
    )
    if not 1 <= net.utxos <= 10:
        raise ScenarioError("network.utxos", "must be between 1 and 10")
    if not 0 <= net.push_sat < net.channel_sat:
        raise ScenarioError("network.push_sat", "must be >= 0 and below channel_sat")
    if net.channel_sat >= net.fund_sat:
        raise ScenarioError("network.channel_sat", "must be below fund_sat (the wallet pays fees too)")
    return net


def _parse_timing(m: Mapping[str, Any]) -> Timing:
    _check_keys(m, {"sim_start", "duration", "accel", "tick_s", "window"}, "timing")
    start_text = _get(m, "sim_start", (str, datetime), "timing")
    if isinstance(start_text, datetime):
        start = start_text
    else:
        try:
            start = datetime.fromisoformat(start_text)
        except ValueError as e:
            raise ScenarioError("timing.sim_start", f"{start_text!r} is not an ISO datetime") from e
    if start.tzinfo is None:
        raise ScenarioError("timing.sim_start", "needs a UTC offset, e.g. 2026-06-21T11:00:00+02:00")
    tick = _get(m, "tick_s", (int, float), "timing", 0.25)
    if not 0.01 <= tick <= 60:
        raise ScenarioError("timing.tick_s", "must be between 0.01 and 60 (real seconds)")
    return Timing(
        sim_start=start,
        duration_s=_positive(parse_duration_s(_get(m, "duration", (str, int), "timing"), "timing.duration"),
                             "timing.duration"),
        accel=_positive(_get(m, "accel", int, "timing", 60), "timing.accel"),
        tick_s=float(tick),
        window_s=_positive(parse_duration_s(_get(m, "window", (str, int), "timing", "15m"), "timing.window"),
                           "timing.window"),
    )


_METER_KEYS = {"name", "role", "source", "price_msat_per_kwh", "constant_w", "pv_wp", "annual_kwh", "csv_path",
               "lat", "lon", "tz", "env", "link"}


def _check_variable(service: str, variable: str, where: str) -> None:
    """An environment override must be a variable the service's settings class reads
    (its values are checked when the service's environment is built, see p2pep.scenario.launch)."""
    # imported here: the settings classes pull in the service runtime, parsing needs it only here
    from p2pep.servicekit.settings import setting_of
    from p2pep.settings import SERVICE_SETTINGS

    try:
        setting_of(SERVICE_SETTINGS[service], variable)
    except ValueError as exc:
        raise ScenarioError(where, str(exc)) from None


def _parse_meter(m: Mapping[str, Any], i: int, defaults: Mapping[str, Any]) -> MeterSpec:
    where = f"meters[{i}]"
    merged = {**defaults, **m}
    _check_keys(merged, _METER_KEYS, where)
    name = _get(merged, "name", str, where, f"meter-{i + 1}")
    role = _get(merged, "role", str, where)
    if role not in ROLES:
        raise ScenarioError(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")
    source = _get(merged, "source", str, where)
    if source not in SOURCES:
        raise ScenarioError(f"{where}.source", f"{source!r} is not one of {', '.join(SOURCES)}")
    spec = MeterSpec(
        name=name,
        role=role,
        source=source,
        price_msat_per_kwh=_positive(_get(merged, "price_msat_per_kwh", int, where), f"{where}.price_msat_per_kwh"),
        constant_w=_get(merged, "constant_w", int, where, 0),
        pv_wp=_get(merged, "pv_wp", int, where, 0),
        annual_kwh=_get(merged, "annual_kwh", int, where, 0),
        csv_path=_get(merged, "csv_path", str, where, ""),
        lat=float(_get(merged, "lat", (int, float), where, 52.52)),
        lon=float(_get(merged, "lon", (int, float), where, 13.405)),
        tz=_get(merged, "tz", str, where, "Europe/Berlin"),
        env={str(k): str(v) for k, v in _get(merged, "env", dict, where, {}).items()},
        link=_get(merged, "link", str, where, ""),
    )
    if spec.link:
        from p2pep.scenario.links import LINKS

        if spec.link not in LINKS:
            raise ScenarioError(f"{where}.link", f"{spec.link!r} is not one of {', '.join(LINKS)}")
    for variable in spec.env:
        _check_variable("meter", variable, f"{where}.env.{variable}")
    needs = {"constant": ("constant_w", spec.constant_w), "pv": ("pv_wp", spec.pv_wp),
             "h0": ("annual_kwh", spec.annual_kwh)}
    if source in needs:
        key, value = needs[source]
        if value <= 0:
            raise ScenarioError(f"{where}.{key}", f"must be > 0 for source {source!r}")
    if source == "csv" and not spec.csv_path:
        raise ScenarioError(f"{where}.csv_path", "is required for source 'csv'")
    if not re.fullmatch(r"meter-\d+", name):
        raise ScenarioError(f"{where}.name", "must be meter-N (the regtest network names its nodes so)")
    return spec


def _parse_event(m: Mapping[str, Any], i: int, meters: list[str], hub: bool = True) -> Event:
    where = f"events[{i}]"
    _check_keys(m, {"at", "action", "target", "signal", "keep_increments", "sweep_wallet", "note", "for"}, where)
    action = _get(m, "action", str, where)
    if action not in ACTIONS:
        raise ScenarioError(f"{where}.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
    target = _get(m, "target", str, where)
    nodes = [LND_PREFIX + n for n in (["hub"] if hub else []) + meters]
    if action == "partition":
        allowed = [LINK_PREFIX + n for n in meters]
    else:
        allowed = meters + ([*CORE_SERVICES, *nodes, BTCD] if action in ("stop", "start") else [])
    if target not in allowed:
        raise ScenarioError(f"{where}.target", f"{target!r} is not one of {', '.join(allowed)}")
    for_s = 0
    if action == "partition":
        for_s = _positive(parse_duration_s(_get(m, "for", (str, int), where), f"{where}.for"), f"{where}.for")
    elif "for" in m:
        raise ScenarioError(f"{where}.for", "only a partition lasts for a while (stop and start are two events)")
    sig = _get(m, "signal", str, where, "SIGTERM")
    if sig not in SIGNALS:
        raise ScenarioError(f"{where}.signal", f"{sig!r} is not one of {', '.join(SIGNALS)}")
    keep = _get(m, "keep_increments", int, where, 5)
    if keep < 0:
        raise ScenarioError(f"{where}.keep_increments", "must be >= 0")
    return Event(
        at_s=parse_duration_s(_get(m, "at", (str, int), where), f"{where}.at"),
        action=action,
        target=target,
        signal=sig,
        keep_increments=keep,
        sweep_wallet=_get(m, "sweep_wallet", bool, where, True),
        note=_get(m, "note", str, where, ""),
        for_s=for_s,
    )


def parse_scenario(data: Mapping[str, Any], default_name: str = "") -> Scenario:
    """A :class:`Scenario` from a parsed TOML mapping; ScenarioError names what is wrong."""
    _check_keys(data, {"name", "description", "network", "timing", "settlement", "matcher", "meter_defaults",
                       "meters", "events", "services_env", "expect", "anchor"}, "")
    name = _get(data, "name", str, "", default_name)
    if not name:
        raise ScenarioError("name", "is required")
    settlement = _get(data, "settlement", dict, "", {})
    _check_keys(settlement, {"increment_wh", "payment_timeout_s"}, "settlement")
    matcher = _get(data, "matcher", dict, "", {})
    _check_keys(matcher, {"mode"}, "matcher")
    mode = _get(matcher, "mode", str, "matcher", "continuous")
    if mode not in ("continuous", "periodic"):
        raise ScenarioError("matcher.mode", f"{mode!r} is not continuous or periodic")
    defaults = _get(data, "meter_defaults", dict, "", {})
    raw_meters = _get(data, "meters", list, "")
    if not raw_meters:
        raise ScenarioError("meters", "needs at least one meter")
    meters = [_parse_meter(_as_table(m, f"meters[{i}]"), i, defaults) for i, m in enumerate(raw_meters)]
    names = [m.name for m in meters]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ScenarioError(f"meters[{i}].name", f"{n!r} is used twice")
    expected = [f"meter-{i}" for i in range(1, len(meters) + 1)]
    if sorted(names, key=lambda n: int(n.split("-")[1])) != expected:
        raise ScenarioError("meters", f"must be named {', '.join(expected)} (one per regtest meter node)")
    timing = _parse_timing(_get(data, "timing", dict, ""))
    network = _parse_network(_get(data, "network", dict, "", {}))
    events = [_parse_event(_as_table(e, f"events[{i}]"), i, names, network.hub)
              for i, e in enumerate(_get(data, "events", list, "", []))]
    for i, e in enumerate(events):
        if e.at_s >= timing.duration_s:
            raise ScenarioError(f"events[{i}].at", "must be before the end of the scenario (timing.duration)")
        if e.at_s + e.for_s >= timing.duration_s:
            raise ScenarioError(f"events[{i}].for", "the link must be healed before the end of the scenario")
        for j, other in enumerate(events[:i]):
            if (e.action == other.action == "partition" and e.target == other.target
                    and e.at_s < other.at_s + other.for_s and other.at_s < e.at_s + e.for_s):
                raise ScenarioError(f"events[{i}].at", f"overlaps events[{j}], a partition of the same link")
    services_env = _get(data, "services_env", dict, "", {})
    for svc, env in services_env.items():
        if svc not in CORE_SERVICES:
            raise ScenarioError(f"services_env.{svc}", f"unknown service (one of {', '.join(CORE_SERVICES)})")
        if not isinstance(env, dict):
            raise ScenarioError(f"services_env.{svc}", "must be a table of environment variables")
        for variable in env:
            _check_variable(svc, variable, f"services_env.{svc}.{variable}")
    anchor = _get(data, "anchor", bool, "", False)
    if anchor and not network.hub:
        raise ScenarioError("anchor", "needs the hub (its wallet pays for the anchoring transactions)")
    for i, e in enumerate(events):
        if e.target == "anchor" and not anchor:
            raise ScenarioError(f"events[{i}].target", "the anchor service does not run in this scenario")
    extra = _get(data, "expect", list, "", [])
    for i, c in enumerate(extra):
        if not isinstance(c, str):
            raise ScenarioError(f"expect[{i}]", "must be a check name")
        if c not in DEFAULT_EXPECT + OPTIONAL_CHECKS:
            raise ScenarioError(f"expect[{i}]", f"unknown check {c!r} (known: {', '.join(OPTIONAL_CHECKS)})")
    return Scenario(
        name=name,
        description=_get(data, "description", str, "", ""),
        network=network,
        timing=timing,
        meters=tuple(meters),
        increment_wh=_positive(_get(settlement, "increment_wh", int, "settlement", 10), "settlement.increment_wh"),
        payment_timeout_s=_positive(_get(settlement, "payment_timeout_s", int, "settlement", 10),
                                    "settlement.payment_timeout_s"),
        matcher_mode=mode,
        events=tuple(sorted(events, key=lambda e: e.at_s)),
        services_env={k: {str(a): str(b) for a, b in v.items()} for k, v in services_env.items()},
        expect=tuple(dict.fromkeys([*DEFAULT_EXPECT, *extra])),
        anchor=anchor,
    )


def _as_table(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise ScenarioError(where, "must be a table")
    return v
