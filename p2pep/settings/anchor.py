"""The anchor service's configuration (environment variables ``P2PEP_ANCHOR_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from p2pep.servicekit.settings import BaseServiceSettings


class AnchorSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="P2PEP_ANCHOR_", extra="ignore")

    db_path: str = "anchor.sqlite"
    # The operator's hub node: the only service holding a macaroon of it (it spends on-chain).
    lnd_rpcserver: str = Field(description="host:port of the hub's lnd gRPC")
    lnd_tls_cert: str = Field(description="path of the hub's tls.cert")
    lnd_macaroon: str = Field(description="path of the anchor's baked hub macaroon: walletrpc.SendOutputs only "
                              "(p2pep.lnd.macaroons.ANCHOR)")
    btcd_rpchost: str = Field(description="host:port of btcd's JSON-RPC (btcd runs with --txindex)")
    btcd_user: str
    btcd_pass: str
    btcd_cert: str = Field(description="path of btcd's rpc.cert")
    every_blocks: int = Field(default=1, ge=1, description="a batch closes this many blocks after its first leaf")
    max_leaves: int = Field(default=1000, ge=1, description="... or as soon as it holds this many leaves")
    min_confirmations: int = Field(default=6, ge=1, description="K: blocks deep before a proof is confirmed")
    watch_depth: int = Field(default=144, ge=1, description="mined batches this close to the tip are re-checked")
    sat_per_vbyte: int = Field(default=1, ge=1, description="fee rate of anchoring transactions")
    poll_s: float = Field(default=1.0, gt=0, description="how often btcd's tip is polled")
    hub_poll_s: float = Field(default=5.0, gt=0, description="how often the hub's balances and forwards are read (metrics)")
    max_request_leaves: int = Field(default=100_000, ge=1, description="leaves accepted in one AddLeaves call")
