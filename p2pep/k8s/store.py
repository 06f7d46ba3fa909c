"""Where the in-cluster tooling keeps Secrets and ConfigMaps: the Kubernetes API, or a folder.

The lnd exporter sidecar (:mod:`p2pep.k8s.exporter`) and the bootstrap Job
(:mod:`p2pep.k8s.bootstrap`) read and write Secrets and ConfigMaps through :class:`Store` only.
In a cluster that is :class:`p2pep.k8s.kubeapi.KubeApi` (``P2PEP_KUBE_STORE=kube``, the
default and what the manifests run). In the pod-level run under podman, where there is no API
server, the translation (:mod:`p2pep.k8s.podman`) mounts one host folder into the lnd pods'
exporters and the Job's pod and sets ``P2PEP_KUBE_STORE=folder``: :class:`FolderStore`. The
exporter and the Job run the same code either way; only these four calls differ.

Folder layout (the harness, :mod:`p2pep.k8s.pods`, reads it back from the host)::

    <root>/secrets/<name>/<key>        one file per key, the value's bytes
    <root>/configmaps/<name>/<key>     one file per key, the value as UTF-8

i.e. each object's folder is laid out as a Secret or ConfigMap volume is (and as the
translation lays out the Secrets it mounts). ``<name>`` is a relative symlink to a hidden
folder ``..<name>.<random>`` holding the files, as the kubelet's atomic writer does it.

Invariants:

* A write is atomic for readers: the files go into a fresh folder, then the symlink is
  swapped with one ``rename``, and the old folder removed only after the swap. A reader
  resolves the symlink, reads every key from that folder, and keeps what it read only if the
  symlink still points there (else reads again): the folder was then not yet being removed,
  so it never sees part of an object, or one key of the old and another of the new.
* A missing object is ``None`` from a read, as from the API; a write creates or replaces
  (``created`` / ``replaced``, as :meth:`KubeApi.put_secret` says).
* Names are Kubernetes object names and keys Kubernetes data keys (checked): nothing
  written escapes ``<root>``. Files are 0600 and folders 0700: the store holds admin
  macaroons, and only the pods' user (10001) and the host's root read it.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets as token
import shutil
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

from p2pep.k8s.settings import KubeApiSettings

SECRETS = "secrets"
CONFIGMAPS = "configmaps"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # a DNS subdomain: an object's name
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")  # a Secret's or ConfigMap's data key


class Store(Protocol):
    """Secrets and ConfigMaps of one namespace (each written whole, replaced if present)."""

    async def get_secret(self, name: str) -> dict[str, bytes] | None: ...

    async def put_secret(self, name: str, files: Mapping[str, bytes]) -> str: ...

    async def get_configmap(self, name: str) -> dict[str, str] | None: ...

    async def put_configmap(self, name: str, data: Mapping[str, str]) -> str: ...


class FolderStoreError(OSError):
    """A name or key the folder store refuses, or an object that kept changing while read."""


def _check(name: str, keys: Iterable[str] = ()) -> None:
    if len(name) > 253 or not _NAME.match(name):
        raise FolderStoreError(f"not an object name: {name!r}")
    for k in keys:
        if not _KEY.match(k) or k in (".", "..") or k.startswith(".."):
            raise FolderStoreError(f"{name}: not a data key: {k!r}")


def write_object(kind_dir: Path, name: str, files: Mapping[str, bytes]) -> str:
    """One object's files under ``kind_dir/<name>``, swapped in atomically (see the module)."""
    _check(name, files)
    kind_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    link = kind_dir / name
    outcome = "replaced" if link.is_symlink() or link.exists() else "created"
    fresh = kind_dir / f"..{name}.{token.token_hex(6)}"
    fresh.mkdir(mode=0o700)
    for key, data in sorted(files.items()):
        path = fresh / key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    old = os.readlink(link) if link.is_symlink() else None
    if link.exists() and not link.is_symlink():  # made by hand: no atomic swap over a folder
        shutil.rmtree(link)
    tmp = kind_dir / f"{fresh.name}.link"
    os.symlink(fresh.name, tmp)
    os.replace(tmp, link)
    if old is not None and "/" not in old and old != fresh.name:
        shutil.rmtree(kind_dir / old, ignore_errors=True)
    return outcome


def read_object(kind_dir: Path, name: str) -> dict[str, bytes] | None:
    """The object's keys and values, or None when there is none (see the module)."""
    _check(name)
    link = kind_dir / name
    for _ in range(20):
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError:  # a plain folder (made by hand): nothing swaps it
            target = name
        try:
            folder = kind_dir / target
            got = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        except FileNotFoundError:
            continue  # replaced while read: read the new one
        try:
            again = os.readlink(link)
        except OSError:
            again = name
        if again == target:
            return got  # not swapped meanwhile, so not removed while read: whole
    raise FolderStoreError(f"{kind_dir.name}/{name} kept changing while read")


class FolderStore:
    """:class:`Store` over a folder (the pod-level run under podman; layout in the module)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def get_secret(self, name: str) -> dict[str, bytes] | None:
        return await asyncio.to_thread(read_object, self.root / SECRETS, name)

    async def put_secret(self, name: str, files: Mapping[str, bytes]) -> str:
        return await asyncio.to_thread(write_object, self.root / SECRETS, name, dict(files))

    async def get_configmap(self, name: str) -> dict[str, str] | None:
        got = await asyncio.to_thread(read_object, self.root / CONFIGMAPS, name)
        return None if got is None else {k: v.decode() for k, v in got.items()}

    async def put_configmap(self, name: str, data: Mapping[str, str]) -> str:
        files = {k: v.encode() for k, v in data.items()}
        return await asyncio.to_thread(write_object, self.root / CONFIGMAPS, name, files)


@asynccontextmanager
async def open_store(settings: KubeApiSettings) -> AsyncIterator[Store]:
    """The store ``settings`` name: the Kubernetes API with the pod's ServiceAccount, or a folder."""
    if settings.store == "folder":
        yield FolderStore(Path(settings.store_dir))
        return
    from p2pep.k8s.kubeapi import KubeApi

    async with KubeApi.in_cluster(settings) as api:
        yield api
