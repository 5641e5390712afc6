"""Which custom headers a webhook may carry (relay/delivery/headers.py)."""

from __future__ import annotations

import pytest

from outbox.relay.delivery.headers import MAX_HEADERS, check


def test_ordinary_headers_are_kept() -> None:
    headers = {"Authorization": "Bearer t0k", "X-Tenant": "acme", "User-Agent": "mine/1"}
    assert check(headers) == headers


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Connection", "hop-by-hop"),
        ("keep-alive", "hop-by-hop"),
        ("Transfer-Encoding", "hop-by-hop"),
        ("Upgrade", "hop-by-hop"),
        ("TE", "hop-by-hop"),
        ("Proxy-Authorization", "hop-by-hop"),
        ("Host", "hop-by-hop"),
        ("Content-Type", "Content-*"),
        ("content-length", "Content-*"),
        ("Content-Encoding", "Content-*"),
        ("X-Webhook-Signature", "set by the relay"),
        ("x-webhook-id", "set by the relay"),
        ("X-Webhook-Event", "set by the relay"),
        ("webhook-id", "set by the relay"),
        ("Webhook-Signature", "set by the relay"),
        ("webhook-timestamp", "set by the relay"),
        ("traceparent", "set by the relay"),
        ("Bad Name", "not a valid HTTP header name"),
        ("", "not a valid HTTP header name"),
    ],
)
def test_refused_names_are_named(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        check({name: "v"})
    assert repr(name) in str(caught.value)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "\x00", "é"])
def test_values_must_be_one_line_of_ascii(value: str) -> None:
    with pytest.raises(ValueError, match="'X-Ok': the value must be visible ASCII"):
        check({"X-Ok": value})


def test_counts_and_duplicates() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_HEADERS} headers"):
        check({f"X-{i}": "v" for i in range(MAX_HEADERS + 1)})
    with pytest.raises(ValueError, match="given twice"):
        check({"X-A": "1", "x-a": "2"})
