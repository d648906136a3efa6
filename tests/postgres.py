"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a cluster
`initdb`-ed in a temporary folder, listening on loopback only, stopped at the end.

PostgreSQL refuses to run as root, so when the tests run as root (CI, containers) the
server runs as the unprivileged `postgres` user that Debian's package creates, with its
data folder owned by that user (under /tmp, which that user can reach; pytest's own
tmp_path is private to root). Run as anyone else, it runs as that user.

The cluster trades durability for speed (fsync off): it lives for one test session.
Tests get a fresh database each, copied from a template that the store's schema was
applied to once (`CREATE DATABASE ... TEMPLATE`), so no test sees another's rows.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

# The make target sets this: then a missing PostgreSQL fails the tests instead of skipping.
REQUIRE_ENV = "GRAFT_TEST_POSTGRES"
SERVER_USER = "postgres"  # the user Debian's postgresql package creates
TEMPLATE = "graft_template"


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: Debian keeps them under
    /usr/lib/postgresql/<version>/bin (the newest version wins), off PATH; elsewhere they
    are usually on PATH."""
    versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if versions:
        newest = max(versions, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
        return Path(newest).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    bindir: Path
    root: Path  # the temporary folder: data/, server.log
    port: int = 0
    _as_user: list[str] = field(default_factory=list)
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def major(self) -> int:
        """The major version of the binaries ("initdb (PostgreSQL) 15.18 ..." -> 15)."""
        out = subprocess.run(
            [str(self.bindir / "initdb"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        found = re.search(r"\(PostgreSQL\) (\d+)", out)
        return int(found.group(1)) if found else 0

    def _run(self, *argv: str) -> None:
        cmd = [*self._as_user, *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        if os.geteuid() == 0:
            # runuser (util-linux) drops root for the server's processes.
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
        # The default collation of the test databases is a language's (ICU English, from
        # PostgreSQL 15 on), not bytes: the store's sorted columns say COLLATE "C" themselves.
        icu = ["--locale-provider=icu", "--icu-locale=en-US"] if self.major() >= 15 else []
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            *icu,
            "--no-sync",
        )
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "32MB",
            "dynamic_shared_memory_type": "mmap",  # no /dev/shm needed (small in containers)
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = '{v}'\n" for k, v in settings.items())
        for attempt in range(3):  # a free port may be taken between the probe and the start
            self.port = free_port()
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log_path),
                    "-o",
                    f"-p {self.port}",
                )
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        self._create_template()

    def _create_template(self) -> None:
        from graft.store.postgres import PostgresJobStore

        self.execute(f"CREATE DATABASE {TEMPLATE}")
        PostgresJobStore(self.url(TEMPLATE)).close()  # the schema, applied once

    def execute(self, sql: str) -> None:
        """One statement as the superuser on the maintenance database (CREATE DATABASE
        cannot run in a transaction: autocommit)."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self, *, empty: bool = False) -> str:
        """The URL of a fresh database: a copy of the migrated template, or `empty`."""
        name = f"graft_test_{next(self._names)}"
        template = "template0" if empty else TEMPLATE
        for attempt in itertools.count():
            try:
                self.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
                break
            except psycopg.errors.ObjectInUse:
                # A store of the template (or of a previous copy) is still disconnecting.
                if attempt == 50:
                    raise
                time.sleep(0.05)
        return self.url(name)

    def stop(self) -> None:
        if self.port:
            self._run(str(self.bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.data))
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer | str:
    """A running server, or why there is none (its binaries are not installed)."""
    bindir = find_bindir()
    if bindir is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql; make test does)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no user {SERVER_USER!r} to run PostgreSQL as"
    server = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="graft-pg-")))
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
