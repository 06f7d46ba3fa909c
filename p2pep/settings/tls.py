"""Where a P2PEP tool (not a service) finds its TLS material: ``P2PEP_TLS_DIR``, ``P2PEP_TLS_NAME``.

Services read their TLS folder from their own settings (``P2PEP_<SERVICE>_TLS_DIR``, a
field of :class:`~p2pep.servicekit.settings.BaseServiceSettings`); the ``p2pep`` CLI and
the scenario harness dial services as an operator named ``P2PEP_TLS_NAME`` (default
``p2pep``) with the certificate ``<name>.crt`` in ``P2PEP_TLS_DIR``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ToolTlsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="P2PEP_TLS_", extra="ignore")

    dir: str = Field(default="", description="the TLS folder (ca.crt, <name>.crt, <name>.key)")
    name: str = Field(default="p2pep", description="the operator certificate's name")
