"""The rendered regtest overlay, translated for ``podman kube play`` (podman 4.3) (pure).

podman plays Pods, Deployments, PersistentVolumeClaims and ConfigMaps, and nothing else of
what ``kubectl kustomize k8s/overlays/regtest`` renders. The translation is kept to what
podman lacks, one rule each, and leaves every other field as the manifest has it (image,
args, ``envFrom`` ConfigMaps, ports, resources, ``securityContext`` with the read-only root,
the PVC at ``/data``):

==========================  ===========================================================
rendered                    played
==========================  ===========================================================
``StatefulSet X``           ``Pod X`` (its template; one replica). A pod is reachable by
(replicas: 1)               its name on the podman network, so ``X`` answers as the
                            headless Service ``X`` does in a cluster (podman would name a
                            Deployment's pod ``X-pod-0``, a name no ConfigMap uses).
``volumeClaimTemplates``    ``PersistentVolumeClaim <prefix>X-<claim>`` (podman makes it a
                            named volume, filled from the image's ``/data``) and the pod's
                            volume pointing at it.
``Service``,                dropped: no kube kind in podman. Names come from the pods;
``NetworkPolicy``,          the podman network does not filter (the policies are checked
``Namespace``               by tests/test_k8s.py, not enforced here).
``Secret`` volumes          ``hostPath`` folders the caller writes (:func:`secret_files`):
                            podman 4.3 mounts a Secret only from its own secret store.
``env.valueFrom.            the Secret's value inlined into the played file (a file in
secretKeyRef``              the run's temporary folder, never committed).
``$(VAR)`` in ``args``      expanded from the container's literal ``env``, as Kubernetes
                            does (podman 4.3 passes them on verbatim).
``emptyDir`` (``/tmp``)     dropped with its mount: podman mounts a tmpfs on ``/tmp`` of a
                            read-only root itself (``read_only_tmpfs``).
container ``ports``          dropped: podman 4.3 publishes each on the host (four lnd pods'
                            metrics port 8989 collide); pods reach each other's ports on
                            the network without them.
probes                      dropped: podman 4.3 turns a ``livenessProbe`` into a
                            healthcheck command run inside the container by a systemd
                            timer (``httpGet`` becomes ``curl -f http://localhost:...``,
                            which the images lack; without systemd, as here, it is never
                            run), ignores readiness and startup probes and drops a
                            ``grpc`` probe (no healthcheck at all); the harness
                            waits on each service's gRPC health itself, as the cluster's
                            readiness probe would.
==========================  ===========================================================
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DROPPED_KINDS = frozenset({"Namespace", "Service", "NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor"})
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Doc = dict[str, Any]


class TranslationError(ValueError):
    """The manifests hold something the translation does not know how to play."""


@dataclass
class Played:
    """What one workload became: its pod's documents and the Secrets it needs as folders."""

    name: str  # the pod's name (the StatefulSet's, i.e. its Service's)
    docs: list[Doc] = field(default_factory=list)  # PVCs, ConfigMaps it reads, the Pod
    secret_dirs: dict[str, dict[str, bytes]] = field(default_factory=dict)  # hostPath folder -> its files
    volumes: list[str] = field(default_factory=list)  # podman volume names (PVCs)


def _expand(text: str, env: Mapping[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def _container(c: Doc, secrets: Mapping[str, Mapping[str, bytes]], configmaps: Mapping[str, Doc]) -> Doc:
    """One container: probes dropped, Secret and ConfigMap key references inlined, ``$(VAR)``
    expanded, ``envFrom`` of an optional ConfigMap that does not exist dropped."""
    c = copy.deepcopy(c)
    for probe in PROBES:
        c.pop(probe, None)
    c.pop("ports", None)
    literal: dict[str, str] = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {})
        if "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            value = secrets.get(r["name"], {}).get(r["key"])
            if value is None:
                raise TranslationError(f"container {c['name']}: Secret {r['name']} key {r['key']} not given")
            e.pop("valueFrom")
            e["value"] = value.decode()
        elif "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            text = configmaps.get(r["name"], {}).get("data", {}).get(r["key"])
            if text is None:
                raise TranslationError(f"container {c['name']}: ConfigMap {r['name']} key {r['key']} not given")
            e.pop("valueFrom")
            e["value"] = text
        if "value" in e:
            literal[e["name"]] = e["value"]
    for key in ("command", "args"):
        if key in c:
            c[key] = [_expand(a, literal) for a in c[key]]
    env_from = []
    for ref in c.get("envFrom", []):
        cm = ref.get("configMapRef", {})
        if cm and cm["name"] not in configmaps:
            if cm.get("optional"):
                continue
            raise TranslationError(f"container {c['name']}: ConfigMap {cm['name']} not given")
        env_from.append(ref)
    if "envFrom" in c:
        c["envFrom"] = env_from
    return c


def translate(docs: Iterable[Doc], secrets: Mapping[str, Mapping[str, bytes]], secret_root: Path,
              volume_prefix: str, configmaps: Iterable[Doc] = (), only: Iterable[str] | None = None,
              ) -> dict[str, Played]:
    """Each StatefulSet of ``docs`` (``kubectl kustomize`` output) as a pod to play:
    name -> :class:`Played`. ``secrets``: Secret name -> key -> bytes (what the cluster would
    hold); each Secret volume is a folder ``secret_root/<pod>-<volume>`` whose files
    :attr:`Played.secret_dirs` lists (the caller writes them). ``configmaps``: ConfigMaps made
    at bootstrap (the hub's address, btcd's mining address), besides the rendered ones.
    ``only``: translate these workloads, skip the others."""
    wanted = set(only) if only is not None else None
    docs = list(docs)
    cms = {d["metadata"]["name"]: d for d in [*docs, *configmaps] if d["kind"] == "ConfigMap"}
    out: dict[str, Played] = {}
    for d in docs:
        kind = d["kind"]
        if kind in DROPPED_KINDS or kind == "ConfigMap":
            continue
        if kind != "StatefulSet":
            raise TranslationError(f"{kind} {d['metadata']['name']}: no translation for podman")
        name = d["metadata"]["name"]
        if wanted is not None and name not in wanted:
            continue
        if d["spec"].get("replicas", 1) != 1:
            raise TranslationError(f"StatefulSet {name}: only one replica plays as a pod")
        played = Played(name)
        template = copy.deepcopy(d["spec"]["template"])
        spec = template["spec"]
        volumes: list[Doc] = []
        dropped: set[str] = set()
        for v in spec.get("volumes", []):
            if "emptyDir" in v:
                dropped.add(v["name"])
            elif "secret" in v:
                secret = v["secret"]["secretName"]
                if secret not in secrets:
                    raise TranslationError(f"StatefulSet {name}: Secret {secret} not given")
                data = secrets[secret]
                items = v["secret"].get("items")
                folder = secret_root / f"{name}-{v['name']}"
                played.secret_dirs[str(folder)] = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
                path = str(folder)
                volumes.append({"name": v["name"], "hostPath": {"path": path, "type": "Directory"}})
            else:
                volumes.append(v)
        for claim in d["spec"].get("volumeClaimTemplates", []):
            vol = f"{volume_prefix}{name}-{claim['metadata']['name']}"
            played.volumes.append(vol)
            played.docs.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "metadata": {"name": vol}, "spec": claim["spec"]})
            volumes.append({"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": vol}})
        spec["volumes"] = volumes
        containers = []
        for c in spec["containers"]:
            c = _container(c, secrets, cms)
            c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if m["name"] not in dropped]
            for ref in c.get("envFrom", []):  # podman reads a ConfigMap only from the same play
                cm = cms[ref["configMapRef"]["name"]]
                if cm not in played.docs:
                    played.docs.append(cm)
            containers.append(c)
        spec["containers"] = containers
        pod_meta = {"name": name, "labels": template["metadata"].get("labels", {}),
                    "annotations": template["metadata"].get("annotations", {})}
        played.docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec})
        out[name] = played
    return out
