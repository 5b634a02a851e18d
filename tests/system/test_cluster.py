"""Many render hosts, one view: a cluster on separate network hosts.

Linux network namespaces joined by a bridge (in a namespace of its own) make
the hosts: ``db`` (its own PostgreSQL and redis-server, listening on its
address only), ``api`` and ``api2`` (gunicorn), and ``render1..3`` (``celery
-A workers worker -n render@hostN``); the test itself talks to them from a
veth of its own. The output folder is shared by path, standing in for a
shared volume. Traffic stays between the test's own namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import JobStore
from storage.files import published_attempt
from tests.support import ROOT
from tests.support.clients import admin_token, bearer
from tests.support.decks import slow_deck, small_deck
from tests.support.services import alembic_upgrade, missing
from tests.support.stack import stack_env

pytestmark = pytest.mark.e2e

SUBNET = "10.231.77"
HOSTS = {"db": 2, "api": 3, "api2": 4, "render1": 11, "render2": 12, "render3": 13}
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RECOVERY = {
    "SLIDEFARM_HEARTBEAT_INTERVAL": "0.3",
    "SLIDEFARM_STALE_AFTER": "3",
    "SLIDEFARM_DISPATCH_TIMEOUT": "3",
    "SLIDEFARM_SWEEP_INTERVAL": "0.3",
    "SLIDEFARM_ORPHAN_SCAN_INTERVAL": "1",
    "SLIDEFARM_RETRY_BACKOFF": "0.3",
    "SLIDEFARM_BROKER_SEND_TIMEOUT": "1",
}


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def netns_permitted() -> str | None:
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
    return None


class Cluster:
    def __init__(self) -> None:
        self.token = ""  # an admin key, once the database exists
        self.tag = uuid.uuid4().hex[:5]
        self.folder = Path(tempfile.mkdtemp(prefix="slidefarm-cluster-"))
        os.chmod(self.folder, 0o755)
        self.output = self.folder / "output"
        self.output.mkdir()
        self.switch = f"sf{self.tag}-sw"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.db_url = f"postgresql://postgres@{SUBNET}.2:5432/slidefarm"
        self.broker = f"redis://{SUBNET}.2:6379/0"
        self.client_if = f"sf{self.tag}c"

    def ns(self, host: str) -> str:
        return f"sf{self.tag}-{host}"

    def port(self, host: str) -> str:
        return f"sf{self.tag}{HOSTS[host]}p"

    def url(self, host: str) -> str:
        return f"http://{SUBNET}.{HOSTS[host]}:8000"

    # -- network -------------------------------------------------------------

    def up(self) -> None:
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for host, last in HOSTS.items():
            ns, inner, outer = self.ns(host), f"sf{self.tag}{last}h", self.port(host)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "-n", ns, "link", "set", inner, "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{last}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "link", "set", outer, "netns", self.switch)
            sh("ip", "-n", self.switch, "link", "set", outer, "master", "br0")
            sh("ip", "-n", self.switch, "link", "set", outer, "up")
        # The test's own leg onto the bridge.
        peer = f"sf{self.tag}cp"
        sh("ip", "link", "add", self.client_if, "type", "veth", "peer", "name", peer)
        sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", self.client_if)
        sh("ip", "link", "set", self.client_if, "up")
        sh("ip", "link", "set", peer, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", peer, "master", "br0")
        sh("ip", "-n", self.switch, "link", "set", peer, "up")

    def cut(self, host: str) -> None:
        sh("ip", "-n", self.switch, "link", "set", self.port(host), "down")

    def heal(self, host: str) -> None:
        sh("ip", "-n", self.switch, "link", "set", self.port(host), "up")

    # -- processes -------------------------------------------------------------

    def spawn(
        self, name: str, host: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.folder / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *argv],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

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

    def start_db(self) -> None:
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
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
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
                f"listen_addresses={SUBNET}.2",
                "-c",
                "port=5432",
                "-c",
                f"unix_socket_directories={self.folder}",
            ],
        )
        self.spawn(
            "redis",
            "db",
            [
                "redis-server",
                "--bind",
                f"{SUBNET}.2",
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
            ],
        )
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", f"{SUBNET}.2", "-p", "5432"], capture_output=True
            )
            if ready.returncode == 0:
                break
            assert time.monotonic() < deadline, self.log("postgres")
            time.sleep(0.2)
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "psql"),
                "-h",
                f"{SUBNET}.2",
                "-c",
                "CREATE DATABASE slidefarm",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        alembic_upgrade(self.db_url)
        self.token = admin_token(self.db_url)

    def env(self) -> dict[str, str]:
        return stack_env(
            DATABASE_URL=self.db_url,
            CELERY_BROKER_URL=self.broker,
            SLIDEFARM_OUTPUT_DIR=str(self.output),
            **RECOVERY,
        )

    def start_api(self, host: str) -> None:
        self.spawn(
            host,
            host,
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "gthread",
                "-w",
                "2",
                "--threads",
                "8",
                "-b",
                f"{SUBNET}.{HOSTS[host]}:8000",
                "--timeout",
                "60",
                "api:create_app()",
            ],
            self.env(),
        )
        deadline = time.monotonic() + 60
        last: Any = None
        while True:
            try:
                last = self.request(host, "GET", "/readyz", timeout=5)
                if last[0] == 200:
                    return
            except OSError as error:
                last = error
            assert time.monotonic() < deadline, f"{last}\n{self.log(host)[-2000:]}"
            time.sleep(0.2)

    def start_render(self, n: int) -> None:
        self.spawn(
            f"render{n}",
            f"render{n}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "-n",
                f"render@host{n}",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            self.env(),
        )

    def request(
        self, host: str, method: str, path: str, body: Any = None, timeout: float = 60
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url(host) + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **bearer(self.token)},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def down(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.stop(name, timeout=5)
        for host in HOSTS:
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)
        subprocess.run(["ip", "link", "del", self.client_if], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    reason = netns_permitted()
    if reason is not None:
        missing(f"the cluster test cannot run: {reason}")
    cluster = Cluster()
    try:
        cluster.up()
        cluster.start_db()
        yield cluster
    finally:
        from storage.db import dispose_engines

        dispose_engines()
        cluster.down()


def wait_all(store: JobStore, ids: list[str], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            jobs = [store.get(i) for i in ids]
            if all(j.status.is_final for j in jobs):
                return jobs
        except Exception:
            pass  # the database may be cut off right now
        assert time.monotonic() < deadline, "jobs did not finish"
        time.sleep(0.3)


def api_view(cluster: Cluster, host: str) -> dict[str, tuple[str, int, str | None]]:
    seen: dict[str, tuple[str, int, str | None]] = {}
    cursor = None
    while True:
        path = "/v1/jobs?limit=500" + (f"&cursor={cursor}" if cursor else "")
        status, page = cluster.request(host, "GET", path)
        assert status == 200, page
        for job in page["jobs"]:
            seen[job["job_id"]] = (job["status"], job["attempts"], job["worker"])
        cursor = page["next_cursor"]
        if not cursor:
            return seen


def db_view(store: JobStore) -> dict[str, tuple[str, int, str | None]]:
    return {j.id: (j.status.value, j.attempts, j.worker) for j in store.list_jobs(limit=500).jobs}


def test_many_render_hosts_one_view(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    report: list[str] = []
    began = time.monotonic()
    cluster.start_api("api")
    for n in (1, 2, 3):
        cluster.start_render(n)
    store = JobStore.from_url(cluster.db_url)

    # 60 decks through the api host: all three render hosts take part.
    deck = small_deck(slides=1, duration=0.5)
    ids = []
    for _ in range(60):
        status, job = cluster.request("api", "POST", "/v1/jobs", deck)
        assert status == 202, job
        ids.append(job["job_id"])
    jobs = wait_all(store, ids, timeout=240)
    assert {j.status.value for j in jobs} == {"completed"}
    per_host = Counter(j.worker for j in jobs)
    report.append(
        f"60 decks in {time.monotonic() - began:.1f} s, per host: "
        + ", ".join(f"{host} {n}" for host, n in sorted(per_host.items()))
    )
    assert set(per_host) == {"render@host1", "render@host2", "render@host3"}
    status, workers = cluster.request("api", "GET", "/v1/workers")
    alive = {w["name"] for w in workers["workers"] if w["state"] == "alive"}
    assert alive == {"render@host1", "render@host2", "render@host3"}
    assert api_view(cluster, "api") == db_view(store)

    # A render host cut off mid-render: the others recover its job; when it
    # comes back its late writes are refused and it cleans up.
    status, slow = cluster.request("api", "POST", "/v1/jobs", slow_deck(slides=6, seconds=5))
    slow_id = slow["job_id"]
    deadline = time.monotonic() + 120
    while (job := store.get(slow_id)).status.value != "processing" or job.progress <= 0:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    victim = job.worker
    assert victim is not None
    victim_host = "render" + victim.rsplit("host", 1)[1]
    cut_at = time.monotonic()
    cluster.cut(victim_host)
    done = wait_all(store, [slow_id], timeout=180)[0]
    report.append(
        f"cut {victim} off mid-render: job finished by {done.worker} "
        f"(attempt {done.attempts}) {time.monotonic() - cut_at:.1f} s later"
    )
    assert done.status.value == "completed" and done.worker != victim, done
    cluster.heal(victim_host)
    deadline = time.monotonic() + 90
    while "refused" not in cluster.log(victim_host) and "lease lost" not in cluster.log(
        victim_host
    ):
        assert time.monotonic() < deadline, cluster.log(victim_host)[-3000:]
        time.sleep(0.3)
    time.sleep(2)
    victim_log = cluster.log(victim_host)
    refused = victim_log.count("late write refused") + victim_log.count("lease lost")
    report.append(
        f"{victim} back on the network: {refused} late write(s) refused by "
        f"fencing, attempt ended 'lost' x{victim_log.count(': lost in')}, "
        f"scratch removed; job record unchanged"
    )
    after = store.get(slow_id)
    assert (after.status, after.worker, after.attempts, after.completed_at) == (
        done.status,
        done.worker,
        done.attempts,
        done.completed_at,
    )
    folder = cluster.output / slow_id
    partial = cluster.output / ".partial"
    assert not [p for p in partial.iterdir() if p.name.startswith(slow_id)]  # cleaned up
    assert published_attempt(folder) == after.attempts
    on_disk = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".attempt"
    )
    assert on_disk == sorted(after.created_files)
    assert {f.path: f.size_bytes for f in after.files} == {
        f: (folder / f).stat().st_size for f in after.created_files
    }
    assert f"worker lost: {victim} stopped heartbeating" in [
        e.reason for e in store.history(slow_id)
    ]

    # The api host stops; a second one sees every job, finished or not.
    queued_before = [
        cluster.request("api", "POST", "/v1/jobs", deck)[1]["job_id"] for _ in range(3)
    ]
    cluster.stop("api")
    cluster.start_api("api2")
    assert api_view(cluster, "api2") == db_view(store)
    wait_all(store, queued_before, timeout=120)

    # The db host (database and broker) cut off for a few seconds: the API
    # answers 503 meanwhile, never crashes; every job completes afterwards.
    more = [cluster.request("api2", "POST", "/v1/jobs", deck)[1]["job_id"] for _ in range(6)]
    cluster.cut("db")
    answers = []
    started = time.monotonic()
    while time.monotonic() - started < 6:
        answers.append(cluster.request("api2", "GET", f"/v1/jobs/{more[0]}")[0])
        time.sleep(0.5)
    cluster.heal("db")
    assert set(answers) <= {200, 503} and 503 in answers, answers
    report.append(
        f"db host cut off for 6 s: API answered {answers.count(503)}x 503, "
        f"{answers.count(200)}x 200, no crash"
    )
    final = wait_all(store, more + queued_before, timeout=240)
    assert {j.status.value for j in final} == {"completed"}, [
        (j.id, j.status, j.error) for j in final
    ]
    deadline = time.monotonic() + 60
    while cluster.request("api2", "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert api_view(cluster, "api2") == db_view(store)
    for name in ("api2", "render1", "render2", "render3"):
        assert cluster.procs[name].poll() is None, f"{name} crashed:\n{cluster.log(name)[-2000:]}"
    recovered = sum(
        1
        for j in db_view(store)
        for e in store.history(j)
        if (e.reason or "").startswith("worker lost")
    )
    report.append(
        f"{len(db_view(store))} jobs, all completed; {recovered} recovered from a "
        f"lost worker; wall time {time.monotonic() - began:.1f} s"
    )
    with capsys.disabled():
        print("\ncluster: " + "\ncluster: ".join(report))
