"""The SSRF guard: the URL table of issue 5, and the send-time check.

Names resolve through a patched resolver (a dict), so no lookup leaves the
machine; the only traffic is to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence

import httpx
import pytest

from outbox.relay.delivery import ssrf
from outbox.relay.delivery.client import make_client
from outbox.relay.delivery.ssrf import UnsafeURL, check_url
from tests.support.receivers import running

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
PRIVATE_10 = (ipaddress.ip_network("10.0.0.0/8"),)

DNS = {
    "internal.example": ["10.1.2.3"],
    "public.example": ["93.184.216.34"],
    "mixed.example": ["93.184.216.34", "192.168.1.10"],
    "hooks.test": ["127.0.0.1"],
}


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the resolver with the DNS table; record every name asked."""
    asked: list[str] = []

    async def resolve(host: str) -> Sequence[str]:
        asked.append(host)
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return DNS[host]

    monkeypatch.setattr(ssrf, "default_resolver", resolve)
    return asked


REFUSED = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback address embedded in an IPv6"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.0.0.1/hook", "private"),
    ("http://100.64.0.1/hook", "carrier-grade NAT"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://[::]/hook", "unspecified"),
    ("http://2130706433/hook", "non-standard form (= 127.0.0.1)"),
    ("http://0x7f.1/hook", "non-standard form (= 127.0.0.1)"),
    ("http://localhost:8080/hook", "loopback"),
    ("http://api.localhost/hook", "loopback"),
    ("http://internal.example/hook", "internal.example resolves to 10.1.2.3"),
    ("http://mixed.example/hook", "resolves to 192.168.1.10"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://240.0.0.1/hook", "reserved"),
    ("http://[2002:a00:1::]/hook", "private or special-purpose address embedded"),
    ("http://[fe80::1]/hook", "link-local"),
    ("ftp://public.example/file", "scheme must be http or https, not ftp"),
    ("file:///etc/passwd", "scheme must be http or https, not file"),
    ("javascript:alert(1)", "scheme must be http or https"),
    ("http:///hook", "no host"),
    ("http://exa mple.com/", "not a valid host name"),
    ("http://[not-ipv6]/", "not a valid URL"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED, ids=[u for u, _ in REFUSED])
async def test_refused_when_not_allowlisted(lookups: list[str], url: str, why: str) -> None:
    with pytest.raises(UnsafeURL) as info:
        await check_url(url, ())
    assert why in str(info.value)


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://127.0.0.1:9/hook", LOOPBACK),
        ("http://[::1]/hook", LOOPBACK),
        ("http://[::ffff:127.0.0.1]/hook", LOOPBACK),
        ("http://localhost/hook", LOOPBACK),
        ("http://10.0.0.1/hook", PRIVATE_10),
        ("http://internal.example/hook", PRIVATE_10),
        ("https://public.example/hook", ()),
        ("https://93.184.216.34/hook", ()),
        ("https://[2606:4700::1111]/hook", ()),
    ],
)
async def test_allowed(lookups: list[str], url: str, allow: tuple[ssrf.Network, ...]) -> None:
    await check_url(url, allow)


async def test_literals_are_not_looked_up(lookups: list[str]) -> None:
    for url in ("http://127.0.0.1/", "http://[::1]/", "http://2130706433/", "http://localhost/"):
        with pytest.raises(UnsafeURL):
            await check_url(url, ())
    assert lookups == []


async def test_non_standard_numeric_host_refused_even_if_allowlisted(lookups: list[str]) -> None:
    with pytest.raises(UnsafeURL, match="non-standard"):
        await check_url("http://2130706433/", LOOPBACK)


async def test_unresolvable_name_is_accepted_at_create(lookups: list[str]) -> None:
    # It reaches nothing today; the send-time check covers it if it ever resolves.
    await check_url("https://not-yet.example/hook", ())
    assert lookups == ["not-yet.example"]


def _client(allow: tuple[ssrf.Network, ...]) -> httpx.AsyncClient:
    """The sender's client (relay/delivery/client.py): its connector does the check."""
    return make_client(max_connections=4, allow=allow)


async def test_send_connects_to_the_checked_address(lookups: list[str]) -> None:
    async with running() as rx, _client(LOOPBACK) as client:
        resp = await client.post(f"http://hooks.test:{rx.port}/hook", content=b"{}")
    assert resp.status_code == 200
    assert len(rx.requests) == 1
    assert rx.requests[0].headers["host"] == f"hooks.test:{rx.port}"


async def test_send_refuses_unsafe_resolution(lookups: list[str]) -> None:
    async with running() as rx, _client(()) as client:
        with pytest.raises(UnsafeURL, match=re.escape("hooks.test resolves to 127.0.0.1")):
            await client.post(f"http://hooks.test:{rx.port}/hook", content=b"{}")
        with pytest.raises(UnsafeURL, match="loopback"):
            await client.post(f"http://127.0.0.1:{rx.port}/hook", content=b"{}")
    assert rx.requests == []


async def test_dns_rebinding_is_caught_at_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """Public at create time, loopback at send time: the send is refused."""
    answers = [["93.184.216.34"], ["127.0.0.1"]]
    asked: list[str] = []

    async def rebinding(host: str) -> Sequence[str]:
        asked.append(host)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(ssrf, "default_resolver", rebinding)
    async with running() as rx:
        url = f"http://rebind.example:{rx.port}/hook"
        await check_url(url, ())  # the first answer is public
        async with _client(()) as client:
            with pytest.raises(UnsafeURL, match=re.escape("rebind.example resolves to 127.0.0.1")):
                await client.post(url, content=b"{}")
    assert rx.requests == []
    assert asked == ["rebind.example", "rebind.example"]


async def test_send_tries_each_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running() as rx:
        # Nothing listens on 127.0.0.2 at this port, so the first address refuses.
        async def two(host: str) -> Sequence[str]:
            return ["127.0.0.2", "127.0.0.1"]

        monkeypatch.setattr(ssrf, "default_resolver", two)
        async with _client(LOOPBACK) as client:
            resp = await client.post(f"http://two.test:{rx.port}/hook", content=b"{}")
    assert resp.status_code == 200
    assert len(rx.requests) == 1


async def test_unresolvable_at_send_is_a_connect_error(lookups: list[str]) -> None:
    async with _client(()) as client:
        with pytest.raises(httpx.ConnectError, match=re.escape("nowhere.example")):
            await client.post("http://nowhere.example/hook", content=b"{}")
