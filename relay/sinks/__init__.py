"""Sinks: the feed, published to message brokers.

    outbox.events ─► SinkWorker (one per sink, in whichever process holds its lock)
                       read_batch from the sink's cursor ─► filter ─► messages
                       ─► Publisher.publish (until acknowledged, retried with backoff)
                       ─► store the cursor (compare-and-set)

* ``base.py``: the interface a kind of broker implements (:class:`Publisher`),
  the message (envelope body, headers, ``evt_<id>``), templates, errors;
* ``nats.py`` (JetStream) and ``amqp.py`` (RabbitMQ): one module per kind;
* ``worker.py``: one sink's publishing loop; ``runner.py``: the supervisor
  that gives each active sink exactly one worker across all processes;
* ``store.py``: the sinks table (sql/sinks.sql); ``spec.py``: what a sink's
  settings may be (shared by the API and the CLI).

A new kind (Kafka, Redis Streams) is one module with a Publisher class and
one line in :data:`PUBLISHERS`, plus its name in the schema's
``sinks_kind_check`` and its URL schemes in ``base.URL_SCHEMES``.
"""

from __future__ import annotations

import importlib

from outbox.relay.sinks.base import BrokerRefused, Publisher, SinkConfig

# kind -> (module, class, the extra that installs its client)
PUBLISHERS = {
    "nats": ("outbox.relay.sinks.nats", "NatsPublisher", "nats"),
    "amqp": ("outbox.relay.sinks.amqp", "AmqpPublisher", "amqp"),
}


def open_publisher(sink: SinkConfig) -> Publisher:
    """A (not yet connected) publisher for the sink's kind.

    The broker clients are optional extras: without one, every attempt fails
    with an error that says which extra to install.
    """
    module_name, class_name, extra = PUBLISHERS[sink.kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BrokerRefused(
            f"the {sink.kind} client is not installed: pip install 'outbox-relay[{extra}]' "
            f"({exc.name or exc})"
        ) from None
    publisher: Publisher = getattr(module, class_name)(sink)
    return publisher
