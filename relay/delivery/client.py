"""The webhook HTTP client: one shared ``httpx.AsyncClient`` on aiohttp's engine.

Every webhook request goes through :func:`make_client`'s ``httpx.AsyncClient``
(the API the rest of the relay speaks: ``httpx.Response``, httpx's exception
tree). Its transport is ``httpx_aiohttp.AiohttpTransport``: aiohttp's
HTTP/1.1 engine (llhttp, C) under the httpx API, several times faster per
request than httpx's default transport (BENCHMARKS.md, B4). On that engine:

* **SSRF at connect** — :class:`GuardedConnector` is aiohttp's
  ``TCPConnector`` whose host resolution (the one place every connection's
  addresses come from, IP literals included) resolves the name once with
  :func:`relay.delivery.ssrf.resolve_checked`, checks every address, and hands aiohttp
  only checked address literals to connect to. TLS is verified against the
  URL's host name (aiohttp passes it as ``server_hostname``), with certifi's
  CAs and the system's.
* **No state from receivers** — no cookies are kept (aiohttp's and httpx's
  jars both discard them).
* **Bounded responses** — a response head of more than :data:`MAX_HEADERS`
  fields or a line over :data:`MAX_LINE` bytes is refused by the parser
  (:class:`ResponseHeadTooLarge`); bodies are streamed by the caller and
  read only up to its limit (:mod:`relay.delivery.attempt`); no content decoding
  (no ``Accept-Encoding`` is sent), no cookies kept, no redirects followed.
* **One response per request** — bytes a server sends while no request of
  ours is outstanding (before the request, or a stray second response on an
  idle keep-alive connection) are never taken as the answer to the next
  request: :class:`UnsolicitedResponse`, and the connection is closed. A
  second response pipelined behind the first closes the connection too.
* **Egress proxy** — with ``OUTBOX_WEBHOOK_PROXY`` every request goes
  through it (``CONNECT`` for https); the proxy's own address is operator
  configuration and is not checked, and webhook hosts are not resolved
  here at all: the proxy resolves and connects (docs/webhooks.md).

aiohttp's errors are translated into httpx's classes (plus the subclasses
below), since the class name is what an attempt row stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from aiohttp import client_exceptions, http_exceptions
from aiohttp.abc import ResolveResult
from aiohttp.client_proto import ResponseHandler
from httpx_aiohttp import AiohttpTransport

from outbox import __version__
from outbox.relay.delivery.ssrf import Network, Resolver, UnsafeURL, resolve_checked, system_resolve

USER_AGENT = f"outbox-relay/{__version__}"
#: Idle connections older than this are closed rather than reused: below the
#: 5 s keep-alive timeout of common servers (Node.js), so we rarely reuse a
#: connection the server is closing at that very moment.
KEEPALIVE_EXPIRY = 4.0
#: Response head limits (hyper allows 100 headers; aiohttp's line default).
MAX_HEADERS = 100
MAX_LINE = 8190


class ResponseHeadTooLarge(httpx.RemoteProtocolError):
    """The response head has more fields, or longer lines, than the limits allow."""


class ResponseTooLarge(httpx.RemoteProtocolError):
    """The response body is longer than the relay reads."""


class UnsolicitedResponse(httpx.RemoteProtocolError):
    """The server sent bytes while no request of ours was outstanding."""


def default_ssl_context() -> ssl.SSLContext:
    """Certificate and host name verification; certifi's CAs as httpx uses, plus the system's."""
    context = ssl.create_default_context()
    with contextlib.suppress(ImportError, OSError):
        import certifi

        context.load_verify_locations(certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


class _WatchedTransport:
    """The connection's transport, noting when a request was written to it."""

    __slots__ = ("_handler", "_transport")

    def __init__(self, transport: asyncio.Transport, handler: _GuardedHandler) -> None:
        self._transport = transport
        self._handler = handler

    def write(self, data: Any) -> None:
        self._handler.request_written = True
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self._handler.request_written = True
        self._transport.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _GuardedHandler(ResponseHandler):
    """aiohttp's connection protocol, refusing bytes that come before the request.

    A response is only taken as the answer to a request once that request was
    written: bytes that arrive earlier (on a fresh connection) fail the
    request with :class:`UnsolicitedResponse`; bytes that arrive after the
    response was read to its end (a stray response on an idle keep-alive
    connection) close the connection, so no later request can take them.
    """

    request_written = False
    _early = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        watched = _WatchedTransport(transport, self)  # type: ignore[arg-type]
        super().connection_made(watched)  # type: ignore[arg-type]

    def set_response_params(self, **kwargs: Any) -> None:
        # Called once per request, after the connection was taken from the pool
        # (and for a proxy's CONNECT, after that request was written). Bytes
        # that came while nothing was written to this connection came unasked.
        stray = self._early or (
            not self.request_written and (bool(self._tail) or bool(self._buffer))
        )
        self._payload = None  # the previous response's (read to its end)
        super().set_response_params(**kwargs)
        if stray:
            self._unsolicited()

    def data_received(self, data: bytes) -> None:
        if not data:
            super().data_received(data)
        elif not self.request_written:
            # Before our request: dropped, and the request it would answer fails.
            self._early = True
            if self._parser is not None:
                self._unsolicited()
        elif self._answered():
            # After the response, on an idle connection: it must not be reused.
            self._unsolicited()
            if self.transport is not None:
                self.transport.close()
        else:
            super().data_received(data)

    def _answered(self) -> bool:
        """The response was read to its end: the connection is (about to be) idle."""
        payload = self._payload
        return payload is not None and payload.is_eof() and not self._buffer

    def _unsolicited(self) -> None:
        # The waiting (or next) request fails; aiohttp closes the connection
        # instead of pooling it (set_exception marks it should_close).
        self._buffer.clear()
        self._tail = b""
        self.set_exception(
            UnsolicitedResponse("the server sent a response before the request was sent")
        )


class GuardedConnector(aiohttp.TCPConnector):
    """``TCPConnector`` that connects only to checked addresses (see the module docstring)."""

    def __init__(
        self,
        *,
        allow: Iterable[Network],
        resolver: Resolver | None = None,
        proxy_host: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(use_dns_cache=False, **kwargs)
        self._allow = tuple(allow)
        self._checked_resolver = resolver
        self._proxy_host = proxy_host
        self._factory = functools.partial(_GuardedHandler, loop=self._loop)  # type: ignore[assignment]

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> list[ResolveResult]:
        if self._proxy_host is not None and host == self._proxy_host:
            # The operator's proxy: configuration, not a webhook URL.
            names = await system_resolve(host)
            return [_result(host, a, port) for a in dict.fromkeys(names)]
        addresses = await resolve_checked(host, self._allow, self._checked_resolver)
        return [_result(host, str(a), port) for a in addresses]


def _result(host: str, address: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return {
        "hostname": host,
        "host": address,
        "port": port,
        "family": family,
        "proto": 0,
        "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    }


# --- aiohttp errors as httpx's ---------------------------------------------------------


def _cause_chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def translate(exc: BaseException, request: httpx.Request | None = None) -> BaseException:
    """The httpx exception (or :class:`UnsafeURL`) that names what went wrong."""
    chain = list(_cause_chain(exc))
    for e in chain:
        if isinstance(e, UnsafeURL | UnsolicitedResponse | ResponseHeadTooLarge):
            return e
    for e in chain:
        text = str(e) or type(e).__name__
        if isinstance(e, http_exceptions.LineTooLong) or (
            isinstance(
                e, http_exceptions.HttpProcessingError | client_exceptions.ClientResponseError
            )
            and ("Too many headers" in text or "Got more than" in text)
        ):
            return ResponseHeadTooLarge(text, request=request)
        if isinstance(
            e, client_exceptions.ClientHttpProxyError | client_exceptions.ClientProxyConnectionError
        ):
            return httpx.ProxyError(text, request=request)
        if isinstance(e, client_exceptions.ClientConnectorError):  # refused, DNS, TLS
            return httpx.ConnectError(text, request=request)
        if isinstance(e, client_exceptions.ServerDisconnectedError):
            return httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        if isinstance(
            e, http_exceptions.HttpProcessingError | client_exceptions.ClientResponseError
        ):
            return httpx.RemoteProtocolError(f"invalid HTTP response: {text}", request=request)
        if isinstance(e, client_exceptions.ClientPayloadError):
            return httpx.ReadError(text, request=request)
        if isinstance(e, client_exceptions.ClientOSError | ConnectionError):
            return httpx.ReadError(text, request=request)
    if isinstance(exc, httpx.HTTPError):
        return exc
    if isinstance(exc, aiohttp.ClientError):
        return httpx.TransportError(str(exc) or type(exc).__name__, request=request)
    if isinstance(exc, ValueError):  # e.g. a header value aiohttp cannot send
        return httpx.LocalProtocolError(str(exc), request=request)
    return exc


class _TranslatedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (aiohttp.ClientError, httpx.HTTPError, OSError) as exc:
            raise translate(exc, self._request) from exc

    async def aclose(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, httpx.HTTPError, OSError):
            await self._inner.aclose()


class GuardedTransport(AiohttpTransport):
    """``AiohttpTransport`` whose errors are httpx's, whatever aiohttp raised."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.userinfo:
            # httpx already sent the userinfo as basic auth; aiohttp refuses both.
            request.url = request.url.copy_with(username=None, password=None)
        try:
            response = await super().handle_async_request(request)
        except (aiohttp.ClientError, httpx.HTTPError, OSError, ValueError) as exc:
            raise translate(exc, request) from exc
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        response.stream = _TranslatedStream(stream, request)
        return response


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: a receiver's ``Set-Cookie`` is never
    stored (a receiver must not grow the relay's memory with cookies, nor
    have them sent back), and the per-response parsing is skipped."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def make_client(
    *,
    max_connections: int,
    allow: Iterable[Network],
    resolver: Resolver | None = None,
    proxy: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    keepalive_expiry: float = KEEPALIVE_EXPIRY,
    user_agent: str = USER_AGENT,
) -> httpx.AsyncClient:
    """The one shared webhook client: guarded connects, no redirects, bounded heads.

    No timeout is set here: the caller bounds each whole attempt by one deadline.
    """
    allow = tuple(allow)
    context = ssl_context or default_ssl_context()
    proxy_host = urlsplit(proxy).hostname if proxy else None

    def session() -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop.
        connector = GuardedConnector(
            allow=allow,
            resolver=resolver,
            proxy_host=proxy_host,
            ssl=context,
            limit=max_connections,
            limit_per_host=0,
            keepalive_timeout=keepalive_expiry,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept-Encoding", "Accept", "User-Agent"),
            auto_decompress=False,
            trust_env=False,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    transport = GuardedTransport(
        client=session,
        proxy=httpx.Proxy(proxy) if proxy else None,
        trust_env=False,
    )
    client = httpx.AsyncClient(
        transport=transport,
        timeout=None,  # noqa: S113  (one deadline per attempt, in relay/delivery/attempt.py)
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": user_agent},
    )
    for name in ("accept", "accept-encoding"):
        client.headers.pop(name, None)
    # httpx has no switch for its cookie persistence; its jar is this attribute.
    client._cookies = _NoCookies()
    return client
