"""Simulated hosts on one machine: network namespaces on a bridge, each host's
processes in a CPU cgroup of its own (cgroup v1) limited to a slice of a core.

Used by the scaling and ten-host tests and by ``bench/scaling.py``, so it
imports neither pytest nor the test fixtures (PgBouncer's harness is
imported only when a PgBouncer runs). Needs root, ``ip`` (iproute2),
``runuser``, ``redis-server`` and PostgreSQL's server binaries; see
:func:`permitted`. :meth:`Hosts.down` removes every namespace, veth, cgroup,
process and file it made, and is safe to call after a partial :meth:`up`.

A :class:`Hosts` has a ``db`` host (its own PostgreSQL and redis-server,
listening on its address only, and on request a PgBouncer in front of that
PostgreSQL) and any number of hosts added later; the calling process (the
controller) reaches them through a veth of its own on the bridge.
:class:`ConnectionSampler` counts the server's connections by where they
come from while hosts work.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support import ROOT
from tests.support.stack import celery_worker_argv, gunicorn_argv

if TYPE_CHECKING:
    from tests.support.pgbouncer import PgBouncer

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CPU = Path("/sys/fs/cgroup/cpu")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
#: The CFS period every slice uses (µs): 100 ms, the kernel's default.
PERIOD_US = 100_000
#: Where PgBouncer listens on the db host, when it runs.
PGBOUNCER_PORT = 6432
#: The source :meth:`Hosts.connections` gives the process running the hosts.
CONTROLLER = "controller"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def permitted() -> str | None:
    """Why simulated hosts cannot run here, or None when they can."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2"
    probe = f"sfprobe{os.getpid()}"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as error:
        return f"ip netns is not permitted here: {error}"
    for tool in ("redis-server", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not (PG_BIN / "postgres").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN}"
    if not (CPU / "cpu.cfs_quota_us").exists() or not (CPUACCT / "cpuacct.usage").exists():
        return "cgroup v1 cpu and cpuacct controllers are not mounted under /sys/fs/cgroup"
    return None


class CpuSlice:
    """A cgroup (v1, in both the cpu and cpuacct hierarchies) whose processes
    together get at most ``fraction`` of one core; ``fraction=None`` leaves it
    unlimited (for start-up) until :meth:`limit`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cpu = CPU / name
        self.acct = CPUACCT / name
        self.cpu.mkdir(exist_ok=True)
        self.acct.mkdir(exist_ok=True)
        (self.cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))

    def limit(self, fraction: float | None) -> None:
        quota = -1 if fraction is None else max(1000, round(fraction * PERIOD_US))
        (self.cpu / "cpu.cfs_quota_us").write_text(str(quota))

    @property
    def quota_fraction(self) -> float | None:
        quota = int((self.cpu / "cpu.cfs_quota_us").read_text())
        period = int((self.cpu / "cpu.cfs_period_us").read_text())
        return None if quota < 0 else quota / period

    def enter(self, pid: int) -> None:
        for group in (self.cpu, self.acct):
            (group / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(p) for p in (self.cpu / "cgroup.procs").read_text().split()]

    def usage(self) -> float:
        """CPU seconds the group's processes have used."""
        return int((self.acct / "cpuacct.usage").read_text()) / 1e9

    def throttled(self) -> tuple[int, float]:
        """(periods throttled, seconds throttled) from cpu.stat."""
        stat = dict(
            line.split() for line in (self.cpu / "cpu.stat").read_text().splitlines() if line
        )
        return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_time", 0)) / 1e9

    def remove(self) -> None:
        """Kill what is left in the group, then remove it."""
        for group in (self.cpu, self.acct):
            if not group.exists():
                continue
            for _ in range(50):
                pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            try:
                group.rmdir()
            except OSError:
                pass


class Hosts:
    """Namespaced hosts on one bridge, with a database host ``db``."""

    def __init__(self, subnet: str = "10.232.0", *, max_connections: int = 200) -> None:
        self.subnet = subnet
        self.tag = uuid.uuid4().hex[:5]
        self.folder = Path(tempfile.mkdtemp(prefix="slidefarm-hosts-"))
        os.chmod(self.folder, 0o755)
        self.output = self.folder / "output"
        self.output.mkdir()
        self.switch = f"sf{self.tag}-sw"
        self.client_if = f"sf{self.tag}c"
        self.hosts: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.slices: dict[str, CpuSlice] = {}
        self.max_connections = max_connections
        self.db_address = f"{subnet}.2"
        #: The PostgreSQL every host uses. A connection pooler in front of
        #: the database (PgBouncer) replaces this URL with its own address:
        #: :meth:`start_db` sets it, everything else reads it.
        self.db_url = f"postgresql://postgres@{self.db_address}:5432/slidefarm"
        #: The server itself, for counting its connections whatever is in front.
        self.server_url = self.db_url
        #: PgBouncer on the db host, when :meth:`start_db` started one.
        self.bouncer: PgBouncer | None = None
        self.broker = f"redis://{self.db_address}:6379/0"
        self._next = 10

    def ns(self, host: str) -> str:
        return f"sf{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts[host]}"

    # -- network -------------------------------------------------------------

    def up(self) -> None:
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        peer = f"sf{self.tag}cp"
        sh("ip", "link", "add", self.client_if, "type", "veth", "peer", "name", peer)
        sh("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.client_if)
        sh("ip", "link", "set", self.client_if, "up")
        sh("ip", "link", "set", peer, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", peer, "master", "br0")
        sh("ip", "-n", self.switch, "link", "set", peer, "up")
        self.add_host("db", last=2)

    def add_host(self, host: str, last: int | None = None) -> str:
        """A new namespace on the bridge; returns its address."""
        if last is None:
            last = self._next
            self._next += 1
        assert last < 255 and host not in self.hosts
        self.hosts[host] = last
        ns, inner, outer = self.ns(host), f"sf{self.tag}{last}h", f"sf{self.tag}{last}p"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "-n", ns, "link", "set", inner, "name", "eth0")
        sh("ip", "-n", ns, "addr", "add", f"{self.subnet}.{last}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "link", "set", outer, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", outer, "master", "br0")
        sh("ip", "-n", self.switch, "link", "set", outer, "up")
        return self.address(host)

    def cpu_slice(self, host: str) -> CpuSlice:
        """The host's CPU cgroup (made on first use, unlimited until limited)."""
        if host not in self.slices:
            self.slices[host] = CpuSlice(f"slidefarm-{self.tag}-{host}")
        return self.slices[host]

    # -- processes -------------------------------------------------------------

    def spawn(
        self,
        name: str,
        host: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        cgroup: CpuSlice | None = None,
    ) -> subprocess.Popen[bytes]:
        """Run ``argv`` in ``host``'s namespace (and ``cgroup``, entered
        before exec, so every child it forks is in it too)."""

        def enter() -> None:
            if cgroup is not None:
                cgroup.enter(os.getpid())

        with open(self.folder / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *argv],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=enter,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def start_db(self, pgbouncer_pool: int | None = None) -> None:
        """PostgreSQL and redis-server on the ``db`` host, the schema migrated
        (on the server itself). With ``pgbouncer_pool``, also PgBouncer on
        the db host in transaction-pooling mode with that
        ``default_pool_size``, and :attr:`db_url`, which every host uses,
        through it."""
        data = self.folder / "pg"
        shutil.chown(self.folder, "postgres")
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.subnet}.0/24 trust\n")
        self.spawn(
            "postgres",
            "db",
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-c",
                f"listen_addresses={self.db_address}",
                "-c",
                "port=5432",
                "-c",
                f"unix_socket_directories={self.folder}",
                "-c",
                f"max_connections={self.max_connections}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
            ],
        )
        self.spawn(
            "redis",
            "db",
            [
                "redis-server",
                "--bind",
                self.db_address,
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
                str(self.folder),
                "--maxclients",
                "10000",
            ],
        )
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", self.db_address, "-p", "5432"],
                capture_output=True,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start:\n" + self.log("postgres"))
            time.sleep(0.2)
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "psql"),
                "-h",
                self.db_address,
                "-c",
                "CREATE DATABASE slidefarm",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        from storage.migrate import upgrade

        upgrade(self.server_url)
        if pgbouncer_pool is not None:
            from tests.support.pgbouncer import PgBouncer

            self.bouncer = PgBouncer(
                self.server_url,
                pgbouncer_pool,
                listen=self.db_address,
                port=PGBOUNCER_PORT,
                prefix=["ip", "netns", "exec", self.ns("db")],
                log_connections=True,
            )
            self.bouncer.start()
            self.db_url = self.bouncer.url("slidefarm")

    def source(self, address: str) -> str:
        """Who connects from ``address``: a host's name (``db`` is PgBouncer,
        when it runs), or :data:`CONTROLLER`, the process running the hosts."""
        if address == f"{self.subnet}.1":
            return CONTROLLER
        for host, last in self.hosts.items():
            if address == f"{self.subnet}.{last}":
                return "pgbouncer" if host == "db" and self.bouncer is not None else host
        return address

    def connections(self) -> Counter[str]:
        """Client connections to the ``slidefarm`` database the PostgreSQL
        server has open now, by :meth:`source`. Through PgBouncer the hosts'
        connections all come from ``pgbouncer``; directly, from each host."""
        with ConnectionSampler(self, every=None) as sampler:
            return sampler.sample()

    def host_connections(self, counts: Counter[str]) -> int:
        """Of ``counts`` (by source), the connections the hosts cause: all but
        the controller's."""
        return sum(n for source, n in counts.items() if source != CONTROLLER)

    # -- slidefarm processes ---------------------------------------------------

    def worker_argv(self, name: str) -> list[str]:
        return celery_worker_argv(name, 1)

    def api_argv(self, host: str) -> list[str]:
        return gunicorn_argv(f"{self.address(host)}:8000", "--timeout", "60", threads=4)

    def wait_ready(self, names: Sequence[str], timeout: float) -> None:
        """Wait until each named celery worker has logged that it is ready."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in list(pending):
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{self.log(name)[-3000:]}")
                if " ready." in self.log(name):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not ready: {sorted(pending)}")
            time.sleep(0.2)

    # -- teardown ----------------------------------------------------------------

    def down(self) -> None:
        # Unlimited first: a process held to 0.05 core takes seconds to shut
        # down. Then every process at once, not one after another.
        for group in self.slices.values():
            try:
                group.limit(None)
            except OSError:
                pass
        if self.bouncer is not None:
            self.bouncer.stop()
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)  # a test may have stopped it
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
            time.sleep(0.1)
        for name in list(self.procs):
            self.stop(name, sig=signal.SIGKILL, timeout=5)
        for group in self.slices.values():
            group.remove()
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)
        subprocess.run(["ip", "link", "del", self.client_if], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


class ConnectionSampler:
    """In a ``with``: a thread counts the PostgreSQL server's connections to
    the ``slidefarm`` database every ``every`` seconds by source (see
    :meth:`Hosts.source`), through one connection of its own (not counted),
    keeping the peaks. ``every=None``: no thread, :meth:`sample` on demand."""

    def __init__(self, hosts: Hosts, every: float | None = 0.25) -> None:
        self.hosts = hosts
        self.every = every
        #: The most connections seen at once from the hosts (all sources but
        #: the controller), and from each source.
        self.peak = 0
        self.peak_by_source: Counter[str] = Counter()
        self.samples = 0
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ConnectionSampler:
        import psycopg2

        self._conn = psycopg2.connect(self.hosts.server_url, connect_timeout=10)
        self._conn.autocommit = True
        if self.every is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._conn.close()

    def _run(self) -> None:
        assert self.every is not None
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> Counter[str]:
        """The connections now, by source; the peaks updated."""
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT host(client_addr) FROM pg_stat_activity WHERE datname = 'slidefarm'"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            counts = Counter(self.hosts.source(str(addr)) for (addr,) in cur.fetchall())
        self.samples += 1
        self.peak = max(self.peak, self.hosts.host_connections(counts))
        for source, n in counts.items():
            self.peak_by_source[source] = max(self.peak_by_source[source], n)
        return counts
