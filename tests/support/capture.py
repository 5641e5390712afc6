"""A table to capture from, and the events it produced, for the capture tests."""

from __future__ import annotations

from typing import Any

import psycopg


def create_tickets(conn: psycopg.Connection[Any]) -> str:
    conn.execute(
        "CREATE TABLE public.tickets (id serial PRIMARY KEY, title text, status text,"
        " priority int, password_hash text)"
    )
    return "tickets"


def events(conn: psycopg.Connection[Any]) -> list[tuple[str, Any]]:
    return [
        (r[0], r[1])
        for r in conn.execute("SELECT event_type, payload FROM outbox.events ORDER BY id")
    ]
