"""The gRPC server metrics every ServiceHost exports (p2pep.servicekit.grpc_metrics)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from tls_helpers import dial

from p2pep.access import ACCESS, Rule
from p2pep.refusals import NotFound
from p2pep.servicekit import BaseServiceSettings, ServiceHost
from p2pep.servicekit.grpc_metrics import split_method


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_split_method() -> None:
    assert split_method("/p2pep.v1.MeterService/PayInvoice") == ("p2pep.v1.MeterService", "PayInvoice")
    assert split_method("/Bare") == ("", "Bare")


async def test_every_call_counted_by_service_method_code_with_latency_and_stream_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for method in ("Ok", "Refused", "Echo", "Three"):  # the test service's methods, in the authorization table
        monkeypatch.setitem(ACCESS, f"/t.Metered/{method}", Rule(operators=True))
    async def ok(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def refused(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise NotFound("contract_id", "no contract 'x'")

    async def echo(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
                   ) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r

    async def three(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        for i in range(3):
            yield bytes([i])

    handler = grpc.method_handlers_generic_handler("t.Metered", {
        "Ok": grpc.unary_unary_rpc_method_handler(ok),
        "Refused": grpc.unary_unary_rpc_method_handler(refused),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
        "Three": grpc.unary_stream_rpc_method_handler(three),
    })
    host = ServiceHost(BaseServiceSettings(grpc_port=0, metrics_port=0), name="metered")
    host.grpc_server.add_generic_rpc_handlers((handler,))
    base = {"grpc_service": "t.Metered"}
    before_ok = sample("grpc_server_handled_total", grpc_type="unary", grpc_method="Ok", grpc_code="OK", **base)
    await host.start()
    try:
        async with dial(host.grpc_target, "metered") as ch:
            for _ in range(2):
                assert await ch.unary_unary("/t.Metered/Ok")(b"x") == b"x"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/t.Metered/Refused")(b"")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            call = ch.stream_stream("/t.Metered/Echo")()
            for m in (b"a", b"b"):
                await call.write(m)
                assert await call.read() == m
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
            assert [m async for m in ch.unary_stream("/t.Metered/Three")(b"")] == [b"\x00", b"\x01", b"\x02"]
            with pytest.raises(grpc.aio.AioRpcError) as err:  # nobody serves it: not counted, no label from it
                await ch.unary_unary("/t.Metered/Nope")(b"")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with aiohttp.ClientSession() as http, http.get(f"{host.http_url}/metrics") as resp:
            text = await resp.text()
    finally:
        await host.stop(0)
    assert sample("grpc_server_handled_total", grpc_type="unary", grpc_method="Ok", grpc_code="OK",
                  **base) == before_ok + 2
    assert sample("grpc_server_started_total", grpc_type="unary", grpc_method="Refused", **base) >= 1
    assert sample("grpc_server_handled_total", grpc_type="unary", grpc_method="Refused", grpc_code="NOT_FOUND",
                  **base) >= 1
    assert sample("grpc_server_msg_received_total", grpc_type="bidi_stream", grpc_method="Echo", **base) >= 2
    assert sample("grpc_server_msg_sent_total", grpc_type="bidi_stream", grpc_method="Echo", **base) >= 2
    assert sample("grpc_server_handled_total", grpc_type="bidi_stream", grpc_method="Echo", grpc_code="OK",
                  **base) >= 1
    assert sample("grpc_server_msg_sent_total", grpc_type="server_stream", grpc_method="Three", **base) >= 3
    assert sample("grpc_server_handling_seconds_count", grpc_type="unary", grpc_method="Ok", **base) >= 2
    names = {s.labels.get("grpc_method") for fam in text_string_to_metric_families(text)
             if fam.name.startswith("grpc_server") for s in fam.samples}
    assert "Nope" not in names and {"Ok", "Refused", "Echo", "Three"} <= names
