"""Per-webhook custom request headers (``"headers": {...}``): what may be set.

A webhook may carry headers the receiver wants on every request (an
``Authorization`` for its gateway, a routing key). They are sent with every
attempt, before the relay's own headers. Refused, with a message naming the
header:

* hop-by-hop headers (RFC 9110 §7.6.1) and ``Host``: the connection and its
  routing are the client's;
* ``Content-*``: the body is the relay's (its type, length and encoding);
* the signature and identity headers — ``X-Webhook-*`` (the seed's),
  ``webhook-*`` (Standard Webhooks) — and the trace context
  (``traceparent``, ``tracestate``): a receiver must be able to trust them.

Names must be HTTP tokens, values visible ASCII (no line breaks); at most
:data:`MAX_HEADERS` headers of bounded size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_HEADERS = 32
MAX_NAME = 100
MAX_VALUE = 4096

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VALUE_RE = re.compile(r"^[\x20-\x7e\t]*$")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_RESERVED = frozenset({"traceparent", "tracestate"})
_RESERVED_PREFIXES = ("content-", "x-webhook-", "webhook-")


def refusal(name: str, value: str) -> str | None:
    """Why header ``name: value`` may not be a webhook's custom header, or ``None``."""
    low = name.lower()
    if not _TOKEN_RE.match(name) or len(name) > MAX_NAME:
        return f"header name {name!r} is not a valid HTTP header name"
    if low in HOP_BY_HOP:
        return f"header {name!r} is a hop-by-hop header; the relay's HTTP client sets it"
    if low.startswith("content-"):
        return f"header {name!r}: Content-* headers describe the body, which the relay sets"
    if low in _RESERVED or low.startswith(_RESERVED_PREFIXES):
        return f"header {name!r} is set by the relay (signature, identity or trace headers)"
    if not _VALUE_RE.match(value) or len(value) > MAX_VALUE:
        return (
            f"header {name!r}: the value must be visible ASCII without line breaks,"
            f" at most {MAX_VALUE} characters"
        )
    return None


def check(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` if every one may be sent; else :class:`ValueError` naming the first refused."""
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, value in headers.items():
        reason = refusal(name, value)
        if reason is not None:
            raise ValueError(reason)
        if name.lower() in seen:
            raise ValueError(f"header {name!r} is given twice (names are case-insensitive)")
        seen.add(name.lower())
    return dict(headers)
