"""One webhook HTTP attempt: POST the signed body, read a capped response.

Every failure becomes an :class:`~relay.retry.AttemptResult` (never an
exception), classified on httpx's exception tree: timeouts, connection
errors, protocol errors, the SSRF guard's refusal. A 3xx is a failure too:
redirects are never followed (the target would escape the SSRF check and
the receiver's idempotency contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import cast

import httpx

from outbox import __version__
from relay.retry import AttemptResult, parse_retry_after
from relay.ssrf import Network, Resolver, UnsafeURL, guarded_transport

USER_AGENT = f"outbox-relay/{__version__}"


def make_client(
    *,
    timeout: float,
    max_connections: int,
    allow: tuple[Network, ...],
    resolver: Resolver | None = None,
) -> httpx.AsyncClient:
    """The one shared client: keep-alive pool, guarded connects, no redirects, no proxies."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        transport=guarded_transport(allow, limits=limits, resolver=resolver),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": USER_AGENT},
    )


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    attempt: int,
    deadline: float,
    body_cap: int,
) -> AttemptResult:
    """POST once; the whole attempt (connect, send, response, body) ends by ``deadline``.

    ``deadline`` is on the event loop clock. httpx's own timeouts apply per
    read, so a receiver dripping an endless body would never trip them; the
    deadline bounds the attempt as a whole.
    """
    loop = asyncio.get_running_loop()
    started, t0 = time.time(), loop.time()
    result = AttemptResult(attempt=attempt, started_at=started, duration=0.0)
    try:
        async with asyncio.timeout_at(deadline):
            request = client.build_request("POST", url, content=body, headers=headers)
            response = await client.send(request, stream=True)
        try:
            result.status = response.status_code
            result.body = await _read_capped(response, body_cap, deadline)
        finally:
            await response.aclose()
        _describe_status(result, response)
    except TimeoutError:
        result.error_class = "Timeout"
        result.error_message = f"no response within {deadline - t0:.3g}s"
    except UnsafeURL as exc:
        result.error_class = "UnsafeURL"
        result.error_message = exc.reason
    except httpx.HTTPError as exc:
        result.error_class = type(exc).__name__
        result.error_message = _text(str(exc)) or type(exc).__name__
    result.duration = loop.time() - t0
    return result


async def _read_capped(response: httpx.Response, cap: int, deadline: float) -> str:
    """At most ``cap`` bytes of the body; a slow or broken body ends the read, not the attempt."""
    if cap <= 0:
        return ""
    data = bytearray()
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout_at(deadline):
            # aclosing: stop the body iterator at once when we break off early.
            chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    data += chunk
                    if len(data) >= cap:
                        break
    # A multi-byte character cut by the cap becomes U+FFFD.
    return _text(bytes(data[:cap]).decode("utf-8", "replace"))


def _text(value: str) -> str:
    """Postgres text cannot hold NUL."""
    return value.replace("\x00", "\ufffd")


def _describe_status(result: AttemptResult, response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    result.error_message = f"HTTP {status}"
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        result.error_message += f": redirect to {_text(location)!r} not followed"
    elif status in (429, 503):
        result.retry_after = parse_retry_after(response.headers.get("retry-after"))
