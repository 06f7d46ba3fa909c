"""The rendered regtest overlay, translated for ``podman kube play`` (podman 4.3) (pure).

podman plays Pods, Deployments, PersistentVolumeClaims and ConfigMaps, and nothing else of
what ``kubectl kustomize k8s/overlays/regtest`` renders. The translation is kept to what
podman lacks, one rule each, and leaves every other field as the manifest has it (image,
args, ``envFrom`` ConfigMaps, resources, ``securityContext`` with the read-only root,
the PVC at ``/data``). The in-cluster bootstrap is played too (the lnd pods' exporter
sidecars and the Job's own container, with the generated ``p2pep-bootstrap-config``): only
the Kubernetes API they call is replaced, by a folder (:mod:`p2pep.k8s.store`):

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
``emptyDir`` (``/tmp``)     kept: podman 4.3 makes it a volume of the pod, removed with
                            it (``medium: Memory`` is on disk there). Dropping it would not
                            do: ``kube play`` mounts no tmpfs on ``/tmp`` of a read-only
                            root, so the Job's work folder could not be written.
container ``ports``          dropped: podman 4.3 publishes each on the host (four lnd pods'
                            metrics port 8989 collide); pods reach each other's ports on
                            the network without them.
``Job X``                   ``Pod X`` (its template; one pod, one completion), with
                            ``restartPolicy: Never``: the harness runs it to completion as
                            the Job controller does (:class:`JobRun`: waits for the
                            container's exit, starts it again after a failure up to
                            ``backoffLimit`` times, all within ``activeDeadlineSeconds``).
                            podman's own ``on-failure`` restarts without limit or backoff.
a ``projected`` volume      ``hostPath`` of the folder store (``store``, one folder of the
with a ServiceAccount       run), mounted writable at ``/var/run/p2pep/store`` instead of
token, and its mounts       the token, and ``P2PEP_KUBE_STORE=folder``,
                            ``P2PEP_KUBE_STORE_DIR`` added to the containers mounting it
                            (the lnd pods' exporter sidecars, the Job's container): they
                            write and read their Secrets and ConfigMaps there
                            (:class:`p2pep.k8s.store.FolderStore`) with the same code.
``Role``, ``RoleBinding``,  dropped, and the pods' ``serviceAccountName``: a folder has no
``ServiceAccount``          RBAC (the Roles are held to least privilege by
                            tests/test_k8s.py, not enforced here).
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

DROPPED_KINDS = frozenset({"Namespace", "Service", "NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor",
                           "ServiceAccount", "Role", "RoleBinding"})
EXPORTER = "p2pep.k8s.exporter"  # the lnd pods' sidecar module (its container's args[0])
STORE_MOUNT = "/var/run/p2pep/store"  # the folder store in a played pod (P2PEP_KUBE_STORE_DIR)
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Doc = dict[str, Any]


class TranslationError(ValueError):
    """The manifests hold something the translation does not know how to play."""


@dataclass(frozen=True)
class JobRun:
    """What the harness needs to run a Job's pod to completion as the Job controller would."""

    container: str  # the container's name in the template (podman's is <pod>-<container>)
    backoff_limit: int  # retries after a failed run (the Job's backoffLimit)
    deadline_s: float  # the Job's activeDeadlineSeconds, over every try


@dataclass
class Played:
    """What one workload became: its pod's documents and the Secrets it needs as folders."""

    name: str  # the pod's name (the StatefulSet's, i.e. its Service's; the Job's)
    docs: list[Doc] = field(default_factory=list)  # PVCs, ConfigMaps it reads, the Pod
    secret_dirs: dict[str, dict[str, bytes]] = field(default_factory=dict)  # hostPath folder -> its files
    volumes: list[str] = field(default_factory=list)  # podman volume names (PVCs)
    job: JobRun | None = None  # a Job's pod: run to completion


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


def _token_volume(v: Doc) -> bool:
    """A ``projected`` volume carrying a ServiceAccount token: how a pod reaches the API."""
    return any("serviceAccountToken" in src for src in v.get("projected", {}).get("sources", []))


def _store_env() -> list[Doc]:
    """The folder store's variables (:class:`p2pep.k8s.settings.KubeApiSettings`, its names)."""
    from p2pep.k8s.settings import KubeApiSettings
    from p2pep.servicekit.settings import settings_env

    env = settings_env(KubeApiSettings, store="folder", store_dir=STORE_MOUNT)
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def translate(docs: Iterable[Doc], secrets: Mapping[str, Mapping[str, bytes]], secret_root: Path,
              volume_prefix: str, configmaps: Iterable[Doc] = (), only: Iterable[str] | None = None,
              *, store: Path) -> dict[str, Played]:
    """Each StatefulSet and Job of ``docs`` (``kubectl kustomize`` output) as a pod to play:
    name -> :class:`Played`. ``secrets``: Secret name -> key -> bytes (what the cluster would
    hold); each Secret volume is a folder ``secret_root/<pod>-<volume>`` whose files
    :attr:`Played.secret_dirs` lists (the caller writes them). ``configmaps``: ConfigMaps made
    at bootstrap (the hub's address, btcd's mining address), besides the rendered ones.
    ``store``: the folder store (:class:`p2pep.k8s.store.FolderStore`) mounted instead of the
    ServiceAccount token into the containers that call the API (the exporters, the Job).
    ``only``: translate these workloads, skip the others."""
    wanted = set(only) if only is not None else None
    docs = list(docs)
    cms = {d["metadata"]["name"]: d for d in [*docs, *configmaps] if d["kind"] == "ConfigMap"}
    out: dict[str, Played] = {}
    for d in docs:
        kind = d["kind"]
        if kind in DROPPED_KINDS or kind == "ConfigMap":
            continue
        if kind not in ("StatefulSet", "Job"):
            raise TranslationError(f"{kind} {d['metadata']['name']}: no translation for podman")
        name = d["metadata"]["name"]
        if wanted is not None and name not in wanted:
            continue
        if kind == "StatefulSet" and d["spec"].get("replicas", 1) != 1:
            raise TranslationError(f"StatefulSet {name}: only one replica plays as a pod")
        if kind == "Job" and (d["spec"].get("parallelism", 1) != 1 or d["spec"].get("completions", 1) != 1):
            raise TranslationError(f"Job {name}: only one pod at a time, one completion, plays")
        out[name] = _pod(name, d, secrets, cms, secret_root, volume_prefix, store)
    return out


def _pod(name: str, d: Doc, secrets: Mapping[str, Mapping[str, bytes]], cms: Mapping[str, Doc],
         secret_root: Path, volume_prefix: str, store: Path) -> Played:
    """One workload's pod template as a played Pod (see the module's table)."""
    played = Played(name)
    template = copy.deepcopy(d["spec"]["template"])
    spec = template["spec"]
    volumes: list[Doc] = []
    dropped: set[str] = set()
    token: set[str] = set()
    spec.pop("serviceAccountName", None)
    for v in spec.get("volumes", []):
        if _token_volume(v):
            token.add(v["name"])
            volumes.append({"name": v["name"], "hostPath": {"path": str(store), "type": "Directory"}})
        elif "projected" in v:
            dropped.add(v["name"])
        elif "secret" in v:
            secret = v["secret"]["secretName"]
            if secret not in secrets:
                raise TranslationError(f"{d['kind']} {name}: Secret {secret} not given")
            data = secrets[secret]
            items = v["secret"].get("items")
            folder = secret_root / f"{name}-{v['name']}"
            played.secret_dirs[str(folder)] = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
            volumes.append({"name": v["name"], "hostPath": {"path": str(folder), "type": "Directory"}})
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
        mounts = []
        for m in c.get("volumeMounts", []):
            if m["name"] in dropped:
                continue
            if m["name"] in token:  # the API's token -> the folder store, writable, and its settings
                m = {"name": m["name"], "mountPath": STORE_MOUNT}
                c["env"] = [*c.get("env", []), *_store_env()]
            mounts.append(m)
        c["volumeMounts"] = mounts
        for ref in c.get("envFrom", []):  # podman reads a ConfigMap only from the same play
            cm = cms[ref["configMapRef"]["name"]]
            if cm not in played.docs:
                played.docs.append(cm)
        containers.append(c)
    spec["containers"] = containers
    if d["kind"] == "Job":
        spec["restartPolicy"] = "Never"  # the harness retries, as the Job controller does
        played.job = JobRun(containers[0]["name"], int(d["spec"].get("backoffLimit", 6)),
                            float(d["spec"].get("activeDeadlineSeconds", 3600)))
    pod_meta = {"name": name, "labels": template["metadata"].get("labels", {}),
                "annotations": template["metadata"].get("annotations", {})}
    played.docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec})
    return played
