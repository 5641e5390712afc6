"""One webhook HTTP attempt: POST the signed body, read a capped response.

Every failure becomes an :class:`~relay.retry.AttemptResult` (never an
exception), classified by the error's class name: ``Timeout`` (the
attempt's deadline), ``UnsafeURL`` (the SSRF guard), ``ConnectError``,
``ReadError``, ``RemoteProtocolError``, ``LocalProtocolError``
(:mod:`relay.http`). A 3xx is a failure too: redirects are never followed
(the target would escape the SSRF check and the receiver's idempotency
contract).
"""

from __future__ import annotations

import asyncio
import time

from outbox.relay.http import Client, HTTPError, Response
from outbox.relay.retry import AttemptResult, parse_retry_after
from outbox.relay.ssrf import Network, Resolver, UnsafeURL


def make_client(
    *,
    timeout: float,
    max_connections: int,
    allow: tuple[Network, ...],
    resolver: Resolver | None = None,
) -> Client:
    """The one shared client: keep-alive pool, guarded connects, no redirects, no proxies."""
    return Client(
        allow=allow, resolver=resolver, timeout=timeout, max_idle_per_origin=max_connections
    )


async def post(
    client: Client,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    attempt: int,
    deadline: float,
    body_cap: int,
) -> AttemptResult:
    """POST once; the whole attempt (connect, send, response, body) ends by ``deadline``.

    ``deadline`` is on the event loop clock. Once the response head is in,
    the deadline only cuts the body short: the status stands.
    """
    loop = asyncio.get_running_loop()
    started, t0 = time.time(), loop.time()
    result = AttemptResult(attempt=attempt, started_at=started, duration=0.0)
    try:
        response = await client.post(url, body, headers, deadline=deadline, body_cap=body_cap)
    except TimeoutError:
        result.error_class = "Timeout"
        result.error_message = f"no response within {deadline - t0:.3g}s"
    except UnsafeURL as exc:
        result.error_class = "UnsafeURL"
        result.error_message = exc.reason
    except HTTPError as exc:
        result.error_class = type(exc).__name__
        result.error_message = _text(str(exc)) or type(exc).__name__
    else:
        result.status = response.status
        result.response_headers = {k: _text(v) for k, v in response.headers.items()}
        # A multi-byte character cut by the cap becomes U+FFFD.
        result.body = _text(response.body.decode("utf-8", "replace")) if body_cap > 0 else ""
        _describe_status(result, response)
    result.duration = loop.time() - t0
    return result


def _text(value: str) -> str:
    """Postgres text cannot hold NUL."""
    return value.replace("\x00", "\ufffd")


def _describe_status(result: AttemptResult, response: Response) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    result.error_message = f"HTTP {status}"
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        result.error_message += f": redirect to {_text(location)!r} not followed"
    elif status in (429, 503):
        result.retry_after = parse_retry_after(response.headers.get("retry-after"))
