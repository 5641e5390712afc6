"""outbox demo's options: flags override the environment, errors name the culprit."""

from __future__ import annotations

import argparse
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


def test_options_flags_override_env_and_errors_name_the_culprit() -> None:
    from outbox.cli.demo import options

    env = {
        "OUTBOX_DEMO_RATE": "50",
        "OUTBOX_PORT": "9000",
        "OUTBOX_DEMO_DURATION": "2m",
        "OUTBOX_DEMO_NO_TRAFFIC": "true",
        "OUTBOX_DATABASE_URL": "postgresql:///x",
    }
    o = options(_args(), env)
    assert (o.rate, o.port, o.duration, o.traffic) == (50.0, 9000, 120.0, False)
    assert o.database_url == "postgresql:///x"
    o = options(_args(rate="7", port="0", duration="3s", database_url="postgresql:///y"), env)
    assert (o.rate, o.port, o.duration, o.database_url) == (7.0, 0, 3.0, "postgresql:///y")
    o = options(_args(), {})
    assert (o.rate, o.port, o.duration, o.traffic, o.host) == (5.0, 8080, None, True, "127.0.0.1")

    for args, env, culprit in [
        (_args(rate="fast"), {}, "--rate"),
        (_args(rate="0"), {}, "--rate"),
        (_args(), {"OUTBOX_DEMO_RATE": "-3"}, "OUTBOX_DEMO_RATE"),
        (_args(port="70000"), {}, "--port"),
        (_args(), {"OUTBOX_PORT": "http"}, "OUTBOX_PORT"),
        (_args(duration="soon"), {}, "--duration"),
        (_args(duration="0s"), {}, "--duration"),
        (_args(), {"OUTBOX_DEMO_DURATION": "forever"}, "OUTBOX_DEMO_DURATION"),
    ]:
        with pytest.raises(ConfigError, match=f"^{culprit}: "):
            options(args, env)
