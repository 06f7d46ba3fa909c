"""An async LND client (grpc.aio, TLS cert + macaroon).

Stubs come from ``scripts/gen_protos.py`` (the protos of the lnd version pinned
in ``regtest/go.mod``). Every call carries the macaroon it was built with, so a
service given a restricted macaroon (e.g. invoice-only) can do only that.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import Message

# lnd's TLS certs are ECDSA; gRPC's default cipher list does not offer them.
os.environ.setdefault("GRPC_SSL_CIPHER_SUITES", "HIGH+ECDSA")

import grpc

from p2pep.lndrpc import (
    lightning_pb2 as ln,
)
from p2pep.lndrpc import (
    lightning_pb2_grpc as lngrpc,
)
from p2pep.lndrpc import (
    stateservice_pb2 as state,
)
from p2pep.lndrpc import (
    stateservice_pb2_grpc as stategrpc,
)
from p2pep.lndrpc.invoicesrpc import invoices_pb2
from p2pep.lndrpc.invoicesrpc import invoices_pb2_grpc as invoicesgrpc
from p2pep.lndrpc.routerrpc import router_pb2 as router
from p2pep.lndrpc.routerrpc import router_pb2_grpc as routergrpc
from p2pep.lndrpc.signrpc import signer_pb2 as signer
from p2pep.lndrpc.walletrpc import walletkit_pb2 as wallet
from p2pep.lndrpc.walletrpc import walletkit_pb2_grpc as walletgrpc

KEYSEND_RECORD = 5482373484
R = TypeVar("R")
OP_RETURN = 0x6A


class LndError(RuntimeError):
    """An RPC to one named lnd node failed."""

    def __init__(self, node: str, method: str, err: grpc.aio.AioRpcError | str) -> None:
        if isinstance(err, grpc.aio.AioRpcError):
            detail = f"{err.code().name}: {err.details()}"
            self.code: grpc.StatusCode | None = err.code()
        else:
            detail, self.code = err, None
        super().__init__(f"lnd {node} {method}: {detail}")
        self.node, self.method, self.detail = node, method, detail

    @property
    def unreachable(self) -> bool:
        """lnd could not be asked (down, restarting, too slow): says nothing about the request."""
        away = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return self.code in away or self.detail.startswith(tuple(c.name + ":" for c in away)) \
            or "in the process of starting up" in self.detail


class PaymentFailed(LndError):
    """A payment reached a final FAILED state (reason in ``detail``)."""


@dataclass(frozen=True)
class LndConnection:
    """Where a node's RPC is and the credentials to use it."""

    name: str
    rpcserver: str  # "127.0.0.1:10009"
    tls_cert_path: str
    macaroon_path: str


@dataclass(frozen=True)
class PaymentResult:
    payment_hash: str
    preimage: str
    value_msat: int
    fee_msat: int
    status: str
    failure_reason: str
    hops: int


class _Macaroon(grpc.AuthMetadataPlugin):
    """Sends the macaroon with every call, as lnd expects."""

    def __init__(self, macaroon_hex: str) -> None:
        self.macaroon_hex = macaroon_hex

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback((("macaroon", self.macaroon_hex),), None)


def _macaroon_creds(macaroon_hex: str) -> grpc.CallCredentials:
    return grpc.metadata_call_credentials(_Macaroon(macaroon_hex))


def op_return_script(payload: bytes) -> bytes:
    """``OP_RETURN <payload>`` with a minimal push (payload <= 80 bytes)."""
    if len(payload) > 80:
        raise ValueError("OP_RETURN payload is limited to 80 bytes by relay policy")
    push = bytes([len(payload)]) if len(payload) < 0x4C else bytes([0x4C, len(payload)])
    return bytes([OP_RETURN]) + push + payload


class LndClient:
    def __init__(self, conn: LndConnection, timeout: float = 30.0, channel: grpc.aio.Channel | None = None) -> None:
        """``channel``: a channel to use instead of a secure one built from ``conn``'s
        certificate and macaroon (tests record which RPCs a method makes)."""
        self.conn = conn
        self.timeout = timeout
        if channel is None:
            cert = Path(conn.tls_cert_path).read_bytes()
            macaroon = Path(conn.macaroon_path).read_bytes().hex()
            creds = grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(cert), _macaroon_creds(macaroon)
            )
            channel = grpc.aio.secure_channel(
                conn.rpcserver,
                creds,
                options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
            )
        self._channel = channel
        self.ln = lngrpc.LightningStub(self._channel)
        self.router = routergrpc.RouterStub(self._channel)
        self.invoices = invoicesgrpc.InvoicesStub(self._channel)
        self.wallet = walletgrpc.WalletKitStub(self._channel)
        self.state = stategrpc.StateStub(self._channel)

    @property
    def name(self) -> str:
        return self.conn.name

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> LndClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, rpc: Callable[..., Awaitable[R]], req: Message,
                    timeout: float | None = None) -> R:
        try:
            return await rpc(req, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as err:
            raise LndError(self.name, method, err) from err

    # --- node -----------------------------------------------------------------
    async def get_state(self) -> str:
        resp = await self._call("GetState", self.state.GetState, state.GetStateRequest(), 5)
        return state.WalletState.Name(resp.state)

    async def get_info(self) -> ln.GetInfoResponse:
        return await self._call("GetInfo", self.ln.GetInfo, ln.GetInfoRequest())

    async def pubkey(self) -> str:
        return (await self.get_info()).identity_pubkey

    # --- on-chain wallet ------------------------------------------------------
    async def new_address(self, kind: str = "p2wkh") -> str:
        types = {"p2wkh": ln.WITNESS_PUBKEY_HASH, "p2tr": ln.TAPROOT_PUBKEY, "np2wkh": ln.NESTED_PUBKEY_HASH}
        resp = await self._call("NewAddress", self.ln.NewAddress, ln.NewAddressRequest(type=types[kind]))
        return resp.address

    async def wallet_balance(self) -> ln.WalletBalanceResponse:
        return await self._call("WalletBalance", self.ln.WalletBalance, ln.WalletBalanceRequest())

    async def send_outputs(self, outputs: list[tuple[bytes, int]], sat_per_vbyte: int, label: str = "") -> str:
        """Fund, sign and publish a tx with exactly these outputs (+ change); returns its txid."""
        req = wallet.SendOutputsRequest(
            sat_per_kw=sat_per_vbyte * 250,
            outputs=[signer.TxOut(pk_script=s, value=v) for s, v in outputs],
            label=label,
            min_confs=1,
        )
        resp = await self._call("SendOutputs", self.wallet.SendOutputs, req)
        return _txid_of(resp.raw_tx)

    async def send_op_return(self, payload: bytes, sat_per_vbyte: int, label: str = "") -> str:
        """A transaction whose only non-change output is ``OP_RETURN payload`` (0 sat)."""
        return await self.send_outputs([(op_return_script(payload), 0)], sat_per_vbyte, label)

    # --- peers and channels ---------------------------------------------------
    async def connect(self, pubkey: str, host: str) -> None:
        # perm=False: connect now and return once connected (lnd still reconnects to channel peers)
        req = ln.ConnectPeerRequest(addr=ln.LightningAddress(pubkey=pubkey, host=host), perm=False, timeout=10)
        try:
            await self._call("ConnectPeer", self.ln.ConnectPeer, req)
        except LndError as err:
            if "already connected" not in err.detail:
                raise

    async def list_peers(self) -> list[ln.Peer]:
        return list((await self._call("ListPeers", self.ln.ListPeers, ln.ListPeersRequest())).peers)

    async def open_channel(
        self, pubkey: str, local_sat: int, push_sat: int = 0, private: bool = False, sat_per_vbyte: int = 2
    ) -> str:
        """Open a channel and return its channel point ``txid:index`` once published."""
        req = ln.OpenChannelRequest(
            node_pubkey=bytes.fromhex(pubkey),
            local_funding_amount=local_sat,
            push_sat=push_sat,
            private=private,
            sat_per_vbyte=sat_per_vbyte,
        )
        cp = await self._call("OpenChannelSync", self.ln.OpenChannelSync, req, 60)
        return f"{cp.funding_txid_bytes[::-1].hex()}:{cp.output_index}"

    async def list_channels(self, active_only: bool = False, peer: str | None = None) -> list[ln.Channel]:
        req = ln.ListChannelsRequest(active_only=active_only, peer=bytes.fromhex(peer) if peer else b"")
        return list((await self._call("ListChannels", self.ln.ListChannels, req)).channels)

    async def pending_channels(self) -> ln.PendingChannelsResponse:
        return await self._call("PendingChannels", self.ln.PendingChannels, ln.PendingChannelsRequest())

    async def channel_balance(self) -> ln.ChannelBalanceResponse:
        return await self._call("ChannelBalance", self.ln.ChannelBalance, ln.ChannelBalanceRequest())

    async def forwarding_history(self, index_offset: int = 0, max_events: int = 10_000
                                 ) -> ln.ForwardingHistoryResponse:
        """Forwards from ``index_offset`` on (all time), oldest first; the response's
        ``last_offset_index`` is where the next page starts."""
        req = ln.ForwardingHistoryRequest(start_time=0, end_time=0, index_offset=index_offset,
                                          num_max_events=max_events)
        return await self._call("ForwardingHistory", self.ln.ForwardingHistory, req)

    async def can_send(self, dest_pubkey: str, amount_msat: int) -> bool:
        """Whether lnd finds a route paying ``amount_msat`` to ``dest_pubkey`` now.

        lnd's pathfinding takes its own channels at their real bandwidth (the balance
        above the channel reserve, less the commitment fee buffer a channel's initiator
        must keep), which a channel's ``local_balance`` does not show; so this, not the
        balance, says whether a payment of that size can leave this node."""
        req = ln.QueryRoutesRequest(pub_key=dest_pubkey, amt_msat=amount_msat)
        try:
            resp = await self._call("QueryRoutes", self.ln.QueryRoutes, req, 15)
        except LndError as e:
            if "unable to find a path" in e.detail or "insufficient" in e.detail:
                return False
            raise
        return len(resp.routes) > 0

    async def close_channel(self, channel_point: str, force: bool = False, sat_per_vbyte: int = 2) -> str:
        """Start a close; returns the closing txid once it is broadcast."""
        txid, idx = channel_point.split(":")
        req = ln.CloseChannelRequest(
            channel_point=ln.ChannelPoint(funding_txid_str=txid, output_index=int(idx)),
            force=force,
            sat_per_vbyte=0 if force else sat_per_vbyte,
        )
        try:
            async for upd in self.ln.CloseChannel(req, timeout=60):
                if upd.HasField("close_pending"):
                    return upd.close_pending.txid[::-1].hex()
                if upd.HasField("chan_close"):
                    return upd.chan_close.closing_txid[::-1].hex()
        except grpc.aio.AioRpcError as err:
            raise LndError(self.name, "CloseChannel", err) from err
        raise LndError(self.name, "CloseChannel", "stream ended without a closing tx")

    async def describe_graph(self) -> ln.ChannelGraph:
        return await self._call("DescribeGraph", self.ln.DescribeGraph, ln.ChannelGraphRequest())

    # --- invoices ---------------------------------------------------------------
    async def add_invoice(self, value_msat: int, memo: str = "", expiry_s: int = 3600, private: bool = False) -> ln.AddInvoiceResponse:
        req = ln.Invoice(value_msat=value_msat, memo=memo, expiry=expiry_s, private=private)
        return await self._call("AddInvoice", self.ln.AddInvoice, req)

    async def lookup_invoice(self, r_hash: bytes | str) -> ln.Invoice:
        h = bytes.fromhex(r_hash) if isinstance(r_hash, str) else r_hash
        return await self._call("LookupInvoice", self.ln.LookupInvoice, ln.PaymentHash(r_hash=h))

    async def cancel_invoice(self, r_hash: bytes | str) -> None:
        """Cancel an open invoice (lnd refuses a settled one): it can never be paid after this."""
        h = bytes.fromhex(r_hash) if isinstance(r_hash, str) else r_hash
        await self._call("CancelInvoice", self.invoices.CancelInvoice, invoices_pb2.CancelInvoiceMsg(payment_hash=h))

    async def list_invoices(self, max_invoices: int = 10_000) -> list[ln.Invoice]:
        req = ln.ListInvoiceRequest(num_max_invoices=max_invoices)
        return list((await self._call("ListInvoices", self.ln.ListInvoices, req)).invoices)

    async def subscribe_invoices(self, add_index: int = 0, settle_index: int = 0) -> AsyncIterator[ln.Invoice]:
        """Stream invoice adds and settlements (runs until cancelled)."""
        stream = self.ln.SubscribeInvoices(ln.InvoiceSubscription(add_index=add_index, settle_index=settle_index))
        try:
            async for inv in stream:
                yield inv
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                raise LndError(self.name, "SubscribeInvoices", err) from err
        finally:
            stream.cancel()

    async def decode_pay_req(self, payment_request: str) -> ln.PayReq:
        return await self._call("DecodePayReq", self.ln.DecodePayReq, ln.PayReqString(pay_req=payment_request))

    # --- payments ---------------------------------------------------------------
    async def _send(self, req: router.SendPaymentRequest) -> PaymentResult:
        last: ln.Payment | None = None
        try:
            async for upd in self.router.SendPaymentV2(req, timeout=req.timeout_seconds + 15):
                last = upd
                if upd.status in (ln.Payment.SUCCEEDED, ln.Payment.FAILED):
                    break
        except grpc.aio.AioRpcError as err:
            raise LndError(self.name, "SendPaymentV2", err) from err
        if last is None:
            raise LndError(self.name, "SendPaymentV2", "no payment update received")
        result = PaymentResult(
            payment_hash=last.payment_hash,
            preimage=last.payment_preimage,
            value_msat=last.value_msat,
            fee_msat=last.fee_msat,
            status=ln.Payment.PaymentStatus.Name(last.status),
            failure_reason=ln.PaymentFailureReason.Name(last.failure_reason),
            hops=max((len(h.route.hops) for h in last.htlcs if h.status == ln.HTLCAttempt.SUCCEEDED), default=0),
        )
        if last.status != ln.Payment.SUCCEEDED:
            raise PaymentFailed(self.name, "SendPaymentV2", f"{result.status}: {result.failure_reason}")
        return result

    async def pay(self, payment_request: str, timeout_s: int = 30, fee_limit_msat: int = 10_000, max_parts: int = 1) -> PaymentResult:
        """Pay a BOLT11 invoice (routerrpc SendPaymentV2); raises PaymentFailed unless it succeeds."""
        return await self._send(
            router.SendPaymentRequest(
                payment_request=payment_request,
                timeout_seconds=timeout_s,
                fee_limit_msat=fee_limit_msat,
                no_inflight_updates=True,
                max_parts=max_parts,
            )
        )

    async def keysend(
        self, dest: str, amt_msat: int, custom_records: Mapping[int, bytes] | None = None,
        timeout_s: int = 30, fee_limit_msat: int = 10_000,
    ) -> PaymentResult:
        """Spontaneous payment; custom records (type >= 65536) travel to the receiver."""
        preimage = secrets.token_bytes(32)
        records = {KEYSEND_RECORD: preimage, **(custom_records or {})}
        return await self._send(
            router.SendPaymentRequest(
                dest=bytes.fromhex(dest),
                amt_msat=amt_msat,
                payment_hash=hashlib.sha256(preimage).digest(),
                dest_custom_records=records,
                timeout_seconds=timeout_s,
                fee_limit_msat=fee_limit_msat,
                no_inflight_updates=True,
            )
        )

    async def track_payment(self, payment_hash: str, timeout: float | None = None) -> ln.Payment | None:
        """This node's payment of ``payment_hash`` as it is now (routerrpc TrackPaymentV2, whose
        first update is the payment's current state), or None if the node never started one.
        Found by its hash in lnd's payment index, however many payments the node has made."""
        req = router.TrackPaymentRequest(payment_hash=bytes.fromhex(payment_hash), no_inflight_updates=False)
        stream = self.router.TrackPaymentV2(req, timeout=timeout or self.timeout)
        try:
            async for update in stream:
                return update
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise LndError(self.name, "TrackPaymentV2", err) from err
        finally:
            stream.cancel()
        raise LndError(self.name, "TrackPaymentV2", "the stream ended without the payment's state")

    async def list_payments(self, page_size: int = 1000) -> list[ln.Payment]:
        """Every payment of this node, oldest first (incomplete ones included), read in pages
        of ``page_size`` by lnd's payment index (``index_offset``), so none is cut off."""
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        out: list[ln.Payment] = []
        offset = 0
        while True:
            req = ln.ListPaymentsRequest(include_incomplete=True, index_offset=offset, max_payments=page_size)
            page = await self._call("ListPayments", self.ln.ListPayments, req)
            out.extend(page.payments)
            if len(page.payments) < page_size or page.last_index_offset <= offset:
                return out
            offset = page.last_index_offset

    # --- macaroons ----------------------------------------------------------------
    async def bake_macaroon(self, permissions: Sequence[tuple[str, str]], root_key_id: int = 0) -> bytes:
        """A new macaroon granting exactly ``permissions`` ((entity, action) pairs; entity
        ``uri`` with a full method name grants that one RPC), under ``root_key_id`` (lnd's
        ``DeleteMacaroonID`` of it revokes every macaroon baked under it). Needs a macaroon
        with ``macaroon:generate`` (admin). Returns the serialized macaroon."""
        req = ln.BakeMacaroonRequest(
            permissions=[ln.MacaroonPermission(entity=e, action=a) for e, a in permissions],
            root_key_id=root_key_id,
        )
        return bytes.fromhex((await self._call("BakeMacaroon", self.ln.BakeMacaroon, req)).macaroon)

    # --- messages -----------------------------------------------------------------
    async def sign_message(self, msg: bytes) -> str:
        return (await self._call("SignMessage", self.ln.SignMessage, ln.SignMessageRequest(msg=msg))).signature

    async def verify_message(self, msg: bytes, signature: str) -> tuple[bool, str]:
        resp = await self._call(
            "VerifyMessage", self.ln.VerifyMessage, ln.VerifyMessageRequest(msg=msg, signature=signature)
        )
        return resp.valid, resp.pubkey


def _txid_of(raw_tx: bytes) -> str:
    """txid of a serialized (possibly segwit) transaction."""
    from bitcoin.core import CTransaction

    txid: bytes = CTransaction.deserialize(raw_tx).GetTxid()
    return txid[::-1].hex()


async def wait_rpc_ready(client: LndClient, deadline_s: float) -> None:
    """Wait until lnd's state service says the RPC server is fully active."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last: str = "no answer"
    while loop.time() < end:
        try:
            last = await client.get_state()
            if last == "SERVER_ACTIVE":
                return
        except (LndError, grpc.aio.AioRpcError) as err:
            last = str(err)
        await asyncio.sleep(0.2)
    raise TimeoutError(f"lnd {client.name} RPC not active after {deadline_s}s (last: {last})")
