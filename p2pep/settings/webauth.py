"""Settings of every service whose web pages need a sign-in (the portal, the console).

A base class, not a service: :class:`p2pep.settings.portal.PortalSettings` and
:class:`p2pep.settings.console.ConsoleSettings` extend it under their own prefixes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from p2pep.servicekit.settings import BaseServiceSettings


class WebAuthSettings(BaseServiceSettings):
    auth_db_path: str = Field(default="auth.db", description="SQLite file of accounts and sessions")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"],
        description="comma list of host names the pages answer for (Host header check); * for any")
    session_ttl_s: int = Field(default=8 * 3600, gt=0, le=30 * 86400, description="a session's absolute lifetime")
    cookie_secure: bool = Field(default=False, description="mark cookies Secure (when served over HTTPS)")
    signin_failures_per_account: int = Field(default=5, ge=1, description="failed sign-ins per account per window")
    signin_failures_per_client: int = Field(default=20, ge=1, description="failed sign-ins per client address per window")
    registrations_per_client: int = Field(default=10, ge=1, description="registrations per client address per window")
    limit_window_s: float = Field(default=300.0, gt=0, description="the rate limits' window")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        if isinstance(v, str):
            return [h.strip() for h in v.split(",") if h.strip()]
        return v
