#!/usr/bin/env bash
# `tally bench stream` in two checkouts, alternating, same input and broker port:
#   benchmarks/stream_ab.sh BASE_TREE [THIS_TREE] [ROUNDS] [OUT_DIR]
# BASE_TREE needs this tree's streams/bench/ and tally/cli/bench.py
# (copy them in). Each run writes OUT_DIR/ab-<tree>-<round>.json.
set -euo pipefail
base=${1:?a baseline checkout}
this=${2:-$(cd "$(dirname "$0")/.." && pwd)}
rounds=${3:-2}
out=${4:-.}
for round in $(seq 1 "$rounds"); do
  for tree in "$base" "$this"; do
    (cd "$tree" && PYTHONPATH="$tree" python3 -m tally bench stream --events 10000 \
        --latency-events 3000 --json > "$out/ab-$(basename "$tree")-$round.json")
    echo "round $round: $tree done"
  done
done
