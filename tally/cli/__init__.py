"""The `tally` command line (`main`): the root group and its assembly in main.py, the
shared helpers in common.py, one module per command group (stream, demo, config,
breaks, orders, db, recon, funds, statements, settle, bench, dashboards)."""

from tally.cli.main import main

__all__ = ["main"]
