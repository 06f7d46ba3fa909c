"""Settings shared by every service, read from environment variables, and the way back.

A settings class is the one source of truth for its environment: a service reads it with
:func:`load_settings` (a bad or missing variable ends the process with one line naming
it), and whoever launches a service writes it with :func:`settings_env` (field values in,
the variables the class reads out, checked by reading them back). Variable names are the
class's ``env_prefix`` followed by the field name upper-cased; no aliases are used.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Literal, TypeVar, cast

from pydantic import Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as SourceError

from p2pep.servicekit.limits import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from p2pep.servicekit.loopback import is_loopback_target

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
    health_port: int = Field(default=-1, ge=-1, le=65535,
                             description="plaintext port serving only grpc.health.v1 (the kubelet's gRPC probes) "
                                         "on grpc_host; -1: none, 0: any free port")
    readiness_interval_s: float = Field(default=1.0, gt=0, le=60,
                                        description="how often the dependencies readiness needs are checked")
    readiness_timeout_s: float = Field(default=2.0, gt=0, le=60,
                                       description="a dependency not answering a check within this is unreachable")
    log_level: LogLevel = "INFO"
    log_json: bool = True
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    grpc_max_request_bytes: int = Field(default=MAX_REQUEST_BYTES, ge=1024, le=1 << 30,
                                        description="larger requests are refused (RESOURCE_EXHAUSTED)")
    grpc_max_response_bytes: int = Field(default=MAX_RESPONSE_BYTES, ge=1024, le=1 << 30)
    tls_dir: str = Field(default="", description="TLS folder: ca.crt, <name>.crt/.key, revoked.txt (required)")
    grpc_plaintext_loopback: bool = Field(
        default=False,
        description="measurement only (bench/bench_mtls.py): plaintext gRPC over loopback, refused unless the "
                    "bind address and every *_target are loopback; never set by p2pep up, scenarios or k8s")

    @model_validator(mode="after")
    def _plaintext_only_on_loopback(self) -> BaseServiceSettings:
        # docs/trust-boundary.md "What mutual TLS costs": a plaintext port anyone off this host
        # could reach, or a plaintext dial leaving it, is refused here, before anything binds
        if not self.grpc_plaintext_loopback:
            return self
        addresses = {"grpc_host": self.grpc_host,
                     **{f: v for f, v in self.__dict__.items()
                        if isinstance(v, str) and v and (f.endswith("_target") or f == "advertise_address")}}
        bad = [f"{env_name(type(self), f)}={v}" for f, v in addresses.items() if not is_loopback_target(v)]
        if bad:
            raise ValueError(f"{env_name(type(self), 'grpc_plaintext_loopback')} allows loopback addresses only, "
                             f"not {', '.join(bad)}")
        return self


S = TypeVar("S", bound=BaseSettings)


class BadSettings(ValueError):
    """Settings a class refuses. ``problems`` pairs each variable (or a name for the whole
    class) with what is wrong; the message is one line: ``Class: VAR: problem; VAR: problem``."""

    def __init__(self, cls: type[BaseSettings], problems: list[tuple[str, str]]) -> None:
        self.settings_name = cls.__name__
        self.problems = problems
        super().__init__(f"{self.settings_name}: {self.summary}")

    @property
    def summary(self) -> str:
        """The problems without the class name: ``VAR: problem; VAR: problem``."""
        return "; ".join(f"{where}: {what}" if where else what for where, what in self.problems)

    @property
    def variables(self) -> list[str]:
        return [where for where, _ in self.problems if where]


def env_prefix(cls: type[BaseSettings]) -> str:
    return str(cls.model_config.get("env_prefix", ""))


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable ``cls`` reads ``field`` from; ValueError if it has no such field."""
    if field not in cls.model_fields:
        raise ValueError(f"{cls.__name__} has no setting {field!r}")
    return f"{env_prefix(cls)}{field.upper()}"


def setting_of(cls: type[BaseSettings], variable: str) -> str:
    """The field ``cls`` reads from environment variable ``variable`` (names are not
    case-sensitive, as for pydantic-settings); ValueError naming the class if none."""
    prefix = env_prefix(cls)
    if variable.upper().startswith(prefix.upper()):
        field = variable[len(prefix):].lower()
        if field in cls.model_fields:
            return field
    known = ", ".join(sorted(f.upper() for f in cls.model_fields))
    raise ValueError(f"{variable} is not a setting of {cls.__name__} (it reads {prefix} followed by one of {known})")


def _problems(cls: type[BaseSettings], exc: ValidationError) -> list[tuple[str, str]]:
    prefix = env_prefix(cls)
    return [(f"{prefix}{'_'.join(str(p) for p in e['loc']).upper()}" if e["loc"] else "", e["msg"])
            for e in exc.errors()]


def read_settings(cls: type[S]) -> S:
    """``cls()`` from the process environment; :class:`BadSettings` names each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        raise BadSettings(cls, _problems(cls, exc)) from None
    except SourceError as exc:  # a complex field's variable is not JSON
        raise BadSettings(cls, [("", str(exc))]) from None


def load_settings(cls: type[S], service: str) -> S:
    """``cls()`` from the environment; a bad or missing variable exits the process with a
    one-line message naming each variable (``P2PEP_X_FIELD: what is wrong``)."""
    try:
        return read_settings(cls)
    except BadSettings as exc:
        raise SystemExit(f"{service}: bad configuration: {exc.summary}") from None


def settings_from_env(cls: type[S], env: Mapping[str, str]) -> S:
    """``cls`` read from ``env`` alone (not the process environment), as the service would
    read it. Every name must be one of ``cls``'s variables (ValueError otherwise); values it
    refuses raise :class:`BadSettings`."""
    for variable in env:
        setting_of(cls, variable)
    source = EnvSettingsSource(cls)
    source.env_vars = dict(env) if source.case_sensitive else {k.lower(): v for k, v in env.items()}
    try:
        read = _without_environment(cls)(**source())
    except ValidationError as exc:
        raise BadSettings(cls, _problems(cls, exc)) from None
    except SourceError as exc:
        raise BadSettings(cls, [("", str(exc))]) from None
    # the same values in a plain ``cls`` (validated above, by the same validators)
    return cast(S, cls.model_construct(read.model_fields_set, **{f: getattr(read, f) for f in cls.model_fields}))


@functools.cache
def _without_environment(cls: type[S]) -> type[S]:
    """``cls`` reading its constructor's arguments only (no environment, no files), the
    documented way (``settings_customise_sources``); validators and defaults are ``cls``'s."""

    class Given(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    Given.__name__ = Given.__qualname__ = cls.__name__
    return cast("type[S]", Given)


def _env_value(cls: type[BaseSettings], field: str, value: object) -> str:
    """One field value as its variable's text: strings as they are, bools as true/false,
    numbers, Decimals and Paths as ``str``, dates ISO 8601, containers and models as JSON."""
    if value is None:
        raise ValueError(f"{cls.__name__}.{field}: None has no environment form (leave it out for the default)")
    if isinstance(value, str):
        return value
    if NoDecode in cls.model_fields[field].metadata:
        raise ValueError(f"{cls.__name__}.{field}: give it as the text of its variable (the class parses it)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (int, float, Decimal, Path)):
        return str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return json.dumps(to_jsonable_python(value), separators=(",", ":"))


def settings_env(cls: type[BaseSettings], /, **values: object) -> dict[str, str]:
    """The environment variables that make ``cls`` read ``values`` (field name -> value).

    A name that is not a field of ``cls`` raises ValueError naming both; the variables are
    read back with :func:`settings_from_env`, so a value the class refuses (or a required
    field left out) raises :class:`BadSettings` here, before any process is started with them.
    """
    env = {env_name(cls, field): _env_value(cls, field, value) for field, value in values.items()}
    settings_from_env(cls, env)
    return env
