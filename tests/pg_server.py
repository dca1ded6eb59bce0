"""A throwaway PostgreSQL server for the tests: a real cluster in a temporary directory.

`initdb` makes the cluster, `pg_ctl` starts it listening on 127.0.0.1 on a free port (its unix
socket in the same directory), password authentication over TCP, fsync off (nothing in it must
survive). As root, the server runs as the unprivileged `postgres` user (PostgreSQL refuses root).
`stop()` kills it and removes the directory; the session fixture in conftest.py always calls it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

USER = "harness"
PASSWORD = "s3cret-pg-Pa55"  # a distinctive string, so tests can look for leaks of it


class PgServerError(RuntimeError):
    """The server could not be set up; the message says why (the tests fail with it, never skip)."""


def pg_binary(name: str) -> str:
    """`initdb` / `pg_ctl` from PATH, else from Debian's /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        raise PgServerError(f"{name} not found: install PostgreSQL (apt-get install postgresql); .ci/run does")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ptb-harness-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self._as_user: list[str] = []
        self._started = False

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PgServer:
        try:
            self._prepare_folder()
            pwfile = self.folder / "pwfile"
            pwfile.write_text(PASSWORD + "\n")
            self._run(pg_binary("initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--no-sync")
            pwfile.unlink()
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off " \
                      "-c full_page_writes=off -c synchronous_commit=off"
            self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w",
                      "-t", "60", "start")
            self._started = True
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_folder(self) -> None:
        if os.geteuid() != 0:
            return
        # PostgreSQL will not run as root: hand the folder to the unprivileged postgres user.
        if shutil.which("runuser") is None:
            raise PgServerError("running as root needs runuser (util-linux) to start PostgreSQL as postgres")
        try:
            shutil.chown(self.folder, "postgres", "postgres")
        except (LookupError, PermissionError) as exc:
            raise PgServerError(f"cannot give {self.folder} to the postgres user: {exc}") from exc
        self.folder.chmod(0o700)
        self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as_user, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PgServerError(f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
                                f"\n{log}")

    def new_database(self, prefix: str = "t") -> str:
        """Create an empty database; return its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (immediately: nothing in it must survive) and remove its folder."""
        try:
            if self._started:
                subprocess.run([*self._as_user, pg_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                "-w", "stop"], capture_output=True, timeout=60)
                self._started = False
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
