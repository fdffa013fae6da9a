"""A throwaway PostgreSQL server for the tests: `initdb` in a temporary folder, `pg_ctl start` on a free
local port (as the `postgres` system user when the tests run as root, since `initdb` refuses root), a
database per test, and `pg_ctl stop` afterwards whatever happened.

The server asks for a password over TCP (scram-sha-256), so that the tests see how pccore shows a URL
that holds one. The server programs are found on PATH or in Debian's /usr/lib/postgresql/<version>/bin;
`find_programs` says why not when they are missing (the tests are then skipped with that reason).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PASSWORD = "pg-s3cret-w0rd"
"""The test server's password: it must never appear in what pccore prints."""
USER = "pccore"
COMMAND_TIMEOUT_S = 60
"""The longest any of initdb, pg_ctl or psql may take; a server that hangs fails the test, not the suite."""


def find_programs() -> tuple[Path | None, str]:
    """The folder of `initdb` and `pg_ctl`, or None and why they cannot be used."""
    folders = []
    found = shutil.which("pg_ctl")
    if found:
        folders.append(Path(found).resolve().parent)
    folders += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in folders:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            break
    else:
        return None, ("the PostgreSQL server programs (initdb, pg_ctl) are not installed: "
                      "apt-get install postgresql (bash .ci/run installs them)")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return None, "the tests run as root and there is no postgres system user to run initdb as"
        if shutil.which("runuser") is None:
            return None, "the tests run as root and runuser (to run initdb as postgres) is missing"
    return folder, ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in its own temporary data folder, listening on 127.0.0.1:`port` only."""

    def __init__(self, programs: Path) -> None:
        self.programs = programs
        self.root = Path(tempfile.mkdtemp(prefix="pccore-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.as_root = os.geteuid() == 0
        if self.as_root:  # initdb refuses root: the folder belongs to the postgres user
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o755)
        self._initdb()

    def _run(self, *command: str, timeout: float = COMMAND_TIMEOUT_S, check: bool = True,
             ) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=timeout, check=check,
                              cwd=self.root)

    def _initdb(self) -> None:
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.as_root:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(password_file, user.pw_uid, user.pw_gid)
        self._run(str(self.programs / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        password_file.unlink()

    def start(self) -> None:
        """Start the server (on the port it had before, after a stop); waits until it accepts connections."""
        for attempt in range(3):
            port = self.port or free_port()
            options = f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
            result = self._run(str(self.programs / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o",
                               options, "-w", "-t", "30", "start", check=False)
            if result.returncode == 0:
                self.port = port
                return
            if self.port or attempt == 2:  # the port is someone else's now, or three ports in a row were
                raise RuntimeError(f"pg_ctl start failed: {result.stdout}{result.stderr}\n{self.server_log()}")

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m MODE`; waits until the server is gone."""
        self._run(str(self.programs / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        result = self._run(str(self.programs / "pg_ctl"), "-D", str(self.data), "status", check=False)
        return result.returncode == 0

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` through psql on the server's socket (trusted locally); its output."""
        result = self._run(str(self.programs / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", USER,
                           "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql)
        return result.stdout

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL (psycopg 3, with the password)."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        """Stop the server if it runs (immediately) and delete its folder."""
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(programs: Path) -> Iterator[PostgresServer]:
    """A started server, stopped and removed on leaving the block (also when the block raised)."""
    server = PostgresServer(programs)
    try:
        server.start()
        yield server
    finally:
        server.remove()


def wait_until(condition, timeout: float, what: str, poll: float = 0.2) -> None:
    """Poll `condition()` until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(poll)
