"""Settings shared by every service, read from environment variables."""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class BaseServiceSettings(BaseSettings):
    """Fields every service has. Subclass per service and give it its own prefix::

        class MatcherSettings(BaseServiceSettings):
            model_config = SettingsConfigDict(env_prefix="P2PEP_MATCHER_")

    Port 0 means "any free port"; the bound port is on :class:`ServiceHost`.
    """

    model_config = SettingsConfigDict(env_prefix="P2PEP_", extra="ignore")

    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535, description="HTTP port of /metrics and /healthz")
    log_level: LogLevel = "INFO"
    log_json: bool = True
    shutdown_grace_s: float = Field(default=5.0, ge=0)


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], service: str) -> S:
    """``cls()`` from the environment; a bad or missing variable exits the process with a
    one-line message naming each variable (``P2PEP_X_FIELD: what is wrong``)."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        problems = "; ".join(
            (f"{prefix}{'_'.join(str(p) for p in e['loc']).upper()}: " if e["loc"] else "") + e["msg"]
            for e in exc.errors()
        )
        raise SystemExit(f"{service}: bad configuration: {problems}") from None
