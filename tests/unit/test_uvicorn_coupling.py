"""uvicorn coupling made safe (api/ws_protocol.py): a checked upper bound in
pyproject, writelines on the coalescing transport, and the import-time check
of what the protocol subclass relies on, with its fallback to stock uvicorn."""

from __future__ import annotations

import asyncio
import re
import tomllib
import warnings
from importlib.metadata import version
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from outbox.api import ws_protocol
from tests.support.paths import ROOT


def _uvicorn_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [spec] = [r for r in project["dependencies"] if re.match(r"uvicorn\b", r)]
    return Requirement(spec)


def test_uvicorn_has_an_upper_bound_and_the_installed_one_is_inside() -> None:
    req = _uvicorn_requirement()
    uppers = [s for s in req.specifier if s.operator in ("<", "<=")]
    assert uppers, f"{req}: uvicorn needs an upper bound (api/ws_protocol.py uses its internals)"
    installed = Version(version("uvicorn"))
    # The installed version is the tested one: it must satisfy the range.
    assert req.specifier.contains(installed), (str(req), str(installed))


def test_the_installed_uvicorn_passes_the_check() -> None:
    assert ws_protocol.uvicorn_problem() is None
    assert ws_protocol.PROBLEM is None
    assert isinstance(ws_protocol.bounded_protocol(1 << 20), type)


class _Real:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def test_writelines_goes_through_the_coalescing_transport() -> None:
    loop = asyncio.get_running_loop()
    real = _Real()
    transport = ws_protocol._CoalescingTransport(real, loop)  # type: ignore[arg-type]
    transport.write(b"a")
    transport.writelines([b"b", bytearray(b"c"), memoryview(b"d")])
    assert real.written == []  # collected, in order, until the end of this loop turn
    await asyncio.sleep(0)
    assert real.written == [b"abcd"]


@pytest.mark.parametrize(
    ("break_it", "named"),
    [
        # An overridden method gone.
        (lambda cls, mp: mp.delattr(cls, "data_received"), "data_received"),
        # An attribute no longer set (here: a constructor that sets none of them).
        (lambda cls, mp: mp.setattr(cls, "__init__", lambda self, *a, **k: None), "self."),
        # self.transport rebound outside connection_made.
        (lambda cls, mp: mp.setattr(cls, "eof_received", _rebinds_transport), "rebinds"),
    ],
)
def test_a_changed_uvicorn_falls_back_to_stock_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, break_it: Any, named: str
) -> None:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    break_it(WebSocketsSansIOProtocol, monkeypatch)
    problem = ws_protocol.uvicorn_problem()
    assert problem is not None and named in problem, problem
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ws_protocol.check()  # what the module runs at import
        assert [str(w.message) for w in caught if w.category is RuntimeWarning] == [
            f"uvicorn {version('uvicorn')}: {problem}; /ws uses uvicorn's stock "
            "websockets-sansio protocol (no write coalescing, no bound on pongs)"
        ]
        assert problem == ws_protocol.PROBLEM
        assert ws_protocol.bounded_protocol(1 << 20) == "websockets-sansio"
        # ... which uvicorn takes as its own stock protocol.
        import uvicorn

        config = uvicorn.Config(_app, ws=ws_protocol.bounded_protocol(1 << 20), log_config=None)
        config.load()
        assert config.ws_protocol_class is WebSocketsSansIOProtocol
    finally:
        monkeypatch.undo()
        assert ws_protocol.check() is None
    assert isinstance(ws_protocol.bounded_protocol(1 << 20), type)


def _rebinds_transport(self: Any) -> None:
    self.transport = None


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that does nothing (uvicorn.Config needs one)."""
