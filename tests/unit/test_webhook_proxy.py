"""OUTBOX_WEBHOOK_PROXY: every webhook request through an HTTP(S) proxy (loopback only).

With a proxy the relay does not resolve webhook hosts: the proxy does, and
an SSRF-filtering proxy refuses internal ones. The proxy's own address is
operator configuration and is not checked. The tests' proxy sends every
request to the test receiver, whatever name it was asked for.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from outbox.errors import ConfigError
from outbox.relay.config import DeliverySettings, parse_proxy
from outbox.relay.delivery.attempt import post
from outbox.relay.delivery.client import make_client
from outbox.relay.delivery.retry import AttemptResult
from tests.support.proxy import running_proxy
from tests.support.receivers import running
from tests.support.tls import self_signed


async def _post(client: object, url: str) -> AttemptResult:
    loop = asyncio.get_running_loop()
    return await post(
        client,  # type: ignore[arg-type]
        url,
        b"{}",
        {"content-type": "application/json", "webhook-id": "evt_1"},
        attempt=1,
        deadline=loop.time() + 5,
        body_cap=100,
    )


async def test_http_webhook_goes_through_the_proxy() -> None:
    async with running() as rx, running_proxy(target=("127.0.0.1", 0)) as proxy:
        proxy.target = ("127.0.0.1", rx.port)
        # allow=(): without a proxy a loopback receiver would be refused.
        async with make_client(max_connections=4, allow=(), proxy=proxy.url) as client:
            for _ in range(2):
                r = await _post(client, "http://hooks.example/hook?x=1")
                assert r.ok, r
    assert proxy.asked[0] == "POST http://hooks.example/hook?x=1 HTTP/1.1"
    assert [req.path for req in rx.requests] == ["http://hooks.example/hook?x=1"] * 2
    assert rx.requests[0].headers["host"] == "hooks.example"
    assert rx.requests[0].headers["webhook-id"] == "evt_1"


async def test_https_webhook_is_tunnelled_and_verified_for_its_host(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "hooks.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with running() as rx:
        tls = await asyncio.start_server(rx._serve, "127.0.0.1", 0, ssl=server_ctx)
        port = tls.sockets[0].getsockname()[1]
        try:
            async with (
                running_proxy(target=("127.0.0.1", port)) as proxy,
                make_client(
                    max_connections=4, allow=(), proxy=proxy.url, ssl_context=client_ctx
                ) as client,
            ):
                ok = await _post(client, f"https://hooks.test:{port}/hook")
                wrong = await _post(client, f"https://other.test:{port}/hook")
        finally:
            tls.close()
            await tls.wait_closed()
    assert ok.ok, ok
    assert wrong.error_class == "ConnectError" and "certificate" in (wrong.error_message or "")
    assert proxy.asked[:2] == [
        f"CONNECT hooks.test:{port} HTTP/1.1",
        f"CONNECT other.test:{port} HTTP/1.1",
    ]
    assert len(rx.requests) == 1


async def test_a_proxy_refusal_is_a_failed_attempt() -> None:
    async with (
        running() as rx,
        running_proxy(deny=lambda authority: True) as proxy,
        make_client(max_connections=4, allow=(), proxy=proxy.url) as client,
    ):
        plain = await _post(client, f"http://10.0.0.1:{rx.port}/hook")
        tunnel = await _post(client, "https://169.254.169.254/latest")
    assert plain.status == 403 and not plain.ok  # the proxy's answer, recorded as such
    assert tunnel.error_class == "ProxyError" and not tunnel.ok
    assert rx.requests == []


def test_proxy_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTBOX_WEBHOOK_PROXY", raising=False)
    assert DeliverySettings().webhook_proxy is None
    monkeypatch.setenv("OUTBOX_WEBHOOK_PROXY", "http://user:pw@egress.internal:4750")
    assert DeliverySettings().webhook_proxy == "http://user:pw@egress.internal:4750"
    for bad in ("egress:4750", "socks5://egress:1080", "http://", "http://h:99999"):
        with pytest.raises(ConfigError, match="OUTBOX_WEBHOOK_PROXY") as caught:
            parse_proxy(bad)
        assert "pw" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_proxy("ftp://user:s3cret@h:1")
    assert "s3cret" not in str(caught.value)
