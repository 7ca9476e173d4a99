"""Transactions: one per accepted event, from queued to completed/expired/failed."""
