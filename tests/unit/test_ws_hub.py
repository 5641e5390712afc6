"""The hub on its own: fan-out, bounds, de-duplication at the seam, clean exits.

No sockets here: ``drain`` gets a plain coroutine as its ``send``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from outbox.cursor import Cursor
from outbox.events import Matcher
from outbox.relay.config import HubSettings
from outbox.relay.feed import Batch, Event
from outbox.relay.hub import Hub
from outbox.relay.metrics import Metrics

_NOW = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def batch(*events: tuple[int, str]) -> Batch:
    return Batch(
        [Event(i, 100 + i, t, f'{{"n":{i}}}', _NOW, "c") for i, t in events],
        Cursor(0),
        Cursor(max(i for i, _ in events)),
    )


def make_hub(**settings: int) -> Hub:
    # Built without the range checks of OUTBOX_WS_*: the bounds here are tiny on purpose.
    return Hub(HubSettings.model_construct(**settings), Metrics())


def ids(client_queue: object) -> list[int]:
    return [i for i, _ in client_queue]  # type: ignore[attr-defined]


def frame_id(text: str) -> int:
    """The event id in a frame, 0 for a reply."""
    return int(text.split('"id":')[1].split(",")[0]) if '"id":' in text else 0


class Recorder:
    """A ``send`` that never waits and remembers the ids it sent."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    async def __call__(self, text: str) -> None:
        self.ids.append(frame_id(text))


async def test_publish_queues_each_frame_once_for_matching_clients() -> None:
    hub = make_hub()
    everything = hub.register("bootstrap", Matcher(None))
    tickets = hub.register("bootstrap", Matcher(["ticket.*"]))
    also_tickets = hub.register("bootstrap", Matcher(["ticket.*"]))
    b = batch((1, "user.created"), (2, "ticket.created"), (3, "ticket.closed"))
    hub.publish(b)
    assert ids(everything.queue) == [1, 2, 3]
    assert ids(tickets.queue) == ids(also_tickets.queue) == [2, 3]
    # Encoded once: every client holds the very same string object.
    assert tickets.queue[0][1] is also_tickets.queue[0][1] is everything.queue[1][1]
    assert tickets.queue[0][1] is b.events[1].frame
    assert hub.metrics.ws_messages.get() == 7
    assert "outbox_ws_clients 3.0" in hub.metrics.render()


async def test_a_client_past_the_bound_is_dropped_and_freed() -> None:
    hub = make_hub(ws_max_queue=3)
    slow = hub.register("bootstrap", Matcher(None))
    fine = hub.register("bootstrap", Matcher(["user.*"]))
    hub.publish(batch((1, "ticket.created"), (2, "ticket.created")))
    hub.publish(batch((3, "ticket.created"), (4, "user.created")))
    assert slow.closed.is_set() and slow.close_code == 1013
    assert "behind" in slow.close_reason
    assert len(slow.queue) == 0 and slow.nbytes == 0
    assert not fine.closed.is_set() and ids(fine.queue) == [4]
    assert hub.client_count == 1
    assert hub.metrics.ws_dropped.get() == 1


async def test_the_byte_bound_applies_too() -> None:
    frame_size = len(batch((1, "user.created")).events[0].frame)
    hub = make_hub(ws_max_queue_bytes=frame_size * 5 // 2)
    client = hub.register("bootstrap", Matcher(None))
    hub.publish(batch((1, "user.created"), (2, "user.created")))
    assert not client.closed.is_set()
    hub.publish(batch((3, "user.created")))
    assert client.closed.is_set() and client.close_code == 1013


async def test_go_live_drops_what_the_catch_up_sent_now_or_later() -> None:
    hub = make_hub()
    client = hub.register("bootstrap", Matcher(None))
    hub.publish(batch((5, "user.created"), (6, "user.created")))
    client.send_control('{"type":"pong"}')
    hub.publish(batch((7, "user.created")))
    send = Recorder()
    # 8 was sent by the catch-up but the relay has not published it yet.
    client.go_live(send, {5, 6, 8})
    assert send.ids == [0, 7]
    hub.publish(batch((8, "user.created"), (9, "user.created")))
    assert send.ids == [0, 7, 9]
    assert client.skip == set()


async def test_sends_go_out_at_once_when_the_socket_takes_them() -> None:
    hub = make_hub()
    client = hub.register("bootstrap", Matcher(None))
    send = Recorder()
    hub.publish(batch((1, "a.b")))  # buffered: not live yet
    assert send.ids == [] and ids(client.queue) == [1]
    client.go_live(send)
    hub.publish(batch((2, "a.b"), (3, "a.b")))
    client.send_control('{"type":"pong"}')
    # No await happened: a send that does not wait needs no task.
    assert send.ids == [1, 2, 3, 0]
    assert (hub.sender_count, len(client.queue), client.nbytes) == (0, 0, 0)


async def test_a_send_that_waits_continues_in_a_task_and_keeps_order() -> None:
    hub = make_hub()
    client = hub.register("bootstrap", Matcher(None))
    sent: list[int] = []
    gate = asyncio.Event()

    async def send(text: str) -> None:
        await gate.wait()  # a backed-up socket
        sent.append(frame_id(text))

    client.go_live(send)
    hub.publish(batch((1, "a.b")))
    hub.publish(batch((2, "a.b"), (3, "a.b")))
    assert hub.sender_count == 1 and ids(client.queue) == [2, 3]
    gate.set()
    await asyncio.wait_for(client.wait_sent(), 5)
    await asyncio.sleep(0)  # let the task's done-callback run
    assert sent == [1, 2, 3] and hub.sender_count == 0

    gate.clear()
    hub.publish(batch((4, "a.b")))
    assert hub.sender_count == 1
    hub.unregister(client)  # the client leaves while its send waits
    await asyncio.wait_for(client.wait_sent(), 5)
    await asyncio.sleep(0)
    assert (hub.sender_count, hub.client_count, hub.queued) == (0, 0, 0)
    assert sent == [1, 2, 3]


async def test_a_failed_send_closes_the_client() -> None:
    hub = make_hub()
    client = hub.register("bootstrap", Matcher(None))

    async def send(text: str) -> None:
        raise OSError("peer gone")

    client.go_live(send)
    hub.publish(batch((1, "a.b")))
    assert client.closed.is_set() and hub.client_count == 0


async def test_stop_closes_everyone_and_refuses_newcomers() -> None:
    hub = make_hub()
    client = hub.register("bootstrap", Matcher(None))
    await hub.stop()
    assert client.closed.is_set() and client.close_code == 1001
    late = hub.register("bootstrap", Matcher(None))
    assert late.closed.is_set() and hub.client_count == 0
