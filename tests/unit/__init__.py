"""Unit tier: no PostgreSQL (see tests/support/tiers.py)."""
