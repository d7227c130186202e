"""Prices, token estimation, the cost ledger, budgets and usage queries."""
