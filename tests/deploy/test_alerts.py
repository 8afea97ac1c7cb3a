"""The alert rules in deploy/prometheus/: valid for promtool, unit-tested with
`promtool test rules` (deploy/prometheus/tests/), and of the documented shape
`<query> <comparison> <number>` that the live test (tests/deploy/test_alerts_live.py)
relies on to run each alert's query without its threshold."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.clickhouse import need

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = sorted((PROM / "rules").glob("*.yml"))
UNIT_TESTS = sorted((PROM / "tests").glob("*.yml"))
THRESHOLD = re.compile(r"^(?P<query>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<value>-?[0-9.]+)$", re.S)


def promtool() -> str:
    found = shutil.which("promtool")
    need(found is not None, "promtool is not installed (Debian package `prometheus`)")
    assert found is not None
    return found


def alerts() -> list[dict[str, object]]:
    out = []
    for f in RULES:
        for group in yaml.safe_load(f.read_text())["groups"]:
            out += [r for r in group["rules"] if "alert" in r]
    return out


def split_threshold(expr: str) -> tuple[str, str, float]:
    """`<query> <op> <number>` -> (query, op, number)."""
    m = THRESHOLD.match(" ".join(expr.split()))
    assert m, f"alert expression is not `<query> <op> <number>`: {expr!r}"
    return m["query"], m["op"], float(m["value"])


def test_rule_files_exist() -> None:
    assert RULES and UNIT_TESTS


def test_promtool_check_rules() -> None:
    r = subprocess.run(
        [promtool(), "check", "rules", *map(str, RULES)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in r.stdout


def test_promtool_check_example_config() -> None:
    r = subprocess.run(
        [promtool(), "check", "config", str(PROM / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_unit_tests_pass() -> None:
    r = subprocess.run(
        [promtool(), "test", "rules", *map(str, UNIT_TESTS)],
        capture_output=True,
        text=True,
        cwd=PROM / "tests",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for f in UNIT_TESTS:
        for t in yaml.safe_load(f.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {str(a["alert"]) for a in alerts()}
    assert names == {
        "TallyWorkerDown",
        "TallyBreakRateSpike",
        "TallyDeadLetters",
        "TallyPendingBacklogOverSla",
        "TallyConsumerLagGrowing",
        "TallySinkFailing",
    }
    assert names <= fired, f"never seen firing: {names - fired}"
    assert names <= quiet, f"never seen quiet: {names - quiet}"


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: str(r["alert"]))
def test_alert_shape_and_annotations(rule: dict[str, object]) -> None:
    query, _op, _value = split_threshold(str(rule["expr"]))
    assert query
    labels = rule.get("labels") or {}
    assert isinstance(labels, dict) and labels.get("severity") in ("warning", "critical")
    ann = rule.get("annotations") or {}
    assert isinstance(ann, dict) and ann.get("summary") and ann.get("description")
    # no per-merchant or per-order label can appear in an alert
    assert "merchant" not in str(rule["expr"]) and "txn" not in str(rule["expr"])


def test_alerts_are_documented() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    for a in alerts():
        assert f"`{a['alert']}`" in doc, f"{a['alert']} is not in docs/observability.md"
