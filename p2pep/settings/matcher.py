"""Matcher configuration (environment variables ``P2PEP_MATCHER_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from p2pep.servicekit.settings import BaseServiceSettings


class MatcherSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="P2PEP_MATCHER_", extra="ignore")

    db_path: str = Field(default="matcher.sqlite", description="SQLite file holding the book, contracts and events")
    mode: Literal["continuous", "periodic"] = "continuous"
    clearing_interval_s: float = Field(default=900.0, gt=0, description="periodic mode: clear every interval")
    max_batch: int = Field(default=1000, gt=0, le=100_000, description="most orders per SubmitBatch")
    contract_duration_s: int = Field(
        default=900, gt=0, description="contract length when the demand (or supply) gives no power window"
    )
    housekeeping_interval_s: float = Field(default=1.0, gt=0, description="expiry sweep period")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="FULL: an acknowledged call survives power loss; NORMAL: only a crash"
    )
    event_queue_size: int = Field(default=10_000, gt=0, description="per stream; a slower client is cut off")
