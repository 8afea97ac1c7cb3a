"""`tally dashboards build [--check]`."""

from __future__ import annotations

from pathlib import Path

import click


def register(main: click.Group) -> None:
    main.add_command(dashboards)


@click.group()
def dashboards() -> None:
    """Grafana dashboards as code (dashboards/, docs/observability.md)."""


@dashboards.command("build")
@click.option(
    "--check",
    is_flag=True,
    help="write nothing; exit 1 if the JSON in the output directory differs from the code",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="output directory (default: dashboards/json in the source tree)",
)
def build(check: bool, out: Path | None) -> None:
    """Regenerate the dashboards' JSON from the Python code."""
    from dashboards.build import JSON_DIR, drift, write

    target = out or JSON_DIR
    if check:
        problems = drift(target)
        if problems:
            raise click.ClickException(
                "dashboard JSON is out of date (run `tally dashboards build`):\n  "
                + "\n  ".join(problems)
            )
        click.echo(f"dashboard JSON in {target} matches the code")
        return
    for path in write(target):
        click.echo(f"wrote {path}")
