"""Fill ``exp_annotations`` of every expected alert in monitoring/prometheus/tests/*.yml.

promtool compares an alert's annotations too, so each expected alert of a rule unit test
carries the rule's annotations rendered for its labels. The alert templates use only
``{{ $labels.NAME }}`` (never ``$value``), so they are rendered here exactly as Prometheus
would; run this after editing an alert's text, then review the diff:

    python scripts/fill_alert_annotations.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent / "monitoring" / "prometheus"
LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


def render(template: str, labels: dict[str, str]) -> str:
    if "{{" in LABEL.sub("", template):
        raise SystemExit(f"template uses more than $labels: {template!r}")
    return LABEL.sub(lambda m: labels.get(m.group(1), ""), template)


def alert_annotations() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for path in sorted((ROOT / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    out[rule["alert"]] = rule.get("annotations", {})
    return out


class Literal(str):
    pass


def _literal(dumper: yaml.SafeDumper, s: Literal) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


def main() -> int:
    yaml.SafeDumper.add_representer(Literal, _literal)
    annotations = alert_annotations()
    for path in sorted((ROOT / "tests").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                for exp in case.get("exp_alerts") or []:
                    labels = {k: str(v) for k, v in exp["exp_labels"].items()}
                    exp["exp_annotations"] = {k: Literal(render(v, labels))
                                              for k, v in annotations[case["alertname"]].items()}
        head = "".join(line for line in path.read_text().splitlines(keepends=True)
                       if line.startswith("#")).split("\n\n")[0]
        body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110)
        path.write_text(head + ("\n" if head and not head.endswith("\n") else "") + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
