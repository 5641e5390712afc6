"""Test helpers and fixture plugins (see tests/conftest.py)."""
