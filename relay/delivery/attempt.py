"""One webhook HTTP attempt: POST the signed body, stream a bounded response.

The request goes through the shared ``httpx.AsyncClient`` of
:mod:`relay.delivery.client`. The response is streamed: the first
``body_cap`` bytes are kept (what the delivery row stores), and the body is
read to its end only up to ``read_limit`` bytes, so the connection can be
kept alive and the response is known to be complete. One deadline bounds
the whole attempt, from resolving the name to the last body byte.

Success is a complete, valid 2xx. Everything else becomes a failed
:class:`~relay.delivery.retry.AttemptResult` (never an exception), classified by
class name: ``Timeout`` (the deadline, also when the head arrived but the
body did not finish), ``UnsafeURL`` (the SSRF guard), ``ResponseTooLarge``
(body over ``read_limit``), ``ResponseHeadTooLarge``, ``UnsolicitedResponse``
(:mod:`relay.delivery.client`) or httpx's ``ConnectError``, ``ReadError``,
``RemoteProtocolError``, ``LocalProtocolError``, ``ProxyError``. A 3xx is a
failure too: redirects are never followed (the target would escape the SSRF
check and the receiver's idempotency contract).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx

from outbox.relay.delivery.client import ResponseTooLarge, translate
from outbox.relay.delivery.retry import AttemptResult, parse_retry_after
from outbox.relay.delivery.ssrf import UnsafeURL

#: The most of a response body that is read (and discarded past the stored cap).
READ_LIMIT = 1024 * 1024
#: aiohttp (under httpx-aiohttp) warns that a ``bytes`` body over 1 MiB "might
#: lock the event loop" (a ResourceWarning). Such a body is handed over as a
#: stream with its length instead: the same bytes on the wire, no warning.
_LARGE_BODY = 1024 * 1024
_MAX_URLS = 10_000
_urls: dict[str, httpx.URL] = {}


async def _one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _url(url: str) -> httpx.URL:
    """``url`` parsed once (httpx would parse the string on every request)."""
    parsed = _urls.get(url)
    if parsed is None:
        if len(_urls) >= _MAX_URLS:
            _urls.clear()
        parsed = _urls[url] = httpx.URL(url)
    return parsed


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    attempt: int,
    deadline: float,
    body_cap: int,
    read_limit: int = READ_LIMIT,
    age: float = 0.0,
) -> AttemptResult:
    """POST once; the whole attempt (connect, send, response, body) ends by ``deadline``.

    ``deadline`` is on the event loop clock; ``age`` is the delivery's age
    at the start (seconds since its event), kept on the result for the policy.
    """
    loop = asyncio.get_running_loop()
    started, t0 = time.time(), loop.time()
    result = AttemptResult(attempt=attempt, started_at=started, duration=0.0)
    kept = bytearray()
    content: bytes | AsyncIterator[bytes] = body
    if len(body) > _LARGE_BODY:
        content = _one_chunk(body)
        headers = {**headers, "Content-Length": str(len(body))}
    try:
        async with asyncio.timeout_at(deadline):
            request = client.stream("POST", _url(url), content=content, headers=headers)
            async with request as response:
                result.status = response.status_code
                result.response_headers = {k: _text(v) for k, v in response.headers.items()}
                if response.status_code in (429, 503):
                    result.retry_after = parse_retry_after(response.headers.get("retry-after"))
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if len(kept) < body_cap:
                        kept += chunk[: body_cap - len(kept)]
                    if received > read_limit:
                        raise ResponseTooLarge(
                            f"response body longer than {read_limit} bytes", request=None
                        )
    except TimeoutError:
        result.error_class = "Timeout"
        what = "response body incomplete" if result.status is not None else "no response"
        result.error_message = f"{what} within {deadline - t0:.3g}s"
    except UnsafeURL as exc:
        result.error_class = "UnsafeURL"
        result.error_message = exc.reason
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        error = translate(exc)
        result.error_class = type(error).__name__
        result.error_message = _text(str(error)) or result.error_class
        if isinstance(error, UnsafeURL):
            result.error_message = error.reason
    if result.status is not None and body_cap > 0:
        # A multi-byte character cut by the cap becomes U+FFFD.
        result.body = _text(bytes(kept).decode("utf-8", "replace"))
    elif result.status is not None:
        result.body = ""
    if result.status is not None and result.error_class is None:
        _describe_status(result, response)
    elif result.status is not None and result.error_message:
        result.error_message = f"HTTP {result.status}, then: {result.error_message}"
    result.duration = loop.time() - t0
    result.age = age + result.duration
    return result


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
