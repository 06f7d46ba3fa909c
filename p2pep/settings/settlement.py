"""Settlement's configuration (environment variables ``P2PEP_SETTLEMENT_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from p2pep.servicekit.settings import BaseServiceSettings


class SettlementSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="P2PEP_SETTLEMENT_", extra="ignore")

    db_path: str = "settlement.sqlite"
    key_path: str = Field(
        default="", description="settlement's secp256k1 key (signs settlement summaries); created 0600 when missing; "
        "empty: settlement.key next to db_path"
    )
    matcher_target: str = Field(default="", description="host:port of the matcher; empty: no matcher feed")
    anchor_target: str = Field(default="", description="host:port of the anchor service; empty: no anchoring")
    increment_wh: int = Field(default=10, gt=0)
    payment_timeout_s: int = Field(default=20, gt=0)
    contract_period_s: int = Field(default=900, gt=0, description="used when a match carries no end time")
    party_silence_s: float = Field(default=15.0, gt=0, description="a party whose readings stop this long has left")
    sweep_interval_s: float = Field(default=0.5, gt=0)
    worker_attempts: int = Field(
        default=8, gt=0, description="failures in a row of a contract's payment worker before the contract is ended"
    )
    worker_backoff_initial_s: float = Field(default=0.2, gt=0, description="first retry delay of a failed worker step")
    worker_backoff_max_s: float = Field(default=10.0, gt=0, description="longest retry delay of a failed worker step")
    debt_collect_s: float = Field(
        default=300.0, ge=0,
        description="after a payment failed for a reason that passes (a meter or an lnd node unreachable, no route "
        "while the hub is down), keep asking the consumer to pay what was delivered this long (real seconds) before "
        "the contract is settled with it unpaid; 0: never (below the supplier's invoice expiry, 600 s, so the same "
        "invoice is paid)")
    in_flight_resolve_s: float = Field(
        default=120.0, ge=0,
        description="a payment the consumer's lnd still holds in flight this long (real seconds) is resolved at the "
        "supplier's node: if the invoice was paid, it is recorded paid; else the supplier cancels it (it can never be "
        "paid then) and the increment is invoiced anew; 0: never (keep asking the consumer)")
    enrollment_port: int = Field(
        default=-1, ge=-1, le=65535,
        description="serve meter enrollment (TLS, no client certificate) on this port; -1: off (needs ca.key in tls_dir)",
    )
    sqlite_busy_timeout_ms: int = Field(
        default=5000, ge=0, description="a write waits this long for another process's lock on the database, then fails"
    )

    def summary_key_path(self) -> Path:
        """Where settlement's summary-signing key lives."""
        return Path(self.key_path) if self.key_path else Path(self.db_path).parent / "settlement.key"
