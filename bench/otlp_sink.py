"""A cheap OTLP/HTTP trace receiver for B7: what a collector costs the sender, no more.

Run as ``python -m bench.otlp_sink --port P``. Answers every ``POST
/v1/traces`` with 200 at once and keeps the body; ``GET /_stats`` decodes
what arrived since the last call (opentelemetry-proto) and returns the
counts: posts, bytes, spans, spans per name. Decoding happens only there,
outside the measured window, so the receiver costs the machine little
while the relay exports. Its own process, like bench.receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
from typing import Any

from bench.childio import emit, run
from bench.receiver import FramedHTTP

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"


class Store:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.posts = 0
        self.bytes = 0

    def stats(self) -> dict[str, Any]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        names: collections.Counter[str] = collections.Counter()
        traces: set[bytes] = set()
        for body in self.bodies:
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        names[s.name.split(" ")[0]] += 1
                        traces.add(s.trace_id)
        out = {
            "posts": self.posts,
            "bytes": self.bytes,
            "spans": sum(names.values()),
            "by_name": dict(names),
            "traces": len(traces),
        }
        self.bodies, self.posts, self.bytes = [], 0, 0
        return out


class Handler(FramedHTTP):
    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def respond(self, request_line: list[str], body: bytes) -> None:
        assert self.transport is not None
        if request_line[0] == "GET" and request_line[1].startswith("/_stats"):
            out = json.dumps(self.store.stats()).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(out)).encode()
                + b"\r\n\r\n"
                + out
            )
            return
        self.store.posts += 1
        self.store.bytes += len(body)
        self.store.bodies.append(body)
        self.transport.write(OK)


async def main_async(args: argparse.Namespace) -> None:
    store = Store()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Handler(store), "127.0.0.1", args.port, backlog=128)
    emit(event="ready", port=args.port)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.otlp_sink", description=__doc__.split("\n")[0]
    )
    p.add_argument("--port", type=int, required=True)
    run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
