"""Lossy links between a meter and the services: profiles as Toxiproxy toxics (pure).

A household's meter reaches settlement and the matcher over whatever link it has (a GPRS
modem, a satellite terminal); settlement reaches the meter back over the same link. A
scenario gives a meter a ``link`` profile by name; the runner then puts one Toxiproxy proxy
per direction of service traffic between that meter and the services
(:func:`meter_proxies`: meter -> settlement, meter -> matcher, services -> meter) and loads
the profile's toxics into each. The meter's own lnd stays local to the meter (a household's
lnd is in the household), and so do the harness's own observations (health, status).

Invariants:

* a profile is defined here once, by name (:data:`PROFILES`); ``none`` has no toxics, so a
  meter on ``none`` goes through its proxies untouched (the baseline of ``bench/bench_links.py``);
* every toxic is applied to both directions (``upstream`` and ``downstream``) unless it says
  otherwise: a round trip crosses the link twice, so a profile's latency is half its RTT;
* toxic names are unique per proxy (Toxiproxy refuses a second toxic of the same name);
* a partition cuts all of a meter's proxies at once (:mod:`p2pep.scenario.toxiproxy`: the
  proxies are disabled, their connections closed and new ones refused, as when a modem
  loses its carrier) and heals them at once; a link that stalls without closing is the
  ``gprs`` profile's ``stall`` toxic;
* the proxies are plain TCP: mutual TLS goes through unchanged, and each client verifies the
  server's certificate by its name (``grpc.ssl_target_name_override`` in
  :mod:`p2pep.servicekit.channels`), not by the proxy's address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Stream = Literal["upstream", "downstream"]
STREAMS: tuple[Stream, ...] = ("upstream", "downstream")


@dataclass(frozen=True)
class Toxic:
    """One Toxiproxy toxic (its JSON body for ``POST /proxies/{proxy}/toxics``)."""

    name: str
    type: str  # latency, bandwidth, slow_close, timeout, reset_peer, ...
    stream: Stream
    attributes: dict[str, int] = field(default_factory=dict)
    toxicity: float = 1.0  # the share of connections it applies to

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "stream": self.stream, "toxicity": self.toxicity,
                "attributes": dict(self.attributes)}


@dataclass(frozen=True)
class LinkProfile:
    """A link's conditions. Times in ms, bandwidth in KB/s (Toxiproxy's units)."""

    name: str
    description: str
    rtt_ms: int = 0  # round trip: half of it is added each way
    jitter_ms: int = 0  # each way, +-
    rate_kbps: int = 0  # KB/s each way; 0: not limited
    slow_close_ms: int = 0  # a close reaches the other side this much later
    stall_ms: int = 0  # a share (stall_share) of connections stall this long, then are closed
    stall_share: float = 0.0
    reset_after_ms: int = 0  # a share (reset_share) of connections are reset (TCP RST) after this long
    reset_share: float = 0.0

    def toxics(self) -> list[Toxic]:
        """The toxics of this profile, for one proxy."""
        out: list[Toxic] = []
        for stream in STREAMS:
            if self.rtt_ms or self.jitter_ms:
                out.append(Toxic(f"latency-{stream}", "latency", stream,
                                 {"latency": self.rtt_ms // 2, "jitter": self.jitter_ms}))
            if self.rate_kbps:
                out.append(Toxic(f"bandwidth-{stream}", "bandwidth", stream, {"rate": self.rate_kbps}))
            if self.slow_close_ms:
                out.append(Toxic(f"slow-close-{stream}", "slow_close", stream, {"delay": self.slow_close_ms}))
        # a stall or a reset hits a connection as a whole: one direction is enough
        if self.stall_ms and self.stall_share:
            out.append(Toxic("stall", "timeout", "downstream", {"timeout": self.stall_ms}, self.stall_share))
        if self.reset_after_ms and self.reset_share:
            out.append(Toxic("reset", "reset_peer", "upstream", {"timeout": self.reset_after_ms}, self.reset_share))
        return out


PROFILES: dict[str, LinkProfile] = {p.name: p for p in (
    LinkProfile("none", "no toxics: the proxies alone (the baseline)"),
    # GPRS: 300-700 ms RTT, ~40 kbit/s, connections that stall and reset now and then
    LinkProfile("gprs", "GPRS: 500 +- 200 ms RTT, 40 kbit/s, 1 in 10 connections stalls 5 s, 1 in 5 reset after 30 s",
                rtt_ms=500, jitter_ms=100, rate_kbps=5, slow_close_ms=500,
                stall_ms=5_000, stall_share=0.1, reset_after_ms=30_000, reset_share=0.2),
    # geostationary satellite: ~600 ms RTT, little jitter, enough bandwidth
    LinkProfile("satellite", "geostationary satellite: 600 ms RTT (+-20 ms each way), 1 Mbit/s",
                rtt_ms=600, jitter_ms=20, rate_kbps=128),
)}
LINKS: tuple[str, ...] = tuple(PROFILES)


def profile(name: str) -> LinkProfile:
    """The profile called ``name``; a ValueError names the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a link profile (one of {', '.join(LINKS)})") from None


# The services a meter talks to over its link, and the reverse direction (services -> meter).
Upstream = Literal["settlement", "matcher", "meter"]
UPSTREAMS: tuple[Upstream, ...] = ("settlement", "matcher", "meter")


def proxy_name(meter: str, upstream: Upstream) -> str:
    """``meter-3`` to settlement: ``meter-3.settlement``; the way back to the meter: ``meter-3.meter``."""
    return f"{meter}.{upstream}"


@dataclass(frozen=True)
class Proxy:
    """One Toxiproxy proxy: ``listen`` forwards to ``upstream`` (both host:port)."""

    name: str
    listen: str
    upstream: str

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream, "enabled": True}


def meter_proxies(meter: str, targets: dict[Upstream, str], listen: dict[Upstream, str]) -> list[Proxy]:
    """The proxies of one meter's link: for each upstream it has a target for (settlement,
    matcher, the meter's own gRPC port), a proxy listening at ``listen[upstream]``."""
    return [Proxy(proxy_name(meter, u), listen[u], targets[u]) for u in UPSTREAMS if u in targets]
