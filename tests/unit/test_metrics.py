"""relay/metrics.py: prometheus-client, one registry per service, callback
gauges; and docs/relay.md lists every metric a service exports."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

from outbox.relay.metrics import Metrics
from tests.support.paths import ROOT


def test_each_metrics_has_its_own_registry_and_none_is_global() -> None:
    a, b = Metrics(), Metrics()
    a.events_read.inc(3)
    a.attempts.inc(outcome="success")
    assert a.events_read.get() == 3 and b.events_read.get() == 0
    assert a.attempts.get(outcome="success") == 1 and b.attempts.get(outcome="success") == 0
    assert "outbox_events_read_total 3.0" in a.render()
    assert "outbox_events_read_total 0.0" in b.render()
    # Nothing lands in prometheus-client's process-wide default registry.
    assert REGISTRY.get_sample_value("outbox_events_read_total") is None


def test_callback_gauges_are_read_at_scrape_time() -> None:
    m = Metrics()
    depth = {"n": 1.0}
    m.gauge("outbox_test_depth", "a depth", lambda: depth["n"])
    m.gauge("outbox_test_by_sink", "by sink", lambda: {"sink=b": 2.0, "sink=a": 1.0})
    m.gauge("outbox_test_empty", "nothing yet", dict)
    assert "outbox_test_depth 1.0" in m.render()
    depth["n"] = 7.0
    text = m.render()
    assert "outbox_test_depth 7.0" in text
    assert text.index('outbox_test_by_sink{sink="a"} 1.0') < text.index(
        'outbox_test_by_sink{sink="b"} 2.0'
    )
    assert "# TYPE outbox_test_empty gauge" in text
    m.gauge("outbox_test_depth", "registered again: replaced", lambda: 0.0)
    assert m.render().count("# TYPE outbox_test_depth gauge") == 1


def test_histogram_buckets() -> None:
    m = Metrics()
    m.attempt_latency.observe(0.003)
    text = m.render()
    assert 'outbox_delivery_attempt_seconds_bucket{le="0.005"} 1.0' in text
    assert "outbox_delivery_attempt_seconds_count 1.0" in text


def test_docs_list_every_metric_a_service_exports() -> None:
    from outbox.api.app import create_app
    from outbox.api.config import Settings
    from outbox.relay.service import Service

    settings = Settings.load(database_url="postgresql://nobody@127.0.0.1:1/none")
    service = Service(settings)  # builds every part; connects to nothing
    create_app(settings, service)  # the API's database gauges
    text = service.metrics.render()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    exported = {n for n in exported if not n.endswith("_created")}
    documented = set(re.findall(r"`(outbox_[a-z_]+)", (ROOT / "docs" / "relay.md").read_text()))
    assert exported <= documented, exported - documented
