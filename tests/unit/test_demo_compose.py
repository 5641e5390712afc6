"""compose.yaml: valid Compose (checked against the spec's shape; no docker engine here).

Also checks that what it runs exists: the commands parse with our own CLI
and the files the inline Dockerfile copies are in the repository.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.paths import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")

COMPOSE = ROOT / "compose.yaml"

# From the Compose specification (compose-spec/compose-spec, schema/compose-spec.json).
TOP_LEVEL = {
    "version",
    "name",
    "include",
    "services",
    "networks",
    "volumes",
    "secrets",
    "configs",
    "models",
}
SERVICE_KEYS = {
    "build",
    "command",
    "configs",
    "container_name",
    "depends_on",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "healthcheck",
    "image",
    "labels",
    "networks",
    "ports",
    "profiles",
    "restart",
    "secrets",
    "stop_grace_period",
    "stop_signal",
    "user",
    "volumes",
    "working_dir",
}
BUILD_KEYS = {"context", "dockerfile", "dockerfile_inline", "args", "target", "tags"}
HEALTHCHECK_KEYS = {
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART = {"no", "always", "on-failure", "unless-stopped"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
PROFILE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
PORT = re.compile(
    r"^((\d{1,3}(\.\d{1,3}){3}|\$\{[A-Z_]+(:-[^}]*)?\}):)?"
    r"(\d+|\$\{[A-Z_]+(:-\d+)?\}):\d+(/(tcp|udp))?$"
)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved here
    assert isinstance(data, dict)
    return data


def test_top_level_shape(compose: dict[str, Any]) -> None:
    assert set(k for k in compose if not k.startswith("x-")) <= TOP_LEVEL
    assert isinstance(compose["services"], dict) and compose["services"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", compose["name"])
    # Every ${...} is well formed (an unclosed one is a Compose error).
    text = COMPOSE.read_text()
    assert text.count("${") == len(INTERPOLATION.findall(text))


def test_services_follow_the_spec(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in services.items():
        assert re.fullmatch(r"[a-zA-Z0-9._-]+", name)
        assert set(svc) <= SERVICE_KEYS, (name, set(svc) - SERVICE_KEYS)
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            assert set(svc["build"]) <= BUILD_KEYS
        assert svc.get("restart", "no") in RESTART
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            assert spec["condition"] in CONDITIONS
        for port in svc.get("ports", []):
            assert isinstance(port, str) and PORT.match(port), (name, port)
        for prof in svc.get("profiles", []):
            assert PROFILE.match(prof)
        for key, value in (svc.get("environment") or {}).items():
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key)
            assert isinstance(value, str), (name, key, "quote numbers: environment is strings")
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, (name, source)
        hc = svc.get("healthcheck")
        assert hc, f"{name} has no healthcheck"
        assert set(hc) <= HEALTHCHECK_KEYS
        assert hc["test"][0] in ("CMD", "CMD-SHELL")
        for k in ("interval", "timeout", "start_period"):
            if k in hc:
                assert DURATION.match(hc[k]), (name, k)
        assert isinstance(hc.get("retries", 1), int)
        assert isinstance(svc.get("command", []), list)


def test_postgres_serve_and_the_demo_profile(compose: dict[str, Any]) -> None:
    s = compose["services"]
    pg = s["postgres"]
    major = int(re.match(r"postgres:(\d+)", pg["image"]).group(1))  # type: ignore[union-attr]
    assert major >= 17
    # 18+ images keep PGDATA below /var/lib/postgresql: mount the parent.
    assert any(v.endswith(":/var/lib/postgresql") for v in pg["volumes"])
    assert "profiles" not in s["outbox"]  # `docker compose up` serves
    assert s["demo"]["profiles"] == ["demo"]
    assert s["outbox"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The demo uses a database of its own (see the comment in compose.yaml).
    assert s["demo"]["environment"]["OUTBOX_DATABASE_URL"].endswith("/outbox_demo")


def test_commands_parse_with_our_cli(compose: dict[str, Any]) -> None:
    from outbox.cli import main as cli

    if not cli._EXTRA_COMMANDS:
        cli._load_extra_commands()
    parser = cli.build_parser()
    for name in ("outbox", "demo"):
        command = compose["services"][name]["command"]
        assert command[0] == "outbox"
        parser.parse_args(command[1:])  # exits (fails the test) on an unknown flag


def test_the_inline_dockerfile_copies_files_that_exist(compose: dict[str, Any]) -> None:
    inline = compose["services"]["outbox"]["build"]["dockerfile_inline"]
    assert inline.startswith("FROM python:3.")
    for line in inline.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


def test_postgres_is_published_on_a_port_that_does_not_clash_with_a_local_server() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    ports = compose["services"]["postgres"].get("ports", [])
    for port in ports:
        host = re.sub(r"\$\{[A-Z_]+:-(\d+)\}", r"\1", port).split(":")
        assert host[0] == "127.0.0.1", port
        assert host[1] != "5432", f"{port}: clashes with a PostgreSQL already on 5432"
