"""Generate the dashboards' JSON (`dashboards/json/<uid>.json`) from the code.

tally dashboards build           # write the JSON
tally dashboards build --check   # fail if the committed JSON differs from the code
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import balances, eod, realtime

JSON_DIR = Path(__file__).resolve().parent / "json"

DASHBOARDS: dict[str, Callable[[], Any]] = {
    realtime.UID: realtime.build,
    balances.UID: balances.build,
    eod.UID: eod.build,
}


def build(uid: str) -> Any:
    """The dashboard model (grafana_foundation_sdk.models.dashboard.Dashboard)."""
    return DASHBOARDS[uid]().build()


def render(uid: str) -> str:
    return JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(build(uid)) + "\n"


def as_dict(uid: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(render(uid))
    return out


def panels(model: Any) -> Iterator[Any]:
    """Every panel of a dashboard model, rows included (rows may nest panels)."""
    for p in model.panels or []:
        yield p
        yield from getattr(p, "panels", None) or []


def write(out: Path = JSON_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for uid in DASHBOARDS:
        path = out / f"{uid}.json"
        path.write_text(render(uid), encoding="utf-8")
        written.append(path)
    return written


def drift(out: Path = JSON_DIR) -> list[str]:
    """Dashboards whose JSON in `out` differs from what the code generates (or is
    missing), and JSON files there that no dashboard generates."""
    problems = []
    for uid in DASHBOARDS:
        path = out / f"{uid}.json"
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != render(uid):
            problems.append(f"{path}: differs from the code")
    known = {f"{uid}.json" for uid in DASHBOARDS}
    for extra in sorted(out.glob("*.json")) if out.exists() else []:
        if extra.name not in known:
            problems.append(f"{extra}: no dashboard generates it")
    return problems
