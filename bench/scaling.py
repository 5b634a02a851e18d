"""Measured scaling on one machine: render hosts simulated as Celery workers,
each in its own network namespace and its own CPU cgroup limited to the same
slice of a core, at 1, 2, 4, 8, 16 and 32 hosts.

Each count gets the same work per host (``JOBS_PER_HOST`` jobs of a small
deck that really draws and encodes), submitted as one batch through an API
host of its own; the time is from the submission to the last completion.
Throughput is seconds of video rendered per wall-clock second and jobs per
minute; efficiency is T(n) / (n x T(1)) with T the throughput.

The slice: 0.05 of a core per host, so that 32 hosts take 1.6 of the
machine's 2 cores and leave 0.4 to PostgreSQL, Redis and the API host (and
the same slice at every count, so that T(1) is the host every other count
is a multiple of). Hosts start unlimited (start-up is not measured) and are
limited before the work is submitted.

Connections: while each count's batch runs, PostgreSQL's connections to
the database are counted every 0.25 s by where they come from
(``ConnectionSampler``), and the peak of the hosts' (render and API hosts,
or PgBouncer's; not the benchmark's own checks) is recorded. With
``--pgbouncer`` the same curve runs a second time with PgBouncer
(transaction pooling, ``--pgbouncer-pool`` server connections) on the
database host and every host connecting through it.

``python -m bench scaling [--pgbouncer]`` (root, ``ip netns``, cgroup v1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from bench.harness import Environment, Result, Series
from tests.support.hosts import CONTROLLER, ConnectionSampler, CpuSlice, Hosts, permitted

SLICE = 0.05
COUNTS = (1, 2, 4, 8, 16, 32)
#: PgBouncer's ``default_pool_size`` for ``--pgbouncer``.
PGBOUNCER_POOL = 10
JOBS_PER_HOST = 6
SLIDES = 4
SLIDE_SECONDS = 1.5


def scaling_deck() -> dict[str, Any]:
    """A small 480p deck: four slides drawn and one H.264 encode, about a third
    a CPU-second, so the work is the workers' CPU and not the database's."""
    return {
        "title": "Scaling deck",
        "slides": [
            {
                "title": f"Slide {n}",
                "body": "Revenue up 12% on last quarter, with every region but one growing.",
                "bullets": ["EMEA +20%", "APAC flat"],
                "duration": SLIDE_SECONDS,
            }
            for n in range(1, SLIDES + 1)
        ],
        "options": {"resolution": "480p"},
    }


@dataclass
class Run:
    """One host count's measurement."""

    hosts: int
    jobs: int
    wall: float
    video_seconds: float
    #: Per host: CPU seconds used during the run, from the host's cgroup.
    cpu: dict[str, float] = field(default_factory=dict)
    #: Per host: jobs it completed.
    per_host: dict[str, int] = field(default_factory=dict)
    #: Jobs not completed on their first attempt (0 when each ran once).
    reruns: int = 0
    #: The most PostgreSQL connections the hosts (or PgBouncer for them)
    #: held at once during the run, and of those the most from each source
    #: (a host, or ``pgbouncer``).
    connections: int = 0
    connections_by_source: dict[str, int] = field(default_factory=dict)
    #: Of a core, what an idle host used just before the run (mean of hosts).
    idle_core: float = 0.0

    @property
    def video_per_second(self) -> float:
        return self.video_seconds / self.wall

    @property
    def jobs_per_minute(self) -> float:
        return self.jobs * 60 / self.wall


class Farm:
    """The db host, one API host and up to ``max_hosts`` render hosts, each
    render host in its own CPU cgroup limited to ``fraction`` of a core;
    with ``pgbouncer_pool``, every host reaches PostgreSQL through PgBouncer
    on the db host with that pool."""

    def __init__(
        self,
        fraction: float,
        subnet: str = "10.233.0",
        pgbouncer_pool: int | None = None,
        **settings: str,
    ) -> None:
        self.fraction = fraction
        self.pgbouncer_pool = pgbouncer_pool
        self.hosts = Hosts(subnet)
        self.settings = settings
        self.render: list[str] = []
        self.token = ""
        self.store: Any = None

    def __enter__(self) -> Farm:
        try:
            self.hosts.up()
            self.hosts.start_db(pgbouncer_pool=self.pgbouncer_pool)
            from storage import JobStore
            from storage.access import AccessStore

            self.store = JobStore.from_url(self.hosts.server_url)
            self.token = AccessStore(self.store).create_key("scaling", admin=True).token
            self.hosts.add_host("api")
            self.hosts.spawn("api", "api", self.hosts.api_argv("api"), self.env())
            self._wait_api()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        from storage.db import dispose_engines

        dispose_engines()
        self.hosts.down()

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLIDEFARM_", "DATABASE_URL", "CELERY_", "REDIS_URL"))
        }
        env.update(
            DATABASE_URL=self.hosts.db_url,
            CELERY_BROKER_URL=self.hosts.broker,
            SLIDEFARM_OUTPUT_DIR=str(self.hosts.output),
            PYTHONUNBUFFERED="1",
            SLIDEFARM_AUTH="required",
            SLIDEFARM_MAX_ACTIVE_JOBS="0",
            SLIDEFARM_SUBMIT_RATE="1000000",
            SLIDEFARM_SUBMIT_BURST="1000000",
        )
        env.update(self.settings)
        return env

    def request(self, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"http://{self.hosts.address('api')}:8000{path}",
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def _wait_api(self) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.request("/readyz", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API host did not start:\n" + self.hosts.log("api")[-3000:])
            time.sleep(0.2)

    def slice(self, host: str) -> CpuSlice:
        return self.hosts.cpu_slice(host)

    def grow(self, count: int) -> None:
        """Render hosts up to ``count``: new ones start unlimited, then every
        host is limited to the slice once all are ready."""
        new = []
        while len(self.render) < count:
            host = f"render{len(self.render) + 1}"
            self.hosts.add_host(host)
            group = self.slice(host)
            group.limit(None)
            self.hosts.spawn(
                host, host, self.hosts.worker_argv(f"render@{host}"), self.env(), cgroup=group
            )
            self.render.append(host)
            new.append(host)
        self.hosts.wait_ready(new, timeout=60 + 5 * len(new))
        if new:
            # Warm-up, still unlimited: each new host's first job loads fonts
            # and codecs, the API's first batch its caches; none is measured.
            self._finish(self._submit(2 * len(new)), timeout=300)
        for host in self.render:
            self.slice(host).limit(self.fraction)
        time.sleep(1)  # the start-up's last bursts are over; throttling is on

    def _submit(self, jobs: int) -> list[str]:
        status, batch = self.request("/v1/batches", {"jobs": [scaling_deck()] * jobs})
        assert status == 202, batch
        ids: list[str] = batch["job_ids"]
        assert len(ids) == jobs
        return ids

    def _finish(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.store.get(i).status.is_final for i in ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up jobs unfinished after {timeout} s")
            time.sleep(0.3)

    def run(self, count: int, jobs_per_host: int, timeout: float = 900) -> Run:
        """``jobs_per_host`` x ``count`` jobs on the first ``count`` hosts."""
        assert count <= len(self.render)
        active = self.render[:count]
        jobs = count * jobs_per_host
        # What an idle host uses of its slice (heartbeats, the sweeper).
        idle = {h: self.slice(h).usage() for h in active}
        time.sleep(2)
        before = {h: self.slice(h).usage() for h in active}
        idle_core = sum(before[h] - idle[h] for h in active) / len(active) / 2
        with ConnectionSampler(self.hosts) as sampler:
            started = time.monotonic()
            ids = self._submit(jobs)
            deadline = started + timeout
            while True:
                remaining = [i for i in ids if not self.store.get(i).status.is_final]
                if not remaining:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{len(remaining)} of {jobs} jobs unfinished after {timeout} s"
                    )
                time.sleep(0.5)
        # The last job's completion, from the database (the poll is coarse).
        final = [self.store.get(i) for i in ids]
        wall = time.monotonic() - started
        last = max(j.completed_at for j in final if j.completed_at)
        first = min(j.created_at for j in final)
        wall = min(wall, (last - first).total_seconds() + 0.1)
        bad = [(j.id, j.status.value, j.error) for j in final if j.status.value != "completed"]
        assert not bad, bad
        per_host: dict[str, int] = {}
        for job in final:
            per_host[job.worker or "?"] = per_host.get(job.worker or "?", 0) + 1
        return Run(
            hosts=count,
            jobs=jobs,
            wall=wall,
            video_seconds=jobs * SLIDES * SLIDE_SECONDS,
            cpu={h: self.slice(h).usage() - before[h] for h in active},
            per_host=per_host,
            reruns=sum(1 for j in final if j.attempts != 1),
            connections=sampler.peak,
            connections_by_source={
                source: n for source, n in sampler.peak_by_source.items() if source != CONTROLLER
            },
            idle_core=idle_core,
        )


def efficiency(run: Run, single: Run) -> float:
    return run.video_per_second / (run.hosts * single.video_per_second)


def table(runs: list[Run]) -> str:
    single = runs[0]
    lines = [
        "| hosts | jobs | wall s | video s/s | jobs/min | efficiency | CPU/host (core) | "
        "idle CPU/host | peak PG conns |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        cpu = sum(r.cpu.values()) / len(r.cpu) / r.wall
        lines.append(
            f"| {r.hosts} | {r.jobs} | {r.wall:.1f} | {r.video_per_second:.3f} | "
            f"{r.jobs_per_minute:.1f} | {efficiency(r, single):.2f} | {cpu:.3f} | "
            f"{r.idle_core:.4f} | {r.connections} |"
        )
    return "\n".join(lines)


def measure(
    counts: tuple[int, ...] = COUNTS,
    fraction: float = SLICE,
    jobs_per_host: int = JOBS_PER_HOST,
    pgbouncer_pool: int | None = None,
) -> list[Run]:
    """The curve over ``counts`` (the first is the unit of efficiency)."""
    reason = permitted()
    if reason is not None:
        raise SystemExit(f"the scaling benchmark cannot run: {reason}")
    runs = []
    with Farm(fraction, pgbouncer_pool=pgbouncer_pool) as farm:
        for count in counts:
            farm.grow(count)
            run = farm.run(count, jobs_per_host)
            runs.append(run)
            print(
                f"  {count:>2} hosts: {run.wall:.1f} s, {run.video_per_second:.3f} video s/s, "
                f"{run.jobs_per_minute:.1f} jobs/min, efficiency "
                f"{efficiency(run, runs[0]):.2f}, peak {run.connections} PG connections "
                f"(API host {run.connections_by_source.get('api', 0)}, PgBouncer "
                f"{run.connections_by_source.get('pgbouncer', 0)}), load average "
                f"{os.getloadavg()[0]:.1f}",
                flush=True,
            )
    return runs


def curve(runs: list[Run]) -> dict[str, Any]:
    """A curve's figures for results.json: ``efficiency_<n>`` and
    ``peak_pg_connections_<n>`` at 8 and 32 hosts (when measured) and,
    under ``throughput``, every count's."""
    single = runs[0]
    by_count = {r.hosts: r for r in runs}
    fields: dict[str, Any] = {}
    for n in (8, 32):
        if n in by_count:
            fields[f"efficiency_{n}"] = round(efficiency(by_count[n], single), 3)
            fields[f"peak_pg_connections_{n}"] = by_count[n].connections
    fields["throughput"] = {
        str(r.hosts): {
            "video_seconds_per_second": round(r.video_per_second, 4),
            "jobs_per_minute": round(r.jobs_per_minute, 2),
            "wall_seconds": round(r.wall, 2),
            "efficiency": round(efficiency(r, single), 3),
            "cpu_core_per_host": round(sum(r.cpu.values()) / len(r.cpu) / r.wall, 4),
            "peak_pg_connections": r.connections,
            # Where they came from: directly, the API host and the render
            # host holding the most; through PgBouncer, PgBouncer alone.
            "peak_pg_connections_by_source": {
                source: r.connections_by_source[source]
                for source in ("api", "pgbouncer")
                if source in r.connections_by_source
            }
            | {
                "render_host_most": max(
                    (n for h, n in r.connections_by_source.items() if h.startswith("render")),
                    default=0,
                )
            },
            "reruns": r.reruns,
            "idle_core_per_host": round(r.idle_core, 4),
        }
        for r in runs
    }
    return fields


def scaling(env: Environment, args: argparse.Namespace) -> Result:
    """The bench entry: ``env`` (the shared database) is not used; the hosts
    bring their own database host. ``args.scaling_counts`` (default
    :data:`COUNTS`), ``args.pgbouncer``: the same curve through PgBouncer
    too, with ``args.pgbouncer_pool``."""
    counts = tuple(args.scaling_counts or COUNTS)
    load = [os.getloadavg()[0]]
    runs = measure(counts)
    load.append(os.getloadavg()[0])
    single, top = runs[0], runs[-1]
    print(table(runs))
    fields: dict[str, Any] = {
        "slice_core": SLICE,
        "jobs_per_host": JOBS_PER_HOST,
        "video_seconds_per_job": SLIDES * SLIDE_SECONDS,
        **curve(runs),
    }
    if args.pgbouncer:
        print(f"\n-- through PgBouncer (default_pool_size {args.pgbouncer_pool})", flush=True)
        bounced = measure(counts, pgbouncer_pool=args.pgbouncer_pool)
        load.append(os.getloadavg()[0])
        print(table(bounced))
        fields["pgbouncer"] = {"default_pool_size": args.pgbouncer_pool, **curve(bounced)}
    fields["load_average"] = [round(v, 1) for v in load]
    notes = {k: fields[k] for k in ("efficiency_8", "efficiency_32") if k in fields}
    return Result(
        "scaling",
        "video s/s",
        Series([single.video_per_second * top.hosts]),
        Series([top.video_per_second]),
        goal=f">= 0.9 at {top.hosts}",
        better="higher",
        threshold=0.9,
        notes=notes,
        fields=fields,
    )


if __name__ == "__main__":
    out = measure(tuple(int(a) for a in sys.argv[1:]) or COUNTS)
    print(table(out))
