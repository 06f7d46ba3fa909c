"""The household portal's configuration (environment variables ``P2PEP_PORTAL_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from p2pep.settings.webauth import WebAuthSettings


class PortalSettings(WebAuthSettings):
    """Households' accounts, sessions and paired meters are in ``auth_db_path``."""

    model_config = SettingsConfigDict(env_prefix="P2PEP_PORTAL_", extra="ignore")

    settlement_target: str = Field(min_length=1, description="host:port of settlement (where meters are registered)")
    anchor_target: str = Field(default="", description="host:port of the anchor service (confirmations of the "
                               "households' anchored contracts; empty: not shown)")
    matcher_target: str = Field(default="", description="host:port of the matcher (what the neighbours offer "
                                "now: their resting orders in its book; empty: not shown)")
    rpc_timeout_s: float = Field(default=10.0, gt=0)
    pairing_failures_per_account: int = Field(default=10, ge=1, description="wrong pairing codes per account per window")
    pairing_failures_per_client: int = Field(default=20, ge=1, description="wrong pairing codes per client per window")
