"""Secrets and ConfigMaps of one namespace through the Kubernetes API (kubernetes_asyncio).

What the in-cluster tooling (the lnd exporter sidecar, the bootstrap Job) needs and nothing
more: read a Secret or ConfigMap, and write one whole (create it, or on 409 Conflict replace
it: an unconditional PUT, so the RBAC verbs are ``create`` and ``update``; ``get`` only for
what is read). No list, watch, patch or delete.

Invariants:

* Secret values are bytes on this side; base64 is the wire's business (``data``).
* Every failure is a :class:`KubeApiError` naming the verb, the object and the namespace with
  the API's status and message (``403 Forbidden: secrets "x" is forbidden: ...``), never a
  raw HTTP dump or a raw aiohttp exception (a dropped connection is one too); a missing
  object is ``None`` from a read, not an error. Only a 404 whose Status is about that very
  object (reason ``NotFound``, ``details.name`` the name, ``details.kind`` its plural) is
  "missing": any other 404 (a path the server does not serve, a proxy's page) is an error,
  so a caller waiting for the object fails instead of waiting out its deadline. (A real
  kube-apiserver answers a GET in a namespace that does not exist exactly as for a missing
  object, ``secrets "x" not found``: that one cannot be told apart from the answer.)
* The ServiceAccount token is read from its file before every request (projected tokens are
  rotated by the kubelet), so a long-running sidecar never sends an expired one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import ClientError
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from p2pep.k8s.settings import KubeApiSettings

LABELS = {"app.kubernetes.io/part-of": "p2pep", "app.kubernetes.io/managed-by": "p2pep-bootstrap"}


class KubeApiError(RuntimeError):
    """The API refused or could not be reached; the message says which call and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


_PLURAL = {"secret": "secrets", "configmap": "configmaps"}
_FAILURES = (OSError, TimeoutError, ClientError)  # no answer: refused, TLS, dropped, timed out


def _status(exc: ApiException) -> dict[str, Any]:
    """The error's body as the API's Status object, or ``{}`` when it is not one."""
    raw: object = exc.body
    body = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    try:
        got = json.loads(body) if isinstance(body, str) and body else None
    except ValueError:
        return {}
    return got if isinstance(got, dict) and got.get("kind") == "Status" else {}


def _is_missing(exc: ApiException, kind: str, name: str) -> bool:
    """A 404 that says this object does not exist (not a missing path, resource or page)."""
    if exc.status != 404:
        return False
    status = _status(exc)
    details = status.get("details")
    if status.get("reason") != "NotFound" or not isinstance(details, dict):
        return False
    return details.get("name") == name and details.get("kind") in (_PLURAL[kind], kind)


def _reason(exc: ApiException) -> str:
    """``<status> <reason>: <the Status object's message>`` (the body is JSON when it is the API's)."""
    message = ""
    raw: object = exc.body
    body = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if isinstance(body, str) and body:
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = body[:300]
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")


class KubeApi:
    """One namespace's Secrets and ConfigMaps. Use ``async with``, or call :meth:`close`."""

    def __init__(self, host: str, namespace: str, token_file: Path | None = None, ca_file: Path | None = None,
                 timeout: float = 10.0) -> None:
        conf = client.Configuration(host=host)
        if ca_file is not None:
            conf.ssl_ca_cert = str(ca_file)
        else:
            conf.verify_ssl = host.startswith("https://")
        if token_file is not None:
            path = token_file

            def refresh(c: client.Configuration) -> None:
                c.api_key = {"BearerToken": path.read_text().strip()}
                c.api_key_prefix = {"BearerToken": "Bearer"}
            conf.refresh_api_key_hook = refresh
            refresh(conf)
        self.namespace = namespace
        self.timeout = timeout
        self._client = client.ApiClient(conf)
        self._core = client.CoreV1Api(self._client)

    @classmethod
    def in_cluster(cls, settings: KubeApiSettings | None = None) -> KubeApi:
        """The pod's ServiceAccount (token, CA and namespace files) against ``api_host``."""
        s = settings or KubeApiSettings()
        sa = Path(s.sa_dir)
        for f in ("token", "ca.crt"):
            if not (sa / f).is_file():
                raise KubeApiError(f"no ServiceAccount {f} in {sa}: is the token volume mounted?")
        namespace = s.namespace or (sa / "namespace").read_text().strip()
        return cls(s.api_host, namespace, sa / "token", sa / "ca.crt", s.request_timeout_s)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> KubeApi:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def _error(self, verb: str, kind: str, name: str, exc: BaseException) -> KubeApiError:
        if isinstance(exc, ApiException):
            return KubeApiError(f"{verb} {kind} {name} in namespace {self.namespace}: {_reason(exc)}", exc.status)
        return KubeApiError(f"{verb} {kind} {name} in namespace {self.namespace}: {type(exc).__name__}: {exc}")

    async def _read(self, kind: str, name: str) -> Any:
        read = self._core.read_namespaced_secret if kind == "secret" else self._core.read_namespaced_config_map
        try:
            return await read(name, self.namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if _is_missing(exc, kind, name):
                return None
            raise self._error("get", kind, name, exc) from None
        except _FAILURES as exc:
            raise self._error("get", kind, name, exc) from None

    async def _write(self, kind: str, name: str, create: Callable[[], Awaitable[object]],
                     replace: Callable[[], Awaitable[object]]) -> str:
        """Create the object, or replace it when it exists: ``created`` or ``replaced``."""
        try:
            await create()
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise self._error("create", kind, name, exc) from None
        except _FAILURES as exc:
            raise self._error("create", kind, name, exc) from None
        try:
            await replace()
            return "replaced"
        except (ApiException, *_FAILURES) as exc:
            raise self._error("replace", kind, name, exc) from None

    async def get_secret(self, name: str) -> dict[str, bytes] | None:
        """The Secret's keys and values, or ``None`` if there is no such Secret."""
        got = await self._read("secret", name)
        if got is None:
            return None
        return {k: base64.b64decode(v) for k, v in (got.data or {}).items()}

    async def put_secret(self, name: str, files: Mapping[str, bytes], labels: Mapping[str, str] | None = None) -> str:
        body = client.V1Secret(
            api_version="v1", kind="Secret", type="Opaque",
            metadata=client.V1ObjectMeta(name=name, labels=dict(labels or LABELS)),
            data={k: base64.b64encode(v).decode() for k, v in sorted(files.items())})
        core, ns, timeout = self._core, self.namespace, self.timeout
        return await self._write(
            "secret", name, lambda: core.create_namespaced_secret(ns, body, _request_timeout=timeout),
            lambda: core.replace_namespaced_secret(name, ns, body, _request_timeout=timeout))

    async def get_configmap(self, name: str) -> dict[str, str] | None:
        got = await self._read("configmap", name)
        if got is None:
            return None
        return dict(got.data or {})

    async def put_configmap(self, name: str, data: Mapping[str, str], labels: Mapping[str, str] | None = None) -> str:
        body = client.V1ConfigMap(
            api_version="v1", kind="ConfigMap",
            metadata=client.V1ObjectMeta(name=name, labels=dict(labels or LABELS)), data=dict(sorted(data.items())))
        core, ns, timeout = self._core, self.namespace, self.timeout
        return await self._write(
            "configmap", name, lambda: core.create_namespaced_config_map(ns, body, _request_timeout=timeout),
            lambda: core.replace_namespaced_config_map(name, ns, body, _request_timeout=timeout))
