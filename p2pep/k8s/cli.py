"""`p2pep k8s config|secrets`: the Kubernetes ConfigMaps and Secrets of the services.

``p2pep k8s config [--overlay O] [--check]`` writes ``k8s/overlays/<O>/config/<component>.yaml``
from the settings classes (:mod:`p2pep.k8s`); ``--check`` writes nothing and exits 1 if a
committed file differs. ``p2pep k8s pods --run-dir DIR`` plays the regtest overlay as pods
on podman, bootstraps it and runs a scenario against it (:mod:`p2pep.k8s.pods`); it removes
the pods, their volumes and the network at the end. ``p2pep k8s secrets --run-dir DIR`` prints, as Secret YAML on stdout
(for ``kubectl apply -f -``; never commit it), each component's TLS folder, its lnd node's
``tls.cert`` and baked macaroon, btcd's client material and the meters' signing keys, read
from a run dir laid out as ``p2pep up`` leaves it. A missing file is a one-line error, exit 2.
``p2pep k8s export-lnd`` (the lnd pods' exporter sidecar, :mod:`p2pep.k8s.exporter`) and
``p2pep k8s bootstrap`` (the regtest overlay's Job, :mod:`p2pep.k8s.bootstrap`) run inside the
cluster; their settings come from the environment.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

from p2pep.k8s import MACAROON_SUBDIR as _MACAROON_SUBDIR
from p2pep.k8s import OVERLAYS, components, configmaps, households, lnd_secrets

REPO = Path(__file__).resolve().parents[2]
MACAROON_SUBDIR = Path(_MACAROON_SUBDIR)


class MissingFile(Exception):
    pass


def config_dir(overlay: str, root: Path = REPO) -> Path:
    return root / "k8s" / "overlays" / overlay / "config"


def _config(args: argparse.Namespace) -> int:
    stale: list[str] = []
    for overlay in [args.overlay] if args.overlay else list(OVERLAYS):
        out = config_dir(overlay, Path(args.root))
        want = configmaps(overlay)
        have = {p.name for p in out.glob("*.yaml")} if out.is_dir() else set()
        for name, text in want.items():
            path = out / name
            if args.check:
                if not path.is_file() or path.read_text() != text:
                    stale.append(str(path))
            else:
                out.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        stale += [str(out / n) for n in sorted(have - set(want))] if args.check else []
    if stale:
        print(f"p2pep k8s config: out of date (run `p2pep k8s config`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise MissingFile(f"missing {path}")
    return path.read_bytes()


def secret_yaml(name: str, files: dict[str, bytes]) -> str:
    lines = ["---", "apiVersion: v1", "kind: Secret", "type: Opaque", "metadata:", f"  name: {name}",
             "  labels:", "    app.kubernetes.io/part-of: p2pep", "data:"]
    lines += [f"  {k}: {base64.b64encode(v).decode()}" for k, v in sorted(files.items())]
    return "\n".join(lines) + "\n"


def lnd_secret_files(node_dir: Path, service: str) -> dict[str, bytes]:
    """What Secret ``p2pep-lnd-<component>`` holds, from a node's folder laid out as lnd's
    ``--lnddir`` (``p2pep up``'s ``RUN_DIR/<node>``, the bootstrap's work folder): its
    ``tls.cert`` and ``p2pep-<service>.macaroon``, the service's own (never admin)."""
    mac = f"p2pep-{service}.macaroon"
    return {"tls.cert": _read(node_dir / "tls.cert"), mac: _read(node_dir / MACAROON_SUBDIR / mac)}


def secrets(run_dir: Path, overlay: str, btcd_user: str, btcd_pass: str) -> str:
    """Every Secret the workloads of ``overlay`` mount, from ``run_dir``'s files."""
    tls = run_dir / "tls"
    out: list[str] = []
    names = [c.name for c in components(overlay)]
    for name in names:
        files = {"ca.crt": _read(tls / "ca.crt"), f"{name}.crt": _read(tls / f"{name}.crt"),
                 f"{name}.key": _read(tls / f"{name}.key")}
        if (tls / "revoked.txt").is_file():
            files["revoked.txt"] = _read(tls / "revoked.txt")
        out.append(secret_yaml(f"p2pep-tls-{name}", files))
    for secret, (node, service) in lnd_secrets(names).items():
        out.append(secret_yaml(secret, lnd_secret_files(run_dir / node, service)))
    out.append(secret_yaml("p2pep-btcd-client", {
        "rpc.cert": _read(run_dir / "btcd" / "rpc.cert"), "user": btcd_user.encode(), "pass": btcd_pass.encode()}))
    for meter in households():
        if meter in names:
            out.append(secret_yaml(f"p2pep-meterkey-{meter}",
                                   {"meter.key": _read(run_dir / "scenario" / meter / "meter.key")}))
    return "".join(out)


def _secrets(args: argparse.Namespace) -> int:
    user = args.btcd_user or os.environ.get("P2PEP_BTCD_USER", "")
    password = args.btcd_pass or os.environ.get("P2PEP_BTCD_PASS", "")
    if not user or not password:
        print("p2pep k8s secrets: btcd's RPC user and password are needed (--btcd-user/--btcd-pass or "
              "P2PEP_BTCD_USER/P2PEP_BTCD_PASS)", file=sys.stderr)
        return 2
    try:
        text = secrets(Path(args.run_dir), args.overlay, user, password)
    except MissingFile as exc:
        print(f"p2pep k8s secrets: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def _pods(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import signal

    from p2pep.k8s.pods import PodError, PodScenarioRunner
    from p2pep.regtest.errors import RegtestError
    from p2pep.scenario.catalog import load_scenario
    from p2pep.scenario.runner import RunOptions

    run_dir = Path(args.run_dir)
    report_path = Path(args.report) if args.report else run_dir / "report.json"

    async def main() -> dict[str, object] | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = PodScenarioRunner(load_scenario(args.scenario), RunOptions(run_dir=run_dir, report_path=report_path))
        return await runner.run(stop)

    try:
        report = asyncio.run(main())
    except (PodError, RegtestError) as exc:
        print(f"p2pep k8s pods: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    if report is None:
        return 130
    print(json.dumps({"ok": report["ok"], "failed_checks": report["failed_checks"], "report": str(report_path)}))
    return 0 if report["ok"] else 1


def _export_lnd(args: argparse.Namespace) -> int:
    from p2pep.k8s.exporter import main

    return main()


def _bootstrap(args: argparse.Namespace) -> int:
    from p2pep.k8s.bootstrap import main

    return main()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k8s = sub.add_parser("k8s", help="Kubernetes ConfigMaps (generated) and Secrets (from a run dir)")
    ks = k8s.add_subparsers(dest="k8s_command", required=True)
    c = ks.add_parser("config", help="write k8s/overlays/*/config/ from the settings classes")
    c.add_argument("--overlay", choices=OVERLAYS)
    c.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file differs")
    c.add_argument("--root", default=str(REPO), help=argparse.SUPPRESS)
    c.set_defaults(func=_config)
    s = ks.add_parser("secrets", help="print the Secrets (TLS, macaroons, meter keys) as YAML; never commit it")
    s.add_argument("--run-dir", required=True, help="a run dir as `p2pep up` leaves it (tls/, hub/, meter-N/, btcd/)")
    s.add_argument("--overlay", choices=OVERLAYS, default="regtest")
    s.add_argument("--btcd-user", default="")
    s.add_argument("--btcd-pass", default="")
    s.set_defaults(func=_secrets)
    p = ks.add_parser("pods", help="the regtest overlay as pods on podman: bootstrap, run a scenario, remove them")
    p.add_argument("--scenario", default="hackathon")
    p.add_argument("--run-dir", required=True, help="where the run's secrets, played files, logs and report go")
    p.add_argument("--report", default="", help="report path (default RUN_DIR/report.json)")
    p.set_defaults(func=_pods)
    e = ks.add_parser("export-lnd", help="in an lnd pod: its tls.cert and admin.macaroon into Secret "
                                         "p2pep-lnd-admin-<node> (settings: P2PEP_EXPORT_*, P2PEP_KUBE_*)")
    e.set_defaults(func=_export_lnd)
    b = ks.add_parser("bootstrap", help="in the cluster (the Job): mine, fund, bake macaroons, open channels, write "
                                        "the lnd Secrets and p2pep-hub (settings: P2PEP_BOOTSTRAP_*, P2PEP_KUBE_*)")
    b.set_defaults(func=_bootstrap)
