"""End-to-end tier: real servers, subprocesses, a browser (see tests/support/tiers.py)."""
