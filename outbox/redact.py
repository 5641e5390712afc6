"""Hide secrets in text that is about to be logged (or shown).

What counts as a secret, wherever it appears in the text:

* the value of a credential header: ``authorization``, ``x-api-key``,
  ``sec-websocket-protocol``, ``cookie`` (as ``name: value``, ``name=value``
  or a Python repr such as ``(b'authorization', b'Bearer ...')``);
* the value of a query parameter whose *decoded* name is a credential
  (``token``, ``api_key``, ...): Starlette decodes ``%74oken`` to ``token``
  and accepts it, so the redaction must decode too;
* a libpq conninfo ``password=...``;
* the password in a URL's userinfo (``amqp://user:PASSWORD@host``, a sink or
  a database URL), and the whole userinfo of URLs whose schemes carry a
  bare token there (``nats://TOKEN@host``);
* anything shaped like a token or a webhook secret of ours (``obx_...``,
  ``whsec_...``), and any literal value registered with :func:`redact`'s
  ``literals`` (the bootstrap ``OUTBOX_API_TOKEN``, which has no shape).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

MASK = "***"

SECRET_HEADERS = ("authorization", "x-api-key", "sec-websocket-protocol", "cookie", "set-cookie")
SECRET_QUERY_KEYS = frozenset(
    {"token", "api_key", "apikey", "api-key", "access_token", "secret", "password"}
)

_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:" + "|".join(re.escape(h) for h in SECRET_HEADERS) + r"))"
    r"(?P<sep>['\"]?\s*(?:[:=]|,\s*b?['\"])\s*)"
    r"(?P<value>[^'\"\r\n]*)"
)
_QUERY = re.compile(r"(?P<lead>[?&;])(?P<key>[^=&;#\s\"'?]+)=(?P<value>[^&;#\s\"']*)")
_USERINFO = re.compile(
    r"(?i)(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^:/?#@\s\"']*)"
    r"(?::(?P<password>[^/?#@\s\"']*))?@"
)
_CONNINFO = re.compile(
    r"(?i)\b(?P<key>password|passwd)(?P<sep>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s'\"]+)"
)
_TOKEN_SCHEMES = ("nats", "tls", "redis", "rediss")
_SHAPED = re.compile(r"\b(?:obx|whsec)_[A-Za-z0-9+/=_-]{8,}")


def _header(m: re.Match[str]) -> str:
    return m.group("name") + m.group("sep") + MASK


def _query(m: re.Match[str]) -> str:
    key = unquote_plus(m.group("key")).strip().lower()
    if key in SECRET_QUERY_KEYS and m.group("value"):
        return f"{m.group('lead')}{m.group('key')}={MASK}"
    return m.group(0)


def _userinfo(m: re.Match[str]) -> str:
    scheme, user, password = m.group("scheme"), m.group("user"), m.group("password")
    if password is not None:
        return f"{scheme}{user}:{MASK}@"
    if user and scheme[:-3].lower() in _TOKEN_SCHEMES:
        return f"{scheme}{MASK}@"
    return m.group(0)


def redact(text: str, literals: Iterable[str] = ()) -> str:
    """``text`` with every secret it contains replaced by ``***``."""
    for literal in literals:
        if literal and len(literal) >= 4 and literal in text:
            text = text.replace(literal, MASK)
    if "://" in text:
        text = _USERINFO.sub(_userinfo, text)
    if "=" in text:
        text = _QUERY.sub(_query, text)
        text = _CONNINFO.sub(lambda m: m.group("key") + m.group("sep") + MASK, text)
    text = _HEADER.sub(_header, text)
    return _SHAPED.sub(MASK, text)


def redact_url(url: str) -> str:
    """A URL fit to show: its password (or bare token) replaced by ``***``."""
    return redact(url)
