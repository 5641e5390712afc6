"""Webhook delivery: the worker that claims and sends, its HTTP client, retries, signing.

worker.py claims due deliveries and records outcomes (SQL in sql/delivery.sql,
through store.py); attempt.py is one HTTP attempt on client.py's shared
httpx.AsyncClient; retry.py is the tenacity policy; signing.py the signatures;
ssrf.py the address guard; headers.py the per-webhook custom headers; ops.py
the operator verbs the API calls.
"""
