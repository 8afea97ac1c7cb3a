"""tally: streaming real-time clearing and reconciliation for payment platforms."""

__version__ = "0.1.0"
