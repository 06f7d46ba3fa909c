"""The console's configuration (environment variables ``P2PEP_CONSOLE_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from p2pep.settings.webauth import WebAuthSettings


class ConsoleSettings(WebAuthSettings):
    """Operator accounts (``p2pep operator add``) and their sessions are in ``auth_db_path``."""

    model_config = SettingsConfigDict(env_prefix="P2PEP_CONSOLE_", extra="ignore")

    settlement_target: str = Field(min_length=1, description="host:port of settlement")
    matcher_target: str = Field(default="", description="host:port of the matcher; empty: no order book view")
    anchor_target: str = Field(default="", description="host:port of the anchor service; empty: no anchor batches view")
    rpc_timeout_s: float = Field(default=10.0, gt=0)
