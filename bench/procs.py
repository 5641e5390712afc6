"""Child processes: the server under test and the load-generator helpers.

Every helper (``bench.sink``, ``bench.wsclient``, ``bench.writer``,
``bench.receiver``, ``bench.bare_ws``) is its own process, so the load it
generates is not paced by the harness's event loop and its CPU shows up as
its own. They speak one protocol: commands as JSON lines on stdin, events as
JSON lines on stdout (``{"event": "ready"}`` first); stderr goes to a log file
whose tail is quoted in any error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


class Child:
    """A helper process speaking JSON lines."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        *,
        json_lines: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.json_lines = json_lines  # False: a server; all its output goes to the log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with self.log.open("ab") as err:
            pipe = asyncio.subprocess.PIPE if self.json_lines else asyncio.subprocess.DEVNULL
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=pipe,
                stdout=asyncio.subprocess.PIPE if self.json_lines else err,
                stderr=err,
                cwd=ROOT,
                env=env,
                limit=256 * 1024 * 1024,  # result lines carry every sample
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def failure(self, what: str) -> RuntimeError:
        return RuntimeError(f"{self.name}: {what}; log: {_tail(self.log)}")

    async def expect(self, event: str, limit_s: float) -> dict[str, Any]:
        """The next stdout line whose ``event`` is ``event`` (others are skipped)."""
        assert self.proc and self.proc.stdout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise self.failure(f"no {event!r} within {limit_s:.0f}s")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                raise self.failure(f"no {event!r} within {limit_s:.0f}s") from None
            if not line:
                await self.proc.wait()
                raise self.failure(f"exited ({self.proc.returncode}) before {event!r}")
            msg = json.loads(line)
            if msg.get("event") == "error":
                raise self.failure(str(msg.get("message")))
            if msg.get("event") == event:
                return dict(msg)

    async def send(self, **command: Any) -> None:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self, limit_s: float = 10.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), limit_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


def helper(module: str, *args: str) -> list[str]:
    """argv for ``python -m bench.<module> args``."""
    return [sys.executable, "-m", f"bench.{module}", *args]


@contextlib.asynccontextmanager
async def running(child: Child, *, ready_timeout: float = 60.0) -> AsyncIterator[dict[str, Any]]:
    """Start ``child``, wait for its ``ready`` line, stop it on the way out."""
    await child.start()
    try:
        yield await child.expect("ready", ready_timeout)
    finally:
        await child.stop()


def cpu_s(pid: int, *, gone_is_zero: bool = False) -> float:
    """utime + stime of a process on this machine, in seconds.

    A process that is gone raises :class:`OSError`, unless ``gone_is_zero``
    (for sums over PostgreSQL backends, one of which may have ended).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        if gone_is_zero:
            return 0.0
        raise
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the largest resident set the process has had, in MB."""
    return _status_kb(pid, "VmHWM") / 1024.0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024.0


def _status_kb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


class Server:
    """``outbox serve`` (or the bare baseline app) as a subprocess on a loopback port."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log: Path,
        env: Mapping[str, str] | None = None,
        health: str = "/health",
        profile: Path | None = None,
    ) -> None:
        self.child = Child(name, argv, log, env, json_lines=False)
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.health = health
        self.peak_rss_mb = float("nan")
        self.profile = profile
        self._spy: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        return self.child.pid

    async def start(self, limit_s: float = 60.0) -> None:
        await self.child.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                proc = self.child.proc
                assert proc is not None
                if proc.returncode is not None:
                    raise self.child.failure(f"exited ({proc.returncode}) during startup")
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(self.base_url + self.health)
                    if r.status_code == 200:
                        await self._start_profiler()
                        return
                if loop.time() > deadline:
                    await self.child.stop()
                    raise self.child.failure(f"not healthy within {limit_s:.0f}s")
                await asyncio.sleep(0.05)  # polling interval while waiting for startup

    async def _start_profiler(self) -> None:
        """py-spy, sampling the server until it exits, as collapsed stacks.

        ``--nonblocking`` samples without pausing the server, so the profile
        costs the server little beyond the sampler's own CPU.
        """
        if self.profile is None:
            return
        spy = Path(sys.executable).with_name("py-spy")
        argv = [str(spy), "record", "--pid", str(self.pid), "--format", "raw", "--rate", "200"]
        argv += ["--nonblocking", "--output", str(self.profile)]
        with self.child.log.open("ab") as err:
            self._spy = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err
            )

    async def stop(self) -> None:
        if self.child.proc is not None and self.child.proc.returncode is None:
            self.peak_rss_mb = peak_rss_mb(self.pid)
        await self.child.stop(limit_s=20.0)
        if self._spy is not None:
            # py-spy writes its output when the process it samples exits.
            try:
                await asyncio.wait_for(self._spy.wait(), 30)
            except TimeoutError:
                self._spy.kill()
                await self._spy.wait()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
