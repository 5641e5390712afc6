"""The helper side of bench/procs.py: JSON-line commands in, events out, the loop."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import Any


async def commands() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def wait_for_command(reader: asyncio.StreamReader, cmd: str) -> bool:
    """True when ``{"cmd": cmd}`` arrives, False at end of input."""
    while line := await reader.readline():
        msg: dict[str, Any] = json.loads(line)
        if msg.get("cmd") == cmd:
            return True
    return False


def emit(**msg: Any) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a helper's main coroutine, on uvloop when installed (cheaper per socket)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
