"""`python -m sinks ...`: the ClickHouse commands without the rest of `tally`."""

import click

from sinks.cli import register


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """tally's ClickHouse commands (also available as `tally ...`)."""


register(main)

if __name__ == "__main__":
    main()
