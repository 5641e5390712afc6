"""outbox demo's options: flags override the environment, errors name the culprit."""

from __future__ import annotations

import argparse
import os
from typing import Any

import pytest

from outbox.errors import ConfigError


def _args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = dict(
        rate=None,
        duration=None,
        no_traffic=False,
        host=None,
        port=None,
        database_url=None,
        embedded=False,
        data_dir=None,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def _environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Exactly ``env`` as the OUTBOX_* (and DATABASE_URL) environment."""
    for name in list(os.environ):
        if name.startswith("OUTBOX_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_options_flags_override_env_and_errors_name_the_culprit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from outbox.cli.demo import options

    def options_in(env: dict[str, str], args: argparse.Namespace) -> Any:
        _environment(monkeypatch, env)
        return options(args)

    env = {
        "OUTBOX_DEMO_RATE": "50",
        "OUTBOX_PORT": "9000",
        "OUTBOX_DEMO_DURATION": "2m",
        "OUTBOX_DEMO_NO_TRAFFIC": "true",
        "OUTBOX_DATABASE_URL": "postgresql:///x",
    }
    o = options_in(env, _args())
    assert (o.rate, o.port, o.duration, o.traffic) == (50.0, 9000, 120.0, False)
    assert o.database_url == "postgresql:///x"
    o = options_in(env, _args(rate="7", port="0", duration="3s", database_url="postgresql:///y"))
    assert (o.rate, o.port, o.duration, o.database_url) == (7.0, 0, 3.0, "postgresql:///y")
    o = options_in({}, _args())
    assert (o.rate, o.port, o.duration, o.traffic, o.host) == (5.0, 8080, None, True, "127.0.0.1")

    # A flag is named with its value and variable ("--rate fast (OUTBOX_DEMO_RATE): ..."),
    # a variable with its value ("OUTBOX_DEMO_RATE=-3: ...").
    for args, env, culprit in [
        (_args(rate="fast"), {}, "--rate fast "),
        (_args(rate="0"), {}, "--rate 0 "),
        (_args(), {"OUTBOX_DEMO_RATE": "-3"}, "OUTBOX_DEMO_RATE=-3: "),
        (_args(port="70000"), {}, "--port 70000 "),
        (_args(), {"OUTBOX_PORT": "http"}, "OUTBOX_PORT=http: "),
        (_args(duration="soon"), {}, "--duration soon "),
        (_args(duration="0s"), {}, "--duration 0s "),
        (_args(), {"OUTBOX_DEMO_DURATION": "forever"}, "OUTBOX_DEMO_DURATION=forever: "),
    ]:
        with pytest.raises(ConfigError, match=f"^{culprit}"):
            options_in(env, args)
