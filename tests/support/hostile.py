"""Raw-socket clients that misbehave on purpose, for the hostile-client tests.

Everything talks to loopback only and every loop is bounded by a count and a
deadline.
"""

from __future__ import annotations

import base64
import os
import resource
import select
import socket
import struct
import time


def raise_fd_limit(needed: int) -> None:
    """Let this test process (and the server it starts) hold ``needed`` sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise AssertionError(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def connect(port: int, *, rcvbuf: int | None = None, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def read_response(s: socket.socket, timeout: float = 5.0) -> tuple[int, bytes]:
    """Read one HTTP response (status, whole bytes) until the peer closes or a deadline."""
    s.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    return int(data.split(b" ", 2)[1]), data
    if not data:
        return 0, b""
    return int(data.split(b" ", 2)[1]), data


def closed_by_peer(socks: list[socket.socket], timeout: float) -> int:
    """Wait until every socket reads EOF (or is reset); return how many did in time."""
    open_ = {s.fileno(): s for s in socks}
    for s in socks:
        s.setblocking(False)
    deadline = time.monotonic() + timeout
    done = 0
    while open_ and time.monotonic() < deadline:
        poller = select.poll()
        for fd in open_:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        for fd, _ in poller.poll(200):
            s = open_[fd]
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                del open_[fd]
                done += 1
    return done


# --- WebSocket ------------------------------------------------------------------


def ws_handshake(
    port: int, path: str, headers: dict[str, str] | None = None, *, rcvbuf: int | None = None
) -> socket.socket:
    """Open ``path`` as a WebSocket; return the socket after the 101."""
    s = connect(port, rcvbuf=rcvbuf)
    try:
        return _handshake(s, port, path, headers or {})
    except BaseException:
        s.close()
        raise


def _handshake(s: socket.socket, port: int, path: str, headers: dict[str, str]) -> socket.socket:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(1)
        if not chunk:
            raise AssertionError(f"handshake refused: {data!r}")
        data += chunk
    status = int(data.split(b" ", 2)[1])
    if status != 101:
        s.settimeout(2)
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
        s.close()
        raise AssertionError(f"handshake answered {status}: {data!r}")
    return s


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def flood(s: socket.socket, frame: bytes, *, max_bytes: int, deadline: float) -> int:
    """Send ``frame`` over and over without reading, until the server stops
    taking them for a while, ``max_bytes`` went out, or the deadline; return bytes sent."""
    s.setblocking(False)
    chunk = frame * max(1, 16384 // len(frame))
    sent = 0
    stalled_since: float | None = None
    while sent < max_bytes and time.monotonic() < deadline:
        try:
            n = s.send(chunk)
        except BlockingIOError:
            n = 0
        except OSError:
            break
        if n:
            sent += n
            stalled_since = None
            if n < len(chunk):
                chunk = chunk[n:] + chunk[:n]  # keep frame boundaries: rotate the unsent part
        else:
            now = time.monotonic()
            if stalled_since is None:
                stalled_since = now
            elif now - stalled_since > 2.0:
                break  # the server stopped reading
            select.select([], [s], [], 0.05)
    return sent


def read_close_code(s: socket.socket, timeout: float) -> int | None:
    """Read frames until a close frame; return its code (None: no close frame in time)."""
    s.setblocking(True)
    s.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # parse whole frames in buf
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = struct.unpack("!H", buf[2:4])[0]
                off = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = struct.unpack("!Q", buf[2:10])[0]
                off = 10
            if len(buf) < off + n:
                break
            payload = buf[off : off + n]
            buf = buf[off + n :]
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
        try:
            chunk = s.recv(1 << 20)
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        buf += chunk
    return None
