"""The dashboards as code: the committed JSON is what the code generates, and every
panel has a description, a unit, thresholds and a data source; every dashboard has the
channel and merchant variables; no query groups by a per-merchant or per-order label."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dashboards.build import DASHBOARDS, JSON_DIR, as_dict, drift, render, write
from tally.cli import main

PROM_METRICS = re.compile(r"\b(tally_[a-z_]+|up)\b")


def test_committed_json_equals_generated() -> None:
    assert drift() == [], "run `tally dashboards build` and commit dashboards/json/"
    for uid in DASHBOARDS:
        assert (JSON_DIR / f"{uid}.json").read_text(encoding="utf-8") == render(uid)


def test_build_command_writes_and_checks(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["dashboards", "build", "--check", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "missing" in r.output
    r = CliRunner().invoke(main, ["dashboards", "build", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{u}.json" for u in DASHBOARDS)
    r = CliRunner().invoke(main, ["dashboards", "build", "--check", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (tmp_path / "tally-eod.json").write_text("{}", encoding="utf-8")
    r = CliRunner().invoke(main, ["dashboards", "build", "--check", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "tally-eod.json: differs" in r.output
    assert drift(tmp_path) and write(tmp_path) and not drift(tmp_path)


@pytest.mark.parametrize("uid", list(DASHBOARDS))
def test_dashboard_shape(uid: str) -> None:
    d = as_dict(uid)
    assert d["uid"] == uid and d["title"].startswith("tally") and d["description"]
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"channel", "merchant"} <= names
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert len(panels) >= 5
    for p in panels:
        where = f"{uid} / {p['title']}"
        assert p.get("description"), f"{where}: no description"
        assert p["datasource"]["uid"] in ("tally-prometheus", "tally-clickhouse"), where
        defaults = p["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{where}: no unit"
        assert defaults["thresholds"]["steps"], f"{where}: no thresholds"
        assert p["targets"], where
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], where
            text = t.get("expr") or t.get("rawSql")
            assert text, where
            if "expr" in t:  # PromQL: no per-entity label anywhere
                assert not re.search(r"merchant|txn", t["expr"]), where
                assert set(PROM_METRICS.findall(t["expr"])), where


def test_every_dashboard_has_thresholds_beyond_the_base_somewhere() -> None:
    for uid in DASHBOARDS:
        d = as_dict(uid)
        steps = [
            len(p["fieldConfig"]["defaults"]["thresholds"]["steps"])
            for p in d["panels"]
            if p["type"] != "row"
        ]
        assert max(steps) >= 2, uid


def test_panels_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text(
        encoding="utf-8"
    )
    for uid in DASHBOARDS:
        assert uid in doc
        for p in as_dict(uid)["panels"]:
            if p["type"] != "row":
                assert f"**{p['title']}**" in doc, f"{uid} / {p['title']} not in the docs"


def test_json_is_valid_grafana_shape() -> None:
    for uid in DASHBOARDS:
        d = json.loads((JSON_DIR / f"{uid}.json").read_text(encoding="utf-8"))
        assert d["schemaVersion"] >= 36 and isinstance(d["panels"], list)
        ids = [p.get("gridPos") for p in d["panels"]]
        assert all(ids)
