"""A loopback OTLP/HTTP trace receiver: what a collector sees of the relay.

A plain asyncio HTTP/1.1 server accepting ``POST /v1/traces`` (protobuf
``ExportTraceServiceRequest``, gzip or deflate or not compressed), decoded
with opentelemetry-proto; every span is kept with its resource's attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root
    kind: int  # opentelemetry.proto.trace.v1 Span.SpanKind
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any]
    events: tuple[str, ...]


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[ExportedSpan]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ExportedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        attributes=_attrs(s.attributes),
                        status_code=s.status.code,
                        resource=resource,
                        events=tuple(e.name for e in s.events),
                    )
                )
    return out


@dataclass
class OtlpReceiver:
    spans: list[ExportedSpan] = field(default_factory=list)
    posts: int = 0
    port: int = 0
    errors: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    def of_trace(self, trace_id: str) -> list[ExportedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                encoding = headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                status = "200 OK"
                if method != "POST" or path != "/v1/traces":
                    status = "404 Not Found"
                    self.errors.append(f"{method} {path}")
                else:
                    self.posts += 1
                    try:
                        self.spans.extend(decode(body))
                    except Exception as exc:  # a test failure, not a crash
                        self.errors.append(repr(exc))
                        status = "400 Bad Request"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    rx = OtlpReceiver()
    rx._server = await asyncio.start_server(rx._serve, "127.0.0.1", 0)
    rx.port = rx._server.sockets[0].getsockname()[1]
    try:
        yield rx
    finally:
        rx._server.close()
        await rx._server.wait_closed()
