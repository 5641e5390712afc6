"""Summarise a py-spy collapsed-stack profile: where the server's time goes.

``python -m bench.hotspots FILE [--top N] [--match TEXT]``: the functions
with the most samples on top of the stack (self) and anywhere in it
(inclusive), as percentages of all samples; idle samples (threads waiting in
the event loop's select/epoll) are counted apart so the percentages say how
busy the process was, not how long it waited.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

IDLE = ("select (selectors.py", "poll (selectors.py", "_run_once (asyncio/base_events.py")


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _frame(f: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = f.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def summarise(path: Path, top: int, match: str | None) -> str:
    stacks = load(path)
    total = sum(c for _, c in stacks)
    idle = sum(c for s, c in stacks if any(i in s[-1] for i in IDLE))
    busy = total - idle
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, count in stacks:
        if any(i in frames[-1] for i in IDLE):
            continue
        own[_frame(frames[-1])] += count
        for f in {_frame(x) for x in frames}:
            incl[f] += count
    out = [f"{path.name}: {total} samples, {busy} busy ({100 * busy / max(total, 1):.0f}%)"]
    for title, counter in (("self", own), ("inclusive", incl)):
        out.append(f"-- top {top} by {title} time, % of busy samples")
        rows = [(f, c) for f, c in counter.most_common() if not match or match in f][:top]
        out += [f"{100 * c / max(busy, 1):6.1f}%  {f}" for f, c in rows]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.hotspots", description=__doc__.split("\n")[0])
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", help="only frames containing this text")
    args = p.parse_args()
    print(summarise(args.file, args.top, args.match))


if __name__ == "__main__":
    main()
