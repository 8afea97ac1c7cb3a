"""`tally config`: the effective settings; `register(main)` adds it."""

from __future__ import annotations

import json

import click

from tally.cli.common import CliState, pass_state
from tally.config import Settings


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_state
def config(state: CliState, as_json: bool) -> None:
    """Print the effective settings (secrets masked)."""
    values = state.settings.masked()
    if as_json:
        click.echo(json.dumps(values, indent=2, default=str))
        return
    fields = Settings.model_fields
    for name, value in values.items():
        desc = fields[name].description or ""
        shown = json.dumps(value, default=str) if not isinstance(value, str) else value
        click.echo(f"TALLY_{name.upper():<32}{shown}")
        if desc:
            click.echo(f"{'':<38}# {desc}")


def register(main: click.Group) -> None:
    """Add `tally config` to `tally`."""
    main.add_command(config)
