"""Property-based: the running API against its own /openapi.json (schemathesis).

Every operation gets generated requests (bounded: ``MAX_EXAMPLES`` each,
derandomized so a failure reproduces); no response may be a 5xx, use an
undocumented status or content type, break its documented schema, or
succeed without credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import psycopg
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from outbox.api.config import Settings
from outbox.relay.delivery import ssrf
from outbox.relay.sinks import runner as sink_runner
from tests.support.api import AUTH, add_delivery, api_client, create_webhook
from tests.support.sinks import NoBroker

MAX_EXAMPLES = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]


def _strategy(op: Any, known: dict[str, int]) -> Any:
    """Valid and invalid requests; half of the valid ones (when the path has
    ids) aimed at rows that exist: random ids alone mostly test the 404 path."""
    names = [p.name for p in op.path_parameters]
    valid = op.as_strategy()
    if names and op.method.upper() != "DELETE":
        fixed = op.as_strategy(path_parameters={n: known[n] for n in names})
        valid = st.one_of(valid, fixed)
    invalid = op.as_strategy(generation_mode=GenerationMode.NEGATIVE).filter(_fits_a_request_line)
    return st.one_of(valid, valid, invalid)


def _fits_a_request_line(case: Any) -> bool:
    """Leave out URLs of tens of kilobytes: uvicorn refuses those itself, and
    it may reset the connection before the client reads its 400."""
    parts = {**(case.query or {}), **(case.path_parameters or {})}
    return len(urlencode(parts, doseq=True)) < 8000


def _run(base_url: str, known: dict[str, int]) -> list[str]:
    """Blocking (schemathesis sends with ``requests``): run it in a thread."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        # An operation schemathesis cannot read is itself a failure.
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) >= 17, [op.label for op in operations]
    # Deletes last, so the other operations still find the known rows.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    for op in operations:

        @hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=_strategy(op, known))
        def check(case: Any) -> None:
            case.call_and_validate(base_url=base_url, headers=AUTH, checks=CHECKS)

        try:
            check()
        except Exception as exc:
            failures.append(f"{op.label}: {exc}")
    return failures


def _report(failures: Sequence[str]) -> str:
    return "\n\n".join(failures)


async def test_api_conforms_to_its_openapi_document(
    settings: Settings, conn: psycopg.Connection[Any], monkeypatch: Any
) -> None:
    async def loopback(host: str) -> list[str]:
        # Generated host names resolve to loopback (allowed by the test
        # settings), so no lookup and no webhook request leaves the machine.
        return ["127.0.0.1"]

    monkeypatch.setattr(ssrf, "default_resolver", loopback)
    # Generated sinks point anywhere: their publishers must not connect.
    monkeypatch.setattr(sink_runner, "open_publisher", lambda _config: NoBroker())
    async with api_client(settings) as client:
        # Some rows, so generated small ids reach real webhooks and deliveries.
        for active in (False, True):
            hook = await create_webhook(client, is_active=active)
            delivery = add_delivery(conn, hook["id"], status="failed", attempts=2)
        event = conn.execute(
            "SELECT event_id FROM outbox.deliveries WHERE id = %s", (delivery,)
        ).fetchone()
        assert event is not None
        sink = await client.post("/sinks", json={"name": "s", "url": "nats://127.0.0.1:9"})
        assert sink.status_code == 201, sink.text
        known = {
            "webhook_id": hook["id"],
            "delivery_id": delivery,
            "event_id": event[0],
            "sink_id": sink.json()["id"],
        }
        failures = await asyncio.to_thread(_run, str(client.base_url).rstrip("/"), known)
    assert not failures, _report(failures)
