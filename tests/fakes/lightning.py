"""In-memory stand-ins for LND nodes, for tests of the meter without a regtest network.

:class:`FakeLightning` is a tiny "network": invoices created on one :class:`FakeLnd`
can be decoded and paid from another. Amounts are exact (no fees unless set), every
node has one channel to a hub with ample balance. Failures are injected per node.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from p2pep.lnd.client import LndError, PaymentFailed, PaymentResult
from p2pep.lndrpc import lightning_pb2 as ln


@dataclass
class FakeLightning:
    nodes: dict[str, FakeLnd] = field(default_factory=dict)
    invoices: dict[str, tuple[FakeLnd, ln.Invoice]] = field(default_factory=dict)
    """payment_request -> (payee, invoice)"""

    def node(self, name: str) -> FakeLnd:
        n = FakeLnd(name, self)
        self.nodes[name] = n
        return n


class FakeLnd:
    def __init__(self, name: str, net: FakeLightning) -> None:
        self.name = name
        self.net = net
        self.pubkey = "02" + hashlib.sha256(name.encode()).hexdigest()
        self.invoices: dict[str, ln.Invoice] = {}
        self.payments: list[ln.Payment] = []
        self.calls: dict[str, int] = {}
        self.fail_pay: str | None = None
        """Set to a failure reason: the next payments fail with it."""
        self.down = False
        self.fee_msat = 0
        self.local_sat = 1_000_000
        self.channels_opened: list[tuple[str, int, int]] = []
        self.fail_open: str | None = None
        """Set to a reason: opening channels fails with it (e.g. an empty wallet)."""
        self.unroutable_sat = 0
        """Held back from every channel when routing, as lnd's reserve and fee buffer are."""
        self.channels_inactive = False
        self.stuck_in_flight = False
        self.invoice_streams: list[asyncio.Queue[ln.Invoice | None]] = []
        """One queue per open SubscribeInvoices stream; None ends it as lnd going away would."""
        """Its payments leave and stay in flight (an HTLC held after a crash somewhere on the route)."""
        """Its channel's peer (the hub) is away: the channel is listed inactive."""

    def _call(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.down:
            raise LndError(self.name, method, "UNAVAILABLE: connection refused")

    async def get_info(self) -> ln.GetInfoResponse:
        self._call("GetInfo")
        return ln.GetInfoResponse(identity_pubkey=self.pubkey, synced_to_chain=True, alias=self.name)

    async def add_invoice(self, value_msat: int, memo: str = "", expiry_s: int = 3600,
                          private: bool = False) -> ln.AddInvoiceResponse:
        self._call("AddInvoice")
        preimage = secrets.token_bytes(32)
        r_hash = hashlib.sha256(preimage).digest()
        pr = f"lnfake{value_msat}n1{r_hash.hex()}"
        inv = ln.Invoice(memo=memo, r_preimage=preimage, r_hash=r_hash, value_msat=value_msat,
                         creation_date=int(time.time()), expiry=expiry_s, payment_request=pr, state=ln.Invoice.OPEN)
        self.invoices[r_hash.hex()] = inv
        self.net.invoices[pr] = (self, inv)
        return ln.AddInvoiceResponse(r_hash=r_hash, payment_request=pr)

    async def lookup_invoice(self, r_hash: bytes | str) -> ln.Invoice:
        self._call("LookupInvoice")
        h = r_hash if isinstance(r_hash, str) else r_hash.hex()
        if h not in self.invoices:
            raise LndError(self.name, "LookupInvoice", "NOT_FOUND: unable to locate invoice")
        return self.invoices[h]

    async def cancel_invoice(self, r_hash: bytes | str) -> None:
        self._call("CancelInvoice")
        h = r_hash if isinstance(r_hash, str) else r_hash.hex()
        if h not in self.invoices:
            raise LndError(self.name, "CancelInvoice", "UNKNOWN: unable to locate invoice")
        if self.invoices[h].state == ln.Invoice.SETTLED:
            raise LndError(self.name, "CancelInvoice", "UNKNOWN: invoice already settled")
        self.invoices[h].state = ln.Invoice.CANCELED

    async def subscribe_invoices(self, add_index: int = 0, settle_index: int = 0) -> AsyncIterator[ln.Invoice]:
        self._call("SubscribeInvoices")
        q: asyncio.Queue[ln.Invoice | None] = asyncio.Queue()
        self.invoice_streams.append(q)
        try:
            while (inv := await q.get()) is not None:
                yield inv
            raise LndError(self.name, "SubscribeInvoices", "UNAVAILABLE: the stream ended")
        finally:
            self.invoice_streams.remove(q)

    def break_invoice_streams(self) -> None:
        for q in self.invoice_streams:
            q.put_nowait(None)

    async def decode_pay_req(self, payment_request: str) -> ln.PayReq:
        self._call("DecodePayReq")
        found = self.net.invoices.get(payment_request)
        if found is None:
            raise LndError(self.name, "DecodePayReq", "UNKNOWN: invoice not for current active network")
        payee, inv = found
        return ln.PayReq(destination=payee.pubkey, payment_hash=inv.r_hash.hex(), num_msat=inv.value_msat,
                         num_satoshis=inv.value_msat // 1000, timestamp=inv.creation_date, expiry=inv.expiry,
                         description=inv.memo)

    async def pay(self, payment_request: str, timeout_s: int = 30, fee_limit_msat: int = 10_000,
                  max_parts: int = 1) -> PaymentResult:
        self._call("SendPaymentV2")
        found = self.net.invoices.get(payment_request)
        if found is None:
            raise LndError(self.name, "SendPaymentV2", "INVALID_ARGUMENT: invalid payment request")
        payee, inv = found
        if inv.state == ln.Invoice.SETTLED:
            raise LndError(self.name, "SendPaymentV2", "ALREADY_EXISTS: invoice is already paid")
        if self.stuck_in_flight:  # the HTLC left and neither comes back nor fails
            self.payments.append(ln.Payment(payment_hash=inv.r_hash.hex(), value_msat=inv.value_msat,
                                            status=ln.Payment.IN_FLIGHT, payment_request=payment_request))
            raise LndError(self.name, "SendPaymentV2", "DEADLINE_EXCEEDED: the payment did not end in time")
        if inv.state == ln.Invoice.CANCELED:
            self.payments.append(ln.Payment(payment_hash=inv.r_hash.hex(), value_msat=inv.value_msat,
                                            status=ln.Payment.FAILED))
            raise PaymentFailed(self.name, "SendPaymentV2", "FAILED: FAILURE_REASON_INCORRECT_PAYMENT_DETAILS")
        if self.fail_pay is not None:
            self.payments.append(ln.Payment(payment_hash=inv.r_hash.hex(), value_msat=inv.value_msat,
                                            status=ln.Payment.FAILED))
            raise PaymentFailed(self.name, "SendPaymentV2", f"FAILED: {self.fail_pay}")
        if self.local_sat * 1000 < inv.value_msat + self.fee_msat:
            raise PaymentFailed(self.name, "SendPaymentV2", "FAILED: FAILURE_REASON_INSUFFICIENT_BALANCE")
        self.local_sat -= -(-(inv.value_msat + self.fee_msat) // 1000)
        payee.local_sat += inv.value_msat // 1000
        inv.state = ln.Invoice.SETTLED
        inv.settled = True
        inv.amt_paid_msat = inv.value_msat
        for q in payee.invoice_streams:
            q.put_nowait(inv)
        pay = ln.Payment(payment_hash=inv.r_hash.hex(), payment_preimage=inv.r_preimage.hex(),
                         value_msat=inv.value_msat, fee_msat=self.fee_msat, status=ln.Payment.SUCCEEDED,
                         payment_request=payment_request)
        self.payments.append(pay)
        return PaymentResult(pay.payment_hash, pay.payment_preimage, pay.value_msat, pay.fee_msat, "SUCCEEDED",
                             "FAILURE_REASON_NONE", 2)

    async def track_payment(self, payment_hash: str, timeout: float | None = None) -> ln.Payment | None:
        self._call("TrackPaymentV2")
        found = [p for p in self.payments if p.payment_hash == payment_hash]
        return found[-1] if found else None  # lnd keeps one payment per hash: its latest attempt

    async def list_payments(self, page_size: int = 1000) -> list[ln.Payment]:
        self._call("ListPayments")
        return list(self.payments)

    def _channel(self) -> ln.Channel:
        return ln.Channel(active=not self.channels_inactive, remote_pubkey="03" + "11" * 32, capacity=2 * self.local_sat,
                          local_balance=self.local_sat, remote_balance=self.local_sat)

    async def list_channels(self, active_only: bool = False, peer: str | None = None) -> list[ln.Channel]:
        self._call("ListChannels")
        chans = [self._channel()] + [
            ln.Channel(active=True, remote_pubkey=p, capacity=s, local_balance=s - push)
            for p, s, push in self.channels_opened
        ]
        return [c for c in chans if peer is None or c.remote_pubkey == peer]

    async def pending_channels(self) -> ln.PendingChannelsResponse:
        self._call("PendingChannels")
        return ln.PendingChannelsResponse()

    async def channel_balance(self) -> ln.ChannelBalanceResponse:
        self._call("ChannelBalance")
        return ln.ChannelBalanceResponse(local_balance=ln.Amount(sat=self.local_sat, msat=self.local_sat * 1000),
                                         remote_balance=ln.Amount(sat=self.local_sat, msat=self.local_sat * 1000))

    async def wallet_balance(self) -> ln.WalletBalanceResponse:
        self._call("WalletBalance")
        return ln.WalletBalanceResponse(confirmed_balance=10_000_000, total_balance=10_000_000)

    async def new_address(self, kind: str = "p2wkh") -> str:
        self._call("NewAddress")
        return "bcrt1qfakeaddressofthehouseholdwallet0000000"

    async def connect(self, pubkey: str, host: str) -> None:
        self._call("ConnectPeer")

    async def open_channel(self, pubkey: str, local_sat: int, push_sat: int = 0, private: bool = False,
                           sat_per_vbyte: int = 2) -> str:
        self._call("OpenChannelSync")
        if self.fail_open is not None:
            raise LndError(self.name, "OpenChannelSync", f"UNKNOWN: {self.fail_open}")
        self.channels_opened.append((pubkey, local_sat, push_sat))
        return f"{secrets.token_hex(32)}:0"

    async def can_send(self, dest_pubkey: str, amount_msat: int) -> bool:
        """A route exists if one channel to the peer has the amount above ``unroutable_sat``
        (what lnd's fee buffer and reserve would hold back)."""
        self._call("QueryRoutes")
        chans = await self.list_channels(peer=dest_pubkey)
        return any(c.local_balance - self.unroutable_sat >= -(-amount_msat // 1000) for c in chans)

    async def close(self) -> None:
        pass
