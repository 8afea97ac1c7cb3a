"""End-of-day reconciliation: channel statements in, classified breaks, suspense and
write-off, merchant settlement out."""
