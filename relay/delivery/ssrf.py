"""The SSRF guard: webhook URLs may only reach public addresses.

A webhook URL is chosen by an API user, and the relay POSTs to it from
inside the operator's network, so a URL must not reach loopback, private,
link-local (cloud metadata at 169.254.169.254), CGNAT, multicast, reserved
or unspecified addresses -- unless the operator allowed those networks
(``OUTBOX_WEBHOOK_ALLOW_NETWORKS``).

Two checks, one policy:

* :func:`check_url` at create/update time (the API answers 422 with the
  message of :class:`UnsafeURL`);
* :func:`resolve_checked` at send time, for every new connection of the
  sender's client (:mod:`relay.delivery.client`). Checking a name and then letting the
  HTTP client resolve it again is open to DNS rebinding (the second answer
  may differ), so the client resolves the name through this module, checks
  every address, and connects to a checked address literal. TLS still
  verifies the certificate against the host name.

Names are resolved through :data:`default_resolver` (looked up at call
time), which tests replace so that no lookup leaves the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

import httpx

from outbox.errors import OutboxError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Awaitable[Sequence[str]]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# Host names as DNS knows them (after IDNA); anything else is refused.
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_-]{1,63})*\.?$", re.I
)
# RFC 6761: every name under .localhost is loopback, whatever DNS says.
_LOOPBACK_NAMES = ("127.0.0.1", "::1")
_HINT = "webhook URLs must reach public addresses (or a network in OUTBOX_WEBHOOK_ALLOW_NETWORKS)"


class UnsafeURL(OutboxError):
    """The webhook URL is not allowed: it must be an http(s) URL of a public host."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def system_resolve(host: str) -> list[str]:
    """Resolve ``host`` with the system resolver (getaddrinfo, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


#: The resolver every check uses unless one is passed in; tests replace it.
default_resolver: Resolver = system_resolve


def _resolver(resolver: Resolver | None) -> Resolver:
    # The global is read at call time, so replacing the module attribute takes
    # effect everywhere (the API's create check and the sender's connect).
    return resolver if resolver is not None else default_resolver


def classify(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address, or ``None`` if it is one.

    IPv6 addresses that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
    6to4 ``2002::/16``) are judged by the embedded address as well, since
    that is where a dual-stack socket or a 6to4 relay sends the packets.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            inner = classify(embedded)
            if inner is not None:
                return f"{inner} embedded in an IPv6 address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private or not ip.is_global:
        return "a private or special-purpose address"
    return None


def _allowed(ip: IPAddress, allow: Iterable[Network]) -> bool:
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates += [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    return any(a in net for a in candidates for net in allow if a.version == net.version)


def check_address(ip: IPAddress, allow: Iterable[Network], *, host: str | None = None) -> None:
    """Raise :class:`UnsafeURL` unless ``ip`` is public or inside ``allow``."""
    reason = classify(ip)
    if reason is None or _allowed(ip, allow):
        return
    where = f"host {host} resolves to {ip}, " if host and host != str(ip) else f"address {ip} is "
    raise UnsafeURL(f"{where}{reason}; {_HINT}")


def split_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, or :class:`UnsafeURL`."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeURL(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        shown = parsed.scheme or "none"
        raise UnsafeURL(f"URL scheme must be http or https, not {shown}")
    host = parsed.host
    if not host:
        raise UnsafeURL("URL has no host")
    if ":" not in host and not _HOSTNAME_RE.match(host):
        raise UnsafeURL(f"URL host {host!r} is not a valid host name")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, host, port


def literal_address(host: str) -> IPAddress | None:
    """The address if ``host`` is an IP literal; refuse other numeric forms.

    ``getaddrinfo`` accepts legacy IPv4 spellings such as ``2130706433``,
    ``0x7f.1`` or ``017700000001`` (all 127.0.0.1). Rather than interpret
    them the same way every time, they are refused outright.
    """
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return None
    raise UnsafeURL(
        f"host {host} is a numeric address in a non-standard form "
        f"(= {ipaddress.IPv4Address(packed)}); write IPv4 addresses as four decimal numbers"
    )


def _is_localhost(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


async def resolve_checked(
    host: str, allow: Iterable[Network], resolver: Resolver | None = None
) -> list[IPAddress]:
    """Resolve ``host`` and check every address; return them, deduplicated, in order.

    A name with even one unsafe address is refused: the client could connect
    to any of them. Resolution failures propagate as :class:`OSError`.
    """
    allow = tuple(allow)
    literal = literal_address(host)
    if literal is not None:
        check_address(literal, allow)
        return [literal]
    names = _LOOPBACK_NAMES if _is_localhost(host) else await _resolver(resolver)(host)
    addresses: list[IPAddress] = []
    for text in names:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        check_address(ip, allow, host=host)
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise OSError(f"{host} has no addresses")
    return addresses


async def check_url(
    url: str, allow_networks: Iterable[Network], *, resolver: Resolver | None = None
) -> None:
    """Raise :class:`UnsafeURL` if ``url`` must not be used as a webhook URL.

    A name that does not resolve (yet) is accepted: it cannot reach anything
    now, and every send checks the addresses it connects to.
    """
    _, host, _ = split_url(url)
    try:
        await resolve_checked(host, allow_networks, resolver)
    except OSError:
        return
