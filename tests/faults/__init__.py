"""Fault injection: the whole system under one oracle (see harness.py)."""
