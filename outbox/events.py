"""Event type names and subscription patterns."""

from __future__ import annotations

import re

from outbox.errors import InvalidEventType

EVENT_TYPE_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
PATTERN_RE = re.compile(r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*\.\*|[a-z0-9_]+(\.[a-z0-9_]+)+)$")


def check_event_type(name: str) -> str:
    if not isinstance(name, str) or not EVENT_TYPE_RE.match(name):
        raise InvalidEventType(
            f"invalid event type {name!r}: use lowercase dotted names such as user.created"
        )
    return name


def is_pattern(value: str) -> bool:
    """Exact names, ``prefix.*`` and ``*``."""
    return bool(PATTERN_RE.match(value))


def matches(patterns: tuple[str, ...] | list[str] | frozenset[str], event_type: str) -> bool:
    for p in patterns:
        if p == "*" or p == event_type:
            return True
        if p.endswith(".*") and event_type.startswith(p[:-1]):
            return True
    return False


class Matcher:
    """A compiled set of patterns; ``None`` patterns match everything."""

    __slots__ = ("_all", "_exact", "_prefixes", "patterns")

    def __init__(self, patterns: list[str] | tuple[str, ...] | None) -> None:
        self.patterns: tuple[str, ...] = tuple(patterns) if patterns is not None else ("*",)
        self._all = "*" in self.patterns
        self._exact = frozenset(p for p in self.patterns if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in self.patterns if p.endswith(".*"))

    def __call__(self, event_type: str) -> bool:
        if self._all or event_type in self._exact:
            return True
        return any(event_type.startswith(p) for p in self._prefixes)


class Intersection(Matcher):
    """Events both matchers accept: a client's filter within what its token may see.

    ``patterns`` is a grouping key (the hub shares filtering work between
    clients with equal keys), not a pattern list.
    """

    __slots__ = ("_a", "_b")

    def __init__(self, a: Matcher, b: Matcher) -> None:
        self._a, self._b = a, b
        self.patterns = (*a.patterns, "&", *b.patterns)

    def __call__(self, event_type: str) -> bool:
        return self._a(event_type) and self._b(event_type)


def restrict(matcher: Matcher, allowed: Matcher | None) -> Matcher:
    """``matcher`` limited to ``allowed`` (None: no limit)."""
    if allowed is None or allowed._all:
        return matcher
    return Intersection(matcher, allowed)
