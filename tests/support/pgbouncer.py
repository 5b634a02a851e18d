"""A private PgBouncer (Debian's) in front of the test PostgreSQL, in
transaction-pooling mode on a spare port (or on a simulated host's address,
inside its network namespace: ``tests/support/hosts.py``): its configuration
generated, trust authentication through a userlist, its server pool small.
PgBouncer refuses to run as root, so as root it runs as ``postgres`` in a
folder that user owns. Also: how many server connections a database has
(``pg_stat_activity``)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy import text

from tests.support.services import missing
from tests.support.stack import free_port

#: Who runs PgBouncer when the tests run as root.
RUN_AS = "postgres"


def pgbouncer_binary() -> str:
    """PgBouncer's path (Debian puts it in /usr/sbin, off a user's PATH)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        missing("PgBouncer is not installed (make pgbouncer, or apt-get install pgbouncer)")
    return found


def pgbouncer_config(
    port: int,
    server: str,
    user: str,
    folder: Path,
    pool_size: int,
    listen: str = "127.0.0.1",
    log_connections: bool = False,
) -> str:
    """The configuration: every database of ``server`` (``host:port``) on
    ``listen:port``, transaction pooling, ``pool_size`` server connections
    per database and user; each client's login logged with
    ``log_connections``."""
    host, _, server_port = server.partition(":")
    return "\n".join(
        [
            "[databases]",
            f"* = host={host} port={server_port or 5432}",
            "",
            "[pgbouncer]",
            f"listen_addr = {listen}",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {folder / 'userlist.txt'}",
            f"admin_users = {user}",
            "pool_mode = transaction",
            f"default_pool_size = {pool_size}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "max_client_conn = 2000",
            # A client waits for a server connection rather than failing.
            "query_wait_timeout = 60",
            "server_idle_timeout = 60",
            f"log_connections = {int(log_connections)}",
            "log_disconnections = 0",
            "",
        ]
    )


class PgBouncer:
    """PgBouncer in the foreground; ``url(database)`` reaches a database
    through it."""

    def __init__(
        self,
        server_url: str,
        pool_size: int = 5,
        *,
        listen: str = "127.0.0.1",
        port: int | None = None,
        prefix: Sequence[str] = (),
        log_connections: bool = False,
    ) -> None:
        """``server_url``: any ``postgresql://user@host:port/db`` URL of the
        server (its user is the one clients connect as). PgBouncer listens
        on ``listen:port`` (a free port by default) and runs as ``prefix``
        + its command line (``ip netns exec <ns>`` runs it on a simulated
        host). ``log_connections``: log each client's login (see
        :meth:`clients_seen`)."""
        self.binary = pgbouncer_binary()
        rest = server_url.split("://", 1)[1]
        self.user, _, location = rest.rpartition("@")
        self.user = self.user.split(":")[0] or "postgres"
        self.server = location.split("/", 1)[0]
        self.listen = listen
        self.port = free_port() if port is None else port
        self.prefix = list(prefix)
        self.pool_size = pool_size
        self.folder = Path(tempfile.mkdtemp(prefix="slidefarm-pgbouncer-"))
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(RUN_AS)
            except KeyError:
                missing(f"PgBouncer refuses root and there is no {RUN_AS!r} user to run it")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self.as_user = RUN_AS
        (self.folder / "userlist.txt").write_text(f'"{self.user}" ""\n')
        self.config_path = self.folder / "pgbouncer.ini"
        self.config_path.write_text(
            pgbouncer_config(
                self.port, self.server, self.user, self.folder, pool_size, listen, log_connections
            )
        )
        self.log_path = self.folder / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        """``postgresql://`` URL of ``database`` through PgBouncer."""
        return f"postgresql://{self.user}@{self.listen}:{self.port}/{database}"

    def start(self) -> None:
        args = [self.binary, str(self.config_path)]
        if self.as_user is not None:
            for path in self.folder.iterdir():
                os.chmod(path, 0o644)
            args = ["runuser", "-u", self.as_user, "--", *args]
        args = [*self.prefix, *args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                psycopg2.connect(self.url("pgbouncer"), connect_timeout=1).close()
                return
            except psycopg2.Error:
                time.sleep(0.05)
        raise AssertionError(f"PgBouncer did not start:\n{self.log_path.read_text()}")

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console (``POOLS``, ``SERVERS``, ...)."""
        conn = psycopg2.connect(self.url("pgbouncer"), connect_timeout=3)
        conn.autocommit = True  # the console takes no transactions
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW {what}")
                names = [c.name for c in cur.description or []]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()

    def server_connections(self) -> int:
        """Server connections PgBouncer holds now, over all its pools
        (``SHOW POOLS``: active, idle, used, being tested or logging in)."""
        states = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
        return sum(
            int(row.get(state, 0) or 0)
            for row in self.show("POOLS")
            if row["database"] != "pgbouncer"
            for state in states
        )

    def clients_seen(self, database: str) -> set[str]:
        """The address of every client that ever logged in to ``database``
        (from the log: needs ``log_connections``)."""
        pattern = re.compile(rf" {re.escape(database)}/[^@ ]+@([0-9.]+):\d+ login attempt")
        return set(pattern.findall(self.log_path.read_text(errors="replace")))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # runuser and PgBouncer
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)


def pgbouncer(server_url: str, pool_size: int = 5) -> Iterator[PgBouncer]:
    """A started PgBouncer, stopped after (for a fixture to yield from)."""
    bouncer = PgBouncer(server_url, pool_size)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()


def server_connections(admin: Any, database: str) -> list[tuple[str, str]]:
    """(application_name, state) of every server connection to ``database``
    now, through ``admin`` (an engine on another database of the server)."""
    with admin.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT application_name, coalesce(state, '') FROM pg_stat_activity"
                " WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        ).all()
    return [(str(name), str(state)) for name, state in rows]
