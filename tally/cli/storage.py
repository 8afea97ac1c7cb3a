"""The commands that read and manage ClickHouse: `register(main)` adds them all.

tally breaks ...            tally/cli/breaks.py (with the suspense entries)
tally balances | orders     tally/cli/orders.py
tally db | sink             tally/cli/db.py
"""

from __future__ import annotations

import click

from tally.cli import breaks, db, orders


def register(main: click.Group) -> None:
    """Add the ClickHouse commands to the `tally` command group."""
    for commands in (breaks, orders, db):
        commands.register(main)
