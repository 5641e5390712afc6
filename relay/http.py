"""A lean HTTP/1.1 client for webhook POSTs, on the running event loop.

Why not httpx here: at a few hundred requests/s per core, httpx, httpcore
and h11 spent more CPU per request than everything else the sender does
(BENCHMARKS.md, B4). A webhook attempt needs a small subset of HTTP/1.1:
one ``POST`` with a ``Content-Length`` body, a response parsed by
``httptools`` (llhttp, C), a capped body, keep-alive. This module does only
that:

* an :class:`asyncio.Protocol` per connection, the request written in one
  ``write`` (``TCP_NODELAY``), the response parsed as it arrives;
* per origin (scheme, host, port) a stack of idle keep-alive connections:
  last used first, so surplus connections age out (``keepalive_expiry``);
  a connection goes back on the stack only after its whole response was
  read and neither side asked to close it;
* an idle connection the server closed is noticed before anything is
  written to it, and a fresh connection is used instead; once a byte of the
  request was written, a failure is the attempt's (the server may have
  acted on it), never silently retried;
* the whole request, from resolving the name to the last body byte, ends by
  one deadline; after the response head arrived, the deadline (or a broken
  connection) only cuts the body short;
* the SSRF guarantee: every new connection resolves the host once with
  :func:`relay.ssrf.resolve_checked` (every address checked) and connects to
  a checked address literal; TLS verifies the certificate for the host name;
* no redirects followed, no proxies, no content decoding (no
  ``Accept-Encoding`` is sent).

Errors: :class:`TimeoutError` (deadline), :class:`~relay.ssrf.UnsafeURL`,
or an :class:`HTTPError` subclass, named like httpx's (``ConnectError``,
``ReadError``, ``RemoteProtocolError``, ``LocalProtocolError``), since the
class name is what an attempt row stores.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import socket
import ssl
from dataclasses import dataclass

import httptools
import httpx

from outbox import __version__
from outbox.relay.ssrf import Network, Resolver, resolve_checked, split_url

USER_AGENT = f"outbox-relay/{__version__}"
#: Idle connections older than this are closed rather than reused: below the
#: 5 s keep-alive timeout of common servers (Node.js), so we rarely reuse a
#: connection the server is closing at that very moment.
KEEPALIVE_EXPIRY = 4.0
_MAX_TARGETS = 10_000  # parsed URLs kept


class HTTPError(Exception):
    """A request failed (besides the deadline and the SSRF guard)."""


class ConnectError(HTTPError):
    """No connection: the name does not resolve, refused, unreachable, TLS failed."""


class ReadError(HTTPError):
    """The connection broke before the response head was complete."""


class RemoteProtocolError(HTTPError):
    """The server closed without a response, or sent something that is not HTTP/1.1."""


class LocalProtocolError(HTTPError):
    """The request cannot be sent as given (a header value with a line break)."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated fields joined with ", "
    body: bytes  # at most the body cap
    complete: bool  # the whole body was read


@dataclass(frozen=True, slots=True)
class _Target:
    """What a URL resolves to once: origin and the fixed part of the request head."""

    scheme: str
    host: str
    port: int
    head: bytes  # request line, Host, Authorization (from userinfo), User-Agent


def _parse_target(url: str, user_agent: str) -> _Target:
    # split_url is the create-time check's parser too, so both judge the same host.
    scheme, host, port = split_url(url)
    parsed = httpx.URL(url)
    lines = [
        f"POST {parsed.raw_path.decode('ascii')} HTTP/1.1",
        f"host: {parsed.netloc.decode('ascii')}",
    ]
    if parsed.username or parsed.password:
        # As httpx did: userinfo in the URL is sent as basic auth.
        basic = base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode()
        lines.append(f"authorization: Basic {basic}")
    lines.append(f"user-agent: {user_agent}")
    head = ("\r\n".join(lines) + "\r\n").encode("ascii")
    return _Target(scheme, host, port, head)


def _header_block(headers: dict[str, str], length: int) -> bytes:
    parts = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise LocalProtocolError(f"header {name!r} cannot be sent: it has a line break")
        parts.append(f"{name}: {value}\r\n")
    parts.append(f"content-length: {length}\r\n\r\n")
    try:
        return "".join(parts).encode("ascii")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"header values must be ASCII: {exc}") from None


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one exchange at a time, parsed with httptools."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.usable = True  # open, and nothing unexpected seen
        self.idle_since = 0.0
        self._active = False
        self._waiter: asyncio.Future[None] | None = None
        self._want_head = True
        self._reset(0)

    def _reset(self, cap: int) -> None:
        self._cap = cap
        self._status = 0
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._received = 0
        self._got_bytes = False
        self._informational = False
        self._head_done = False
        self._complete = False  # the response message ended
        self._finished = False  # no more reading: complete, capped, closed or timed out
        self._keep_alive = False
        self._error: BaseException | None = None

    # --- the exchange --------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return self.usable and self._complete and self._keep_alive and self._error is None

    async def exchange(self, request: bytes, deadline: float, cap: int) -> Response:
        """Write ``request``; the response head must arrive by ``deadline``."""
        assert self._transport is not None
        self._reset(cap)
        self._active = True
        timer = self._loop.call_at(deadline, self._expire)
        try:
            self._transport.write(request)
            await self._wait(head=True)
            if self._error is not None:
                raise self._error
            if not self._finished:
                # A slow or broken body ends the read, not the attempt.
                await self._wait(head=False)
        finally:
            timer.cancel()
            self._active = False
        return Response(self._status, self._headers(), bytes(self._body), self._complete)

    async def _wait(self, *, head: bool) -> None:
        if self._error is not None or self._finished or (head and self._head_done):
            return
        self._want_head = head
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._error is not None or self._finished or (self._want_head and self._head_done):
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self.usable = False
        if self._head_done:
            self._finished = True  # what arrived of the body stands
        elif self._error is None:
            self._error = error

    def _expire(self) -> None:
        if self._active and not self._finished:
            self._fail(TimeoutError())
            self._wake()

    def _headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for raw_name, raw_value in self._raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self._active or self._finished:
            # Nothing asked for this (or after the response): not HTTP as we know it.
            self.usable = False
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"invalid HTTP response: {exc}"))
        if self._head_done and not self._finished and self._received >= self._cap:
            # Capped: the rest of the body is not read, so the connection is not reused.
            self._finished = True
            self.usable = False
        self._wake()

    def eof_received(self) -> bool:
        self.usable = False
        if self._active and not self._finished:
            self._fail(RemoteProtocolError("Server disconnected without sending a response."))
            self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        if self._active and not self._finished:
            if exc is None:
                self._fail(RemoteProtocolError("Server disconnected without sending a response."))
            else:
                self._fail(ReadError(str(exc) or type(exc).__name__))
            self._wake()

    # --- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self.usable = False  # a second response to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx (100 Continue, 103 Early Hints): the real response follows.
            self._informational = True
            self._raw_headers = []
            return
        self._status = status
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        room = self._cap - len(self._body)
        if room > 0:
            self._body += body[:room]
        self._received += len(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._complete = self._finished = True
        self._keep_alive = self._parser.should_keep_alive()


class Client:
    """POSTs with keep-alive connections per origin; see the module docstring."""

    def __init__(
        self,
        *,
        allow: tuple[Network, ...],
        resolver: Resolver | None = None,
        timeout: float = 15.0,
        max_idle_per_origin: int = 64,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.timeout = timeout
        self._allow = allow
        self._resolver = resolver
        self._max_idle = max_idle_per_origin
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._user_agent = user_agent
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._swept_at = 0.0

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for stack in idle.values():
            for conn in stack:
                conn.close()

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        deadline: float | None = None,
        body_cap: int = 4096,
    ) -> Response:
        """POST ``body``; ``deadline`` (event loop clock) bounds the whole request.

        ``headers`` must not contain ``Host``, ``Content-Length`` or
        ``User-Agent``: the client writes those.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is None:
            deadline = now + self.timeout
        target = self._targets.get(url)
        if target is None:
            target = self._target(url)
        request = target.head + _header_block(headers, len(body)) + body
        key = (target.scheme, target.host, target.port)
        conn = self._checkout(key, now)
        if conn is None:
            conn = await self._connect(loop, target, deadline)
        try:
            response = await conn.exchange(request, deadline, body_cap)
        except BaseException:
            conn.close()
            raise
        if conn.reusable:
            self._checkin(key, conn, loop.time())
        else:
            conn.close()
        return response

    def _target(self, url: str) -> _Target:
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()
        target = self._targets[url] = _parse_target(url, self._user_agent)
        return target

    def _checkout(self, key: tuple[str, str, int], now: float) -> _Connection | None:
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            # usable: the loop has not reported a close, EOF or stray bytes.
            if conn.usable and now - conn.idle_since < self._expiry:
                return conn
            conn.close()
        return None

    def _checkin(self, key: tuple[str, str, int], conn: _Connection, now: float) -> None:
        if now - self._swept_at >= self._expiry:
            self._sweep(now)
        stack = self._idle.get(key)
        if stack is None:
            stack = self._idle[key] = collections.deque()
        if len(stack) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = now
        stack.append(conn)

    def _sweep(self, now: float) -> None:
        """Close expired idle connections of every origin (the oldest are at the bottom)."""
        self._swept_at = now
        for key, stack in list(self._idle.items()):
            while stack and (not stack[0].usable or now - stack[0].idle_since >= self._expiry):
                stack.popleft().close()
            if not stack:
                del self._idle[key]

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, target: _Target, deadline: float
    ) -> _Connection:
        tls: ssl.SSLContext | None = None
        if target.scheme == "https":
            tls = self._ssl = self._ssl or default_ssl_context()
        async with asyncio.timeout_at(deadline):
            try:
                addresses = await resolve_checked(target.host, self._allow, self._resolver)
            except OSError as exc:
                raise ConnectError(f"cannot resolve {target.host}: {exc}") from exc
            error: OSError | None = None
            for ip in addresses:
                try:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop),
                        host=str(ip),
                        port=target.port,
                        ssl=tls,
                        server_hostname=target.host if tls is not None else None,
                    )
                except OSError as exc:  # refused, unreachable, TLS (ssl.SSLError)
                    error = exc
                    continue
                return conn
        assert error is not None
        raise ConnectError(str(error) or type(error).__name__) from error


def default_ssl_context() -> ssl.SSLContext:
    """Certificate and host name verification; certifi's CAs as httpx used, plus the system's."""
    context = ssl.create_default_context()
    with contextlib.suppress(ImportError, OSError):
        import certifi

        context.load_verify_locations(certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context
