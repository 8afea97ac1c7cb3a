"""Funds reconciliation: the platform's own bank account statements, the settlements
the channels owe into it, and the payouts to merchants (docs/reconciliation.md,
"Settlement" and "Merchant payouts")."""
