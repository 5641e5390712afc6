"""How much the delivery worker claims, and for which endpoints (no database)."""

from __future__ import annotations

from outbox.relay.delivery.worker import DeliveryWorker, _Endpoint
from outbox.relay.metrics import Metrics
from tests.support.delivery import fast


def _worker(**overrides: int) -> DeliveryWorker:
    settings = fast("postgresql://unused", **overrides)
    return DeliveryWorker(
        settings.delivery, Metrics(), database_url="postgresql://unused", poll_interval=1.0
    )


def _hold(w: DeliveryWorker, webhook_id: int, endpoint: str, in_hand: int) -> None:
    ep = w._endpoints.setdefault(endpoint, _Endpoint(w.settings.endpoint_concurrency))
    ep.in_hand = in_hand
    w._webhook_endpoint[webhook_id] = endpoint


def test_a_claim_never_asks_more_than_a_claimable_endpoint_takes() -> None:
    """Whatever a claim returns, its endpoint has room for: nothing claimed
    goes straight back (a release costs a write, and a row nobody claims
    until the next wake-up; B4 with 20% failures lost ~1 s per run to that)."""
    w = _worker(delivery_concurrency=64, endpoint_concurrency=16)  # 32 in hand per endpoint
    for in_hand in range(0, 33):
        w._endpoints.clear()
        w._webhook_endpoint.clear()
        _hold(w, 1, "http://a:1", in_hand)
        _hold(w, 2, "http://b:1", 32 - in_hand)
        limit = w._claim_limit(room=128 - 32)
        skipped = w._skipped(limit)
        assert limit == 16
        for webhook_id, key in w._webhook_endpoint.items():
            room = 32 - w._endpoints[key].in_hand
            assert webhook_id in skipped or room >= limit, (in_hand, webhook_id)
        # An endpoint not in hand at all is never skipped.
        assert 3 not in skipped


def test_a_drained_endpoint_is_claimed_for_again() -> None:
    """At the wake-up of a drain (endpoint_concurrency left in hand) the
    endpoint has room for a whole claim, so the claim is not skipped."""
    w = _worker(delivery_concurrency=64, endpoint_concurrency=16)
    _hold(w, 1, "http://a:1", 16)
    assert w._skipped(w._claim_limit(room=112)) == []


def test_a_small_global_room_limits_the_claim() -> None:
    w = _worker(delivery_concurrency=4, endpoint_concurrency=16)
    _hold(w, 1, "http://a:1", 30)
    limit = w._claim_limit(room=2)
    assert limit == 2 and w._skipped(limit) == []
