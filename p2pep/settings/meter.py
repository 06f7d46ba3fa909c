"""The meter's configuration: environment variables ``P2PEP_METER_*``."""

from __future__ import annotations

import os
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from p2pep.registration import MAX_METER_ID_LEN, METER_ID_PATTERN
from p2pep.servicekit.settings import BaseServiceSettings

Role = Literal["producer", "consumer", "prosumer"]
SourceKind = Literal["h0", "pv", "constant", "csv"]
NetworkMode = Literal["hub", "adhoc"]


class MeterSettings(BaseServiceSettings):
    """One meter. Energy in Wh, power in W, prices in msat/kWh, amounts in sat (integers).

    ``constant_w``: the ``constant`` source's power. A consumer imports it, a producer
    exports it; a prosumer imports it when positive and exports ``-constant_w`` when
    negative. ``pv_kwp`` (decimal kWp) is an alternative to ``peak_wp``.
    """

    model_config = SettingsConfigDict(env_prefix="P2PEP_METER_", extra="ignore")

    meter_id: str = Field(min_length=1, max_length=MAX_METER_ID_LEN, pattern=METER_ID_PATTERN)
    role: Role
    state_dir: Path | None = Field(
        default=None, description="folder of its key and database; empty: $XDG_STATE_HOME (or ~/.local/state)"
                                  "/p2pep/meters/<meter_id>, never the working directory")
    key_path: Path | None = Field(default=None, description="its reading-signing key; empty: <state_dir>/meter.key")
    db_path: str = Field(default="", description="its SQLite database; empty: <state_dir>/meter.sqlite")
    advertise_address: str = Field(
        default="", description="host:port settlement dials for MeterService; empty: grpc_host and the bound port"
    )

    # its own LND node
    lnd_rpcserver: str = "127.0.0.1:10009"
    lnd_tls_cert: str = ""
    lnd_macaroon: str = Field(
        default="", description="path of the meter's baked macaroon for its own node (p2pep.lnd.macaroons.METER), "
        "never admin.macaroon")
    lnd_p2p: str = Field(default="", description="host:port of its own lnd p2p listener")

    # enrollment: a meter without a certificate in tls_dir gets one with the operator's token
    enroll_token: str = Field(default="", description="one-time token from `p2pep enroll <meter-id>`")
    enroll_target: str = Field(default="", description="host:port of the enrollment port (settlement's)")
    enroll_server_name: str = Field(default="settlement", description="the name the enrollment server's certificate has")

    # the other services
    matcher_target: str = Field(default="", description="host:port of the matcher; empty: place no orders")
    settlement_target: str

    # what flows through it
    source: SourceKind = "constant"
    annual_kwh: int = Field(default=4000, gt=0)
    pv_kwp: Decimal | None = Field(default=None, gt=0)
    peak_wp: int = Field(default=0, ge=0)
    constant_w: int = 2000
    csv_path: str = ""
    lat: float = Field(default=52.52, ge=-90, le=90, description="where it is installed (degrees), told at registration")
    lon: float = Field(default=13.405, ge=-180, le=180)
    tz: str = "Europe/Berlin"
    altitude: float = 34.0
    sim_start: datetime | None = Field(default=None, description="ISO datetime with offset; empty: real now")
    accel: int = Field(default=60, ge=1)
    tick_s: float = Field(default=0.25, gt=0)
    window_s: int = Field(default=900, gt=0, description="simulated seconds per order window")

    # trading
    price_msat_per_kwh: int = Field(gt=0, description="ask as producer, limit as consumer")
    partners: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma list of meter ids")
    max_increment_wh: int = Field(default=100, gt=0, description="refuse contracts with larger payment increments")
    max_contract_s: int = Field(default=86_400, gt=0, description="refuse contracts lasting longer (real seconds)")
    check_orders_on_sign: bool = Field(
        default=True, description="refuse contracts for more energy than its recent orders asked for"
    )

    # lightning network
    network_mode: NetworkMode = "hub"
    hub: str = Field(default="", description="pubkey@host:port of the hub; empty: open no hub channel")
    channel_sat: int = Field(default=2_000_000, gt=0)
    peers: str = Field(
        default="", description="adhoc fallback: meter-1=pubkey@host:port,... (lnd p2p addresses of other meters)"
    )
    channel_wait_s: float = Field(default=60.0, gt=0)
    pay_timeout_s: int = Field(default=15, gt=0)

    # pairing with a household account (the code its display shows; services.meter.display)
    pairing_ttl_s: float = Field(default=600.0, gt=0, description="how long a pairing code lives")
    pairing_max_failures: int = Field(default=5, ge=1, description="wrong codes before a new code and a lockout")
    pairing_lockout_s: float = Field(default=60.0, ge=0, description="claims refused after too many wrong codes")
    display_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"],
        description="comma list of host names the display page answers for (Host header check)")

    # housekeeping
    balance_refresh_s: float = Field(default=3.0, gt=0)
    contract_poll_s: float = Field(default=2.0, gt=0)
    flush_timeout_s: float = Field(default=3.0, ge=0)
    leave_timeout_s: float = Field(default=8.0, ge=0, description="wait this long for ended contracts to settle")

    @field_validator("partners", mode="before")
    @classmethod
    def _split_partners(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("display_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        if isinstance(v, str):
            return [h.strip() for h in v.split(",") if h.strip()]
        return v

    @field_validator("hub")
    @classmethod
    def _check_hub(cls, v: str) -> str:
        if v and parse_node_address(v) is None:
            raise ValueError("hub must be pubkey@host:port")
        return v

    @model_validator(mode="after")
    def _check_source(self) -> MeterSettings:
        if self.source == "csv" and not self.csv_path:
            raise ValueError("csv_path is required for source=csv")
        if self.source == "pv" and self.peak_watts() <= 0:
            raise ValueError("pv_kwp or peak_wp is required for source=pv")
        if self.sim_start is not None and self.sim_start.tzinfo is None:
            raise ValueError("sim_start needs a UTC offset")
        return self

    @property
    def state_folder(self) -> Path:
        """Where the meter keeps its state by default (``state_dir``, else a per-meter folder
        under the user's state directory)."""
        if self.state_dir is not None:
            return self.state_dir
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "p2pep" / "meters" / self.meter_id

    @property
    def key_file(self) -> Path:
        """The meter's signing key: ``key_path``, else ``meter.key`` in :attr:`state_folder`."""
        return self.key_path if self.key_path is not None else self.state_folder / "meter.key"

    @property
    def db_file(self) -> str:
        """The meter's database: ``db_path``, else ``meter.sqlite`` in :attr:`state_folder`."""
        return self.db_path or str(self.state_folder / "meter.sqlite")

    def peak_watts(self) -> int:
        if self.peak_wp:
            return self.peak_wp
        if self.pv_kwp is not None:
            return int(self.pv_kwp * 1000)
        return 0

    @property
    def window_ms(self) -> int:
        return self.window_s * 1000

    @property
    def tick_sim_ms(self) -> int:
        """Simulated ms one tick nominally covers."""
        return int(self.tick_s * 1000) * self.accel

    def peer_addresses(self) -> dict[str, str]:
        """``P2PEP_METER_PEERS`` as meter id -> ``pubkey@host:port``."""
        out: dict[str, str] = {}
        for item in self.peers.split(","):
            if "=" in item:
                mid, addr = item.split("=", 1)
                out[mid.strip()] = addr.strip()
        return out


def parse_node_address(text: str) -> tuple[str, str] | None:
    """``pubkey@host:port`` -> ``(pubkey, host:port)``, or None if malformed."""
    if "@" not in text:
        return None
    pubkey, host = text.split("@", 1)
    try:
        raw = bytes.fromhex(pubkey)
    except ValueError:
        return None
    if len(raw) != 33 or ":" not in host:
        return None
    return pubkey, host
