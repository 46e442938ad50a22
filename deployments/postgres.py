"""A project-owned PostgreSQL for the local Prefect server: `deployments/local.py up --database postgres`.

Prefect's production setup is a server on PostgreSQL; this runs one on this host, from Debian's
binaries (/usr/lib/postgresql/<version>/bin, `./setup.sh --tests` installs them), with everything
under the local state directory:

    <state>/postgres/            owned by the user the cluster runs as, mode 0700
        data/                    the cluster (initdb); kept across `down`/`up`, so the history survives
        socket/                  its unix socket (the only way in without a password: peer auth, that user)
        postgres.log             the server's log
    <state>/postgres-password    the `prefect` role's password, generated once, mode 0600, never printed

It listens on 127.0.0.1 only, on a port free when it starts (read back from postmaster.pid while it
runs), and accepts TCP logins by SCRAM password only. The Prefect server connects as role `prefect`,
owner of database `prefect`, through PREFECT_API_DATABASE_CONNECTION_URL; that URL is only ever given
to the server's environment and printed with the password masked.

PostgreSQL refuses to run as root, so under root the cluster belongs to, and runs as, Debian's
`postgres` system user (runuser); that user must be able to reach the state directory (every parent
directory searchable by others). As any other user it runs as that user.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

from sqlalchemy.engine import URL

from tasks.common.errors import PipelineError
from tasks.common.processes import ProcessRef

SYSTEM_USER = "postgres"  # Debian's postgresql package creates it
ROLE = DATABASE = "prefect"
BIN_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 120


class PostgresError(PipelineError):
    """The local PostgreSQL cannot be set up, started or stopped; `fix` says what to do."""


class Cluster:
    """Paths of the cluster under one state directory."""

    def __init__(self, state: Path):
        self.state = state
        self.home = state / "postgres"
        self.data = self.home / "data"
        self.socket_dir = self.home / "socket"
        self.log = self.home / "postgres.log"
        self.password_file = state / "postgres-password"

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def running(self) -> tuple[ProcessRef, int] | None:
        """The postmaster and its port, from postmaster.pid, if that process is alive."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        import psutil

        try:
            ref = ProcessRef.of(psutil.Process(pid))
        except psutil.Error:
            return None
        process = ref.alive()
        if process is None or "postgres" not in process.name():
            return None  # a stale file whose pid now belongs to something else
        return ref, port


# -- binaries and the user it runs as ---------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def bin_dir(cluster: Cluster | None = None, root: Path = BIN_ROOT) -> Path:
    """Debian's binaries: the cluster's own major version if it exists, else the newest installed."""
    if cluster is not None and cluster.initialized():
        version = (cluster.data / "PG_VERSION").read_text().strip()
        wanted = root / version / "bin"
        if not (wanted / "pg_ctl").is_file():
            raise PostgresError(
                f"the cluster in {cluster.data} is PostgreSQL {version}, whose binaries are not installed ({wanted})",
                fix=f"apt-get install postgresql-{version}, or remove {cluster.home} to start afresh",
            )
        return wanted
    found = sorted((p for p in root.glob("*/bin") if (p / "pg_ctl").is_file()), key=lambda p: _version_key(p.parent))
    if not found:
        raise PostgresError(
            f"PostgreSQL is not installed (no {root}/<version>/bin/pg_ctl)",
            fix="./setup.sh --tests installs it (as root), or: apt-get install postgresql",
        )
    return found[-1]


def _run_as() -> list[str]:
    """The command prefix that runs a PostgreSQL program as the cluster's owner."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"running as root, and there is no `{SYSTEM_USER}` system user to run PostgreSQL as "
            "(PostgreSQL refuses root)",
            fix="apt-get install postgresql creates it",
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresError("running as root, and `runuser` is missing", fix="apt-get install util-linux")
    return [runuser, "-u", SYSTEM_USER, "--"]


def _owner() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    entry = pwd.getpwnam(SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _pg(
    cluster: Cluster, program: str, *args: str, stdin: str | None = None, timeout: float = 180, detach: bool = False
) -> subprocess.CompletedProcess:
    """Run one of the cluster's programs as its owner; its output is returned, never printed."""
    command = [*_run_as(), str(bin_dir(cluster) / program), *args]
    try:
        return subprocess.run(
            command,
            cwd=cluster.home,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=detach,
        )
    except subprocess.TimeoutExpired:
        raise PostgresError(f"`{program}` took over {timeout:.0f} s", fix=f"read {cluster.log}") from None


def _check(done: subprocess.CompletedProcess, what: str, cluster: Cluster) -> None:
    if done.returncode != 0:
        from tasks.common.processes import tail

        log = tail(cluster.log, 20) if cluster.log.exists() else None
        raise PostgresError(
            f"{what} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}"
            + (f"\n{cluster.log}:\n{log}" if log else ""),
            fix="read the output above",
        )


# -- the password and the URL -----------------------------------------------------------------


def password(cluster: Cluster) -> str:
    """The `prefect` role's password: generated on first use, then read from its 0600 file."""
    path = cluster.password_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 from the start (no window where it is readable), and never overwritten.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise PostgresError(
            f"{path} is readable by others (mode {path.stat().st_mode & 0o777:o})", fix=f"chmod 600 {path}"
        )
    return path.read_text().strip()


def connection_url(port: int, secret: str, host: str = "127.0.0.1") -> URL:
    """Prefect's database URL. str() masks the password (`***`); only `server_env` renders it in full."""
    return URL.create("postgresql+asyncpg", username=ROLE, password=secret, host=host, port=port, database=DATABASE)


def server_env(url: URL) -> dict[str, str]:
    """The one place the password leaves its file: the Prefect server's environment."""
    return {"PREFECT_API_DATABASE_CONNECTION_URL": url.render_as_string(hide_password=False)}


# -- set up, start, stop ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _prepare_home(cluster: Cluster) -> None:
    """<state>/postgres, owned by the cluster's user, 0700; refuse clearly if that user cannot reach it."""
    cluster.home.mkdir(parents=True, exist_ok=True)
    uid, gid = _owner()
    os.chown(cluster.home, uid, gid)
    os.chmod(cluster.home, 0o700)
    if os.geteuid() == 0:
        reach = subprocess.run([*_run_as(), "test", "-w", str(cluster.home)], capture_output=True)
        if reach.returncode != 0:
            raise PostgresError(
                f"the `{SYSTEM_USER}` system user, which PostgreSQL runs as under root, cannot reach "
                f"{cluster.home}: a parent directory is closed to other users",
                fix="use a state directory (--dir) whose parents are all searchable by others "
                "(chmod o+x), e.g. under /var/tmp",
            )
    cluster.socket_dir.mkdir(exist_ok=True)
    os.chown(cluster.socket_dir, uid, gid)
    os.chmod(cluster.socket_dir, 0o700)


SETTINGS = """
# deployments/postgres.py: loopback only, SCRAM passwords, the socket in the state directory.
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket_dir}'
password_encryption = 'scram-sha-256'
"""


def init(cluster: Cluster) -> None:
    """initdb, once: local socket by peer (the owner only), TCP by SCRAM password."""
    _prepare_home(cluster)
    if cluster.initialized():
        return
    done = _pg(
        cluster,
        "initdb",
        "-D",
        str(cluster.data),
        "--auth-local=peer",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
    )
    _check(done, "initdb", cluster)
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write(SETTINGS.format(socket_dir=cluster.socket_dir))


# Idempotent: run after every start, so a cluster whose first setup was interrupted is completed.
# The password travels on psql's stdin, never in a command line (visible in `ps`) or the log
# (log_statement is off by default); the server stores only its SCRAM verifier.
SETUP_SQL = """\\set ON_ERROR_STOP on
SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')\\gexec
ALTER ROLE {role} PASSWORD '{secret}';
SELECT 'CREATE DATABASE {database} OWNER {role}'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}')\\gexec
"""


def start(cluster: Cluster) -> tuple[ProcessRef, URL]:
    """Start the cluster (init it first if new) or find it running; return its postmaster and the URL."""
    init(cluster)
    secret = password(cluster)
    running = cluster.running()
    if running is None:
        port = _free_port()
        # Its own session: a Ctrl-C in the shell that ran `up` does not reach the database.
        done = _pg(
            cluster,
            "pg_ctl",
            "start",
            "-D",
            str(cluster.data),
            "-l",
            str(cluster.log),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            f"-p {port}",
            detach=True,
            timeout=START_TIMEOUT_S + 30,
        )
        _check(done, "pg_ctl start", cluster)
        running = cluster.running()
        if running is None:
            raise PostgresError(
                f"PostgreSQL reported started but no postmaster runs for {cluster.data}", fix=f"read {cluster.log}"
            )
    ref, port = running
    done = _pg(
        cluster,
        "psql",
        "-X",
        "-q",
        "-h",
        str(cluster.socket_dir),
        "-p",
        str(port),
        "-d",
        "postgres",
        "-f",
        "-",
        stdin=SETUP_SQL.format(role=ROLE, database=DATABASE, secret=secret),
        timeout=60,
    )
    _check(done, "creating the prefect role and database", cluster)
    return ref, connection_url(port, secret)


def stop(cluster: Cluster, timeout: float = 60) -> bool:
    """pg_ctl stop -m fast (open sessions are rolled back, no wait for clients); True if one was running."""
    running = cluster.running()
    if running is None:
        return False
    done = _pg(
        cluster,
        "pg_ctl",
        "stop",
        "-D",
        str(cluster.data),
        "-m",
        "fast",
        "-w",
        "-t",
        str(int(timeout)),
        timeout=timeout + 30,
    )
    _check(done, "pg_ctl stop", cluster)
    return True


def describe(cluster: Cluster) -> str:
    running = cluster.running()
    if running is None:
        return f"postgres: not running (data {cluster.data})" if cluster.initialized() else "postgres: no cluster"
    ref, port = running
    return f"postgres: pid {ref.pid}, 127.0.0.1:{port}, data {cluster.data}"
