"""The `tally` command line: the root group and the assembly of every command.

Each module adds its commands with `register(main)`; the root group hands the settings
down as the click context's object (tally/cli/common.py). Every command has --help,
ending with examples (tally/cli/examples.py).
"""

from __future__ import annotations

import click

from tally.cli import (
    bench,
    chaos,
    config,
    dashboards,
    demo,
    hostile,
    outage,
    recon,
    settle,
    statements,
    storage,
    stream,
)
from tally.cli.common import CliState
from tally.cli.examples import add_examples


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database",
    metavar="DB",
    default=None,
    help="ClickHouse database for this command, as TALLY_CLICKHOUSE_DATABASE=DB would "
    "(e.g. the demo's: tally --database tally_demo breaks)",
)
@click.version_option(package_name="tally")
@click.pass_context
def main(ctx: click.Context, database: str | None) -> None:
    """tally: streaming real-time clearing and reconciliation for payment platforms.

    Settings come from TALLY_* environment variables and ./.env; `tally config`
    prints them. With TALLY_BROKER unset, commands that need a broker start the
    embedded Tansu broker (memory only).
    """
    # the settings, read once (on first use) with --database applied, for every command
    ctx.obj = CliState(database)


# ------------------------------------------------------------- the command tree

stream.register(main)  # run, produce, simulate
demo.register(main)
config.register(main)
storage.register(main)  # breaks, balances, orders, db, sink
recon.register(main)  # recon run | results | runs | accept | reject | settlements | merchants
statements.register(main)
settle.register(main)  # settle, recon report (after recon)
dashboards.register(main)
main.add_command(bench.bench)  # bench core | stream | recon

# the reliability runs (docs/reliability.md), each a `tally bench` command
chaos.register(bench.bench)  # bench chaos: kill -9 storms
outage.register(bench.bench)  # bench outage | replay | soak
hostile.register(bench.bench)  # bench hostile: hostile inputs and mutated statements

add_examples(main)  # every command's --help ends with examples (after all are added)


if __name__ == "__main__":  # pragma: no cover
    main()
