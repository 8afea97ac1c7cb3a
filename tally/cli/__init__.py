from tally.cli.main import main

__all__ = ["main"]
