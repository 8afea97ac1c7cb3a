"""`python -m tally` is the `tally` command."""

from tally.cli.main import main

main()
