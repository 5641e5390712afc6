"""The coalescing WebSocket transport (api/ws_protocol.py): unit tests, plus
the end-to-end proof that the served protocol is the coalescing one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from outbox.api import ws_protocol
from outbox.api.ws_protocol import CoalescingWebSocketProtocol, _CoalescingTransport, text_frame


class Recorder:
    """The real transport's side: what it was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("peer", name)


async def _next_turn() -> None:
    # call_soon callbacks scheduled before this run before it resumes.
    await asyncio.sleep(0)


async def test_writes_of_one_turn_leave_in_one_write_in_order() -> None:
    real = Recorder()
    t = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"a")
    t.write(bytearray(b"b"))
    t.write(b"")
    t.write(memoryview(b"c"))
    assert real.calls == []  # nothing written within the turn
    await _next_turn()
    assert real.calls == [("write", b"abc")]
    t.write(b"d")
    await _next_turn()
    assert real.calls == [("write", b"abc"), ("write", b"d")]


async def test_close_writes_what_was_collected_first() -> None:
    real = Recorder()
    t = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"last frame")
    t.close()
    assert real.calls == [("write", b"last frame"), ("close", None)]
    await _next_turn()  # the scheduled flush finds nothing left
    assert real.calls == [("write", b"last frame"), ("close", None)]


async def test_abort_drops_what_was_collected_and_a_closing_transport_gets_nothing() -> None:
    real = Recorder()
    t = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"x")
    t.abort()
    await _next_turn()
    assert real.calls == [("abort", None)]
    real2 = Recorder()
    t2 = _CoalescingTransport(real2, asyncio.get_running_loop())  # type: ignore[arg-type]
    t2.write(b"y")
    real2.closing = True
    await _next_turn()
    assert real2.calls == []


async def test_other_attributes_are_the_real_transports() -> None:
    real = Recorder()
    t = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert t.get_extra_info("peername") == ("peer", "peername")
    assert t.is_closing() is False


def test_serve_uses_the_coalescing_protocol() -> None:
    from outbox.api.config import Settings
    from outbox.api.ws import uvicorn_ws_options

    assert issubclass(uvicorn_ws_options(Settings.load())["ws"], CoalescingWebSocketProtocol)


@pytest.mark.parametrize(
    "text", ["", "a", "a" * 125, "a" * 126, "a" * 65535, "a" * 65536, "é" * 100_000]
)
def test_text_frame_is_the_frame_websockets_builds(text: str) -> None:
    from websockets.frames import Frame, Opcode

    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert text_frame(text) == expected
    assert text_frame(text) == expected  # again, from the cache


def test_frame_cache_stays_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_protocol, "_FRAME_CACHE_BYTES", 1000)
    monkeypatch.setattr(ws_protocol, "_frames", {})
    monkeypatch.setattr(ws_protocol, "_frames_size", 0)
    for i in range(100):
        text_frame(f"{i:040d}")
        assert ws_protocol._frames_size <= 1000
        assert ws_protocol._frames_size == sum(len(f) for f in ws_protocol._frames.values())
    text_frame("x" * 600)  # over a quarter of the budget: built, not kept
    assert "x" * 600 not in ws_protocol._frames


@pytest.mark.parametrize(
    ("n", "deflate"), [(1, False), (300, False), (300, True)], ids=["one", "burst", "deflate"]
)
async def test_frames_arrive_whole_and_in_order_over_a_real_socket(n: int, deflate: bool) -> None:
    """A real uvicorn server with the protocol, a real websockets client: every
    frame of a burst (one loop turn) arrives intact and in order, then the
    close frame; with permessage-deflate negotiated, uvicorn's own path
    compresses them."""
    import socket

    import uvicorn
    import websockets

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        for i in range(n):  # no await in between would suspend: one turn
            await send({"type": "websocket.send", "text": f"frame {i} " + "é" * (i * 7)})
        await send({"type": "websocket.close", "code": 1000, "reason": "done"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        ws=CoalescingWebSocketProtocol,
        ws_per_message_deflate=deflate,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(20):
            while not server.started:
                await asyncio.sleep(0.01)
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
                got = [msg async for msg in ws]
                assert bool(ws.protocol.extensions) is deflate
            assert got == [f"frame {i} " + "é" * (i * 7) for i in range(n)]
            assert ws.close_code == 1000 and ws.close_reason == "done"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_one_flush_serves_every_transport_in_order_of_first_write() -> None:
    loop = asyncio.get_running_loop()
    log: list[tuple[str, bytes]] = []

    class Named(Recorder):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def write(self, data: bytes) -> None:
            log.append((self.name, data))

    a, b = Named("a"), Named("b")
    ta = _CoalescingTransport(a, loop)  # type: ignore[arg-type]
    tb = _CoalescingTransport(b, loop)  # type: ignore[arg-type]
    tb.write(b"1")
    ta.write(b"2")
    tb.write(b"3")
    assert len(ws_protocol._flushers[loop]._dirty) == 2  # one entry per transport
    await _next_turn()
    assert log == [("b", b"13"), ("a", b"2")]


async def test_text_sender_uses_the_servers_send_when_the_app_kept_it() -> None:
    from starlette.websockets import WebSocket

    from outbox.api.ws import RAW_SEND, RawSend, text_sender

    sent: list[Any] = []

    async def raw(message: Any) -> None:
        sent.append(message)

    seen: dict[str, Any] = {}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    await RawSend(inner)({"type": "websocket"}, None, raw)  # type: ignore[arg-type]
    assert seen[RAW_SEND] is raw
    ws = WebSocket(seen, receive=None, send=None)  # type: ignore[arg-type]
    await text_sender(ws)("hello")
    assert sent == [{"type": "websocket.send", "text": "hello"}]
    plain = WebSocket({"type": "websocket"}, receive=None, send=None)  # type: ignore[arg-type]
    assert text_sender(plain) == plain.send_text
