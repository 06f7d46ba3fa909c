"""Authorization of every call, in one place: :class:`AuthInterceptor` enforces :mod:`p2pep.access`.

Installed by :class:`~p2pep.servicekit.ServiceHost` on every server, outermost, so a refused
call reaches no handler and changes nothing. The caller is the identity its verified client
certificate names (mutual TLS: gRPC has checked the chain and validity period during the
handshake, so a caller without a certificate of the CA never gets here); request fields are
checked against it, never trusted. Refusals:

* ``UNAUTHENTICATED``: the certificate names no P2PEP identity, or it is revoked;
* ``PERMISSION_DENIED``: the identity may not call the method (including any method missing
  from the table: default deny), or a meter's request is not on its own behalf (for a
  client stream: any message that is not ends the call).

In the plaintext loopback mode that only the TLS benchmark uses (:mod:`p2pep.servicekit.tls`),
a connection gRPC's local credentials admitted carries no certificate; the caller's certificate
is then the one in the TLS folder named by the client's claim, and from there on every check
is the same (:meth:`AuthInterceptor.claimed`).

Each refusal has a message and is counted in ``p2pep_grpc_auth_refusals_total{method,code}``
(method: a name from the table, or ``unlisted``; code: the two above). Handlers learn on
whose behalf a meter acts from :func:`acting_meter` and the meter's enrolled key from
:func:`caller`.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import grpc
import structlog
from cryptography import x509
from prometheus_client import Counter

from p2pep.access import ACCESS, Rule, on_behalf_problem
from p2pep.identity import Identity, from_certificate
from p2pep.pki.ca import meter_key_of
from p2pep.pki.tlsdir import Revocations, TlsDir, TlsDirError
from p2pep.servicekit.handlers import rewrap
from p2pep.servicekit.tls import CLAIM_PREFIX

AUTH_REFUSALS = Counter("p2pep_grpc_auth_refusals_total", "Calls refused by authorization, by method and code",
                        ["method", "code"])
log = structlog.get_logger("grpc.auth")


@dataclass(frozen=True)
class Caller:
    identity: Identity
    serial: int
    meter_key: str | None  # a meter's enrolled signing key, if its certificate carries one


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("p2pep_caller", default=None)


def caller() -> Caller | None:
    """The verified caller of the call being handled (``None`` outside one)."""
    return _CALLER.get()


def acting_meter() -> str | None:
    """The meter id the current call acts for, if the caller is a meter (else ``None``:
    a service or operator allowed by the table, acting for anyone)."""
    c = _CALLER.get()
    return None if c is None else c.identity.meter_id


@lru_cache(maxsize=4096)
def _parse(pem: bytes) -> Caller | None:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    ident = from_certificate(cert)
    return None if ident is None else Caller(ident, cert.serial_number, meter_key_of(cert))


def caller_of(auth_context: Mapping[str, Any]) -> Caller | None:
    pems = auth_context.get("x509_pem_cert") or []
    return _parse(bytes(pems[0])) if len(pems) == 1 else None


class Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check(rule: Rule | None, who: Caller | None, revocations: Revocations | None) -> None:
    """Whether ``who`` may call a method of ``rule`` at all (fields are checked per message)."""
    if who is None:
        raise Denied(grpc.StatusCode.UNAUTHENTICATED, "no client certificate naming a P2PEP identity")
    if revocations is not None and revocations.is_revoked(who.serial):
        raise Denied(grpc.StatusCode.UNAUTHENTICATED, f"the certificate of {who.identity} is revoked")
    if rule is None:
        raise Denied(grpc.StatusCode.PERMISSION_DENIED, "this method is not open to any caller")
    ident = who.identity
    if rule.anyone:
        return
    if ident.kind == "service" and ident.name in rule.services:
        return
    if ident.kind == "operator" and rule.operators:
        return
    if ident.kind == "meter" and rule.meter is not None:
        return
    raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"{ident} may not call this method")


def check_message(rule: Rule, who: Caller, request: Any) -> None:
    meter_id = who.identity.meter_id
    if meter_id is None or rule.meter is None:
        return
    problem = on_behalf_problem(rule, request, meter_id)
    if problem is not None:
        raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"a meter acts only for itself: {problem}")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Enforces ``table`` (default :data:`p2pep.access.ACCESS`) on every method of a server.

    ``claims``: the TLS folder whose certificates plaintext loopback callers may claim
    (measuring mode only; ``None``, the default, accepts no claim)."""

    def __init__(self, revocations: Revocations | None, table: Mapping[str, Rule] = ACCESS,
                 claims: TlsDir | None = None) -> None:
        self.revocations = revocations
        self.table = table
        self.claims = claims
        self._claimed: dict[str, Caller] = {}

    def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller | None:
        auth = context.auth_context()
        who = caller_of(auth)
        if who is None and self.claims is not None and auth.get("transport_security_type") == [b"local"]:
            return self.claimed(context.invocation_metadata())
        return who

    def claimed(self, metadata: Any) -> Caller | None:
        """The caller a plaintext loopback client claims to be: the certificate in
        :attr:`claims` of the identity its user agent names (parsed once, like a handshake's)."""
        agent = next((str(v) for k, v in metadata or () if k == "user-agent"), "")
        if not agent.startswith(CLAIM_PREFIX):
            return None
        claim = agent[len(CLAIM_PREFIX):].split(" ", 1)[0]
        if claim in self._claimed:
            return self._claimed[claim]
        assert self.claims is not None
        try:
            pem = self.claims.crt(Identity.parse(claim).name).read_bytes()
        except (ValueError, TlsDirError, OSError):
            return None
        who = _parse(pem)
        if who is None or str(who.identity) != claim:
            return None
        if len(self._claimed) < 4096:  # names with a certificate only: bounded by the folder
            self._claimed[claim] = who
        return who

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full = handler_call_details.method
        rule = self.table.get(full)
        label = full.rsplit("/", 1)[-1] if rule is not None else "unlisted"
        gate = _Gate(self, rule, label, full)
        return rewrap(handler, lambda behaviour, kind: getattr(gate, "unary" if kind == "unary_unary" else kind)(
            behaviour))


class _Gate:
    def __init__(self, owner: AuthInterceptor, rule: Rule | None, label: str, method: str) -> None:
        self.owner, self.rule, self.label, self.method = owner, rule, label, method

    async def _refuse(self, context: grpc.aio.ServicerContext[Any, Any], who: Caller | None, d: Denied) -> None:
        AUTH_REFUSALS.labels(self.label, d.code.name).inc()
        log.info("call refused", method=self.method, caller=str(who.identity) if who else None,
                 code=d.code.name, why=d.message)
        await context.abort(d.code, d.message)

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any], request: Any | None) -> Caller:
        who = self.owner.caller(context)
        try:
            check(self.rule, who, self.owner.revocations)
            assert who is not None and self.rule is not None
            if request is not None:
                check_message(self.rule, who, request)
        except Denied as d:
            await self._refuse(context, who, d)
            raise AssertionError("abort returned") from None  # context.abort always raises
        _CALLER.set(who)
        return who

    def _view(self, who: Caller, response: Any) -> Any:
        assert self.rule is not None
        if self.rule.meter_view is not None and who.identity.meter_id is not None:
            return self.rule.meter_view(response, who.identity.meter_id)
        return response

    async def _checked_stream(self, context: grpc.aio.ServicerContext[Any, Any], who: Caller,
                              requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        assert self.rule is not None
        async for request in requests:
            try:
                check_message(self.rule, who, request)
            except Denied as d:
                await self._refuse(context, who, d)
            yield request

    def unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            who = await self._admit(context, request)
            return self._view(who, await behaviour(request, context))

        return call

    def unary_stream(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behaviour):
            async def call_writing(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await self._admit(context, request)
                return await behaviour(request, context)

            return call_writing

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            who = await self._admit(context, request)
            async for response in behaviour(request, context):
                yield self._view(who, response)

        return call

    def stream_unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            who = await self._admit(context, None)
            return self._view(who, await behaviour(self._checked_stream(context, who, requests), context))

        return call

    def stream_stream(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behaviour):
            async def call_writing(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                who = await self._admit(context, None)
                return await behaviour(self._checked_stream(context, who, requests), context)

            return call_writing

        async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            who = await self._admit(context, None)
            async for response in behaviour(self._checked_stream(context, who, requests), context):
                yield self._view(who, response)

        return call
