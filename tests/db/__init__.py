"""Database tier: needs PostgreSQL (see tests/support/tiers.py)."""
