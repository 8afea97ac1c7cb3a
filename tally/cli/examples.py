"""An example for every command's --help, in one place.

`add_examples(main)` appends each command's examples to its help epilog, after the
commands of every module are registered (tally/cli/main.py). tests/cli/test_cli.py checks
that every command has one and that each parses (options, types, required values).
Paths are those `tally demo` writes (TALLY_DATA_DIR/demo) and dates a demo day's.
"""

from __future__ import annotations

import click

__all__ = ["EXAMPLES", "add_examples"]

D = "2026-12-02"

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "python3 -m tally demo                                # a whole simulated day",
        "tally --database tally_demo breaks --kind short      # look at the demo's data",
    ),
    "run": (
        "tally run                                 # the always-on workers and the sink",
        "tally run --simulate 500 --until-idle 5   # with simulated traffic, then a summary",
    ),
    "simulate": (
        "tally simulate --events 20000 --out sim/",
        "tally simulate --events 20000 --out sim/ --statements statements/",
    ),
    "produce": ("tally produce sim/events.jsonl",),
    "demo": (
        "python3 -m tally demo                  # the whole day, 100,000 events",
        "python3 -m tally demo --events 20000   # a smaller day",
        "python3 -m tally demo --live           # real event-to-break latency",
    ),
    "config": ("tally config --json",),
    "bench": ("tally bench core --events 50000",),
    "bench core": ("tally bench core --events 50000 --json",),
    "bench stream": ("tally bench stream --quick",),
    "bench recon": ("tally bench recon --rows 100000 --no-pandas",),
    "bench chaos": (
        "tally bench chaos                      # 100,000 events, 20 kills",
        "tally bench chaos --events 20000 --kills 4 --seed 7",
    ),
    "bench outage": (
        "tally bench outage --seconds 60        # ClickHouse down 60 s, then a broker restart",
        "tally bench outage --seconds 0 --restart-events 20000   # only the broker restart",
    ),
    "bench replay": ("tally bench replay --events 20000",),
    "bench soak": ("tally bench soak --minutes 30 --rate 150",),
    "bench hostile": (
        "tally bench hostile                    # 10,000 inputs, 10,000 mutants a file, 2 GB file",
        "tally bench hostile --inputs 1000 --mutations 200 --big-file-mb 0",
    ),
    "breaks": (
        f"tally breaks --date {D} --kind amount_mismatch",
        "tally breaks --channel wechat --format csv",
    ),
    "breaks suspense": ("tally breaks suspense --channel wechat",),
    "breaks open": (f"tally breaks open --date {D}",),
    "breaks resolve": (
        "tally breaks resolve se-01e5060fb464e3d8ccb3 --action refunded "
        '--reason "merchant refunded the second charge" --by alice',
        "tally breaks resolve --file resolutions.csv --check",
        "tally breaks resolve --file resolutions.csv",
    ),
    "breaks export": (
        "tally breaks export --open --format csv --out resolutions.csv",
        f"tally breaks export --channel wechat --date {D} --format json",
    ),
    "breaks history": ("tally breaks history se-01e5060fb464e3d8ccb3",),
    "balances": ("tally balances --merchant M00006", "tally balances --channel wechat"),
    "orders": ("tally orders show s7-P00008324",),
    "orders show": ("tally orders show s7-P00008324 --format json",),
    "db": ("tally db migrate", "tally db status"),
    "db migrate": ("tally db migrate",),
    "db status": ("tally db status --json",),
    "sink": ("tally sink --until-caught-up",),
    "statements": (f"tally statements list --date {D}",),
    "statements load": (
        f"tally statements load data/demo/statements/wechat/wechat-{D}.csv --channel wechat",
        f"tally statements load bank-{D}.sta --kind bank --account 6222021001112223334",
        f"tally statements load payouts-{D}.csv --kind payouts --date {D}",
    ),
    "statements list": (f"tally statements list --channel wechat --date {D}",),
    "recon": (f"tally recon run --date {D}",),
    "recon run": (
        f"tally recon run --date {D}",
        f"tally recon run --date {D} --channel alipay --dry-run",
    ),
    "recon settlements": (
        f"tally recon settlements --date {D}",
        f"tally recon settlements --date {D} --class settlement_short --json",
    ),
    "recon merchants": (
        f"tally recon merchants --date {D}",
        f"tally recon merchants --date {D} --source bank --class payout_short --json",
    ),
    "recon results": (f"tally recon results --date {D} --channel wechat --class short",),
    "recon runs": (f"tally recon runs --date {D}",),
    "recon accept": (
        "tally recon accept WX-4200001 --candidate s7-P00000586 --by alice "
        '--reason "reference truncated by the bank"',
    ),
    "recon reject": (
        'tally recon reject WX-4200001 --by alice --reason "not ours: another merchant"',
    ),
    "recon report": (f"tally recon report --date {D} --out report.html",),
    "settle": (f"tally settle --date {D}", f"tally settle --date {D} --format csv"),
    "dashboards": ("tally dashboards build --check",),
    "dashboards build": ("tally dashboards build", "tally dashboards build --check"),
}


def commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """Every command below `group`, by its path ("" for the group itself)."""
    out: dict[str, click.Command] = {prefix: group}
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}".strip()
        if isinstance(cmd, click.Group):
            out.update(commands(cmd, path))
        else:
            out[path] = cmd
    return out


def add_examples(main: click.Group) -> None:
    """Append `EXAMPLES` to the commands' help (once; the commands keep their own
    epilog text before it)."""
    for path, cmd in commands(main).items():
        lines = EXAMPLES.get(path)
        if not lines or (cmd.epilog and "Examples:" in cmd.epilog):
            continue
        block = "\b\nExamples:\n" + "\n".join(f"  {x}" for x in lines) + "\n"
        cmd.epilog = f"{cmd.epilog.rstrip()}\n\n{block}" if cmd.epilog else block
