"""A/B of the pure core: `tally bench core` in a baseline tree and in this one,
alternating on the same input (same seed and events), medians and ratio.

    git worktree add /tmp/core-base <baseline commit>
    python3 benchmarks/core_ab.py --base /tmp/core-base --events 100000 --rounds 3

Each run is a fresh process (`python3 -m tally bench core --json`) with its tree first
on the path. The machine may be shared and noisy: read the medians, and the spread of
the runs, not one figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run(tree: Path, events: int, seed: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-m", "tally", "bench", "core"]
    out = subprocess.run(
        [*cmd, "--events", str(events), "--seed", str(seed), "--json"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    r = json.loads(out)[0]
    r["us_per_event"] = r["seconds"] / r["events"] * 1e6
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=Path("/tmp/core-base"))
    ap.add_argument("--new", type=Path, default=HERE)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    for i in range(a.rounds):
        # alternate which goes first, so drift in the machine's load hits both
        order = ("base", "new") if i % 2 == 0 else ("new", "base")
        for side in order:
            r = run(a.base if side == "base" else a.new, a.events, a.seed)
            runs[side].append(r)
            print(
                f"round {i + 1} {side:4s} {r['us_per_event']:7.2f} us/event "
                f"(breaks {r['breaks']}, postings {r['postings']})",
                file=sys.stderr,
                flush=True,
            )
    med = {s: statistics.median(r["us_per_event"] for r in rs) for s, rs in runs.items()}
    same = {(r["events"], r["breaks"], r["postings"]) for rs in runs.values() for r in rs}
    summary = {
        "events": a.events,
        "rounds": a.rounds,
        "base_us_per_event": [round(r["us_per_event"], 2) for r in runs["base"]],
        "new_us_per_event": [round(r["us_per_event"], 2) for r in runs["new"]],
        "base_median_us": round(med["base"], 2),
        "new_median_us": round(med["new"], 2),
        "speedup": round(med["base"] / med["new"], 2),
        "same_output_counts": len(same) == 1,
    }
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"median us/event: base {summary['base_median_us']}, new {summary['new_median_us']}"
            f" -> {summary['speedup']}x  (base runs {summary['base_us_per_event']}, "
            f"new runs {summary['new_us_per_event']}; same breaks/postings: "
            f"{summary['same_output_counts']})"
        )


if __name__ == "__main__":
    main()
