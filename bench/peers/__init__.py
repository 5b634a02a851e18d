"""Peers: what a user would run instead of slidefarm, each a small app of its
own, measured beside slidefarm by ``python -m bench peers`` (bench/peering.py)
and brought up for real by tests/system/test_peers.py.

Every peer serves the same HTTP surface with the same gunicorn settings as
slidefarm's API: ``POST /jobs`` with a deck (``202 {"job_id": ...}``),
``GET /jobs/<id>`` (``200 {"job_id": ..., "status": ...}``) and ``GET
/healthz``; and runs a no-op render on its own worker. Each module offers the
same functions (see :class:`Peer`); nothing of slidefarm's product code
imports them, and they import nothing of slidefarm's.

- ``seed``: the design slidefarm replaces (Flask, a SQLAlchemy ORM repository
  on PostgreSQL, a cache-aside Redis read, ``send_task`` to Celery).
- ``bare``: Flask and Celery ``send_task``, no database.
- ``rq``: RQ, ``Queue.enqueue`` and ``Job.fetch``.
- ``procrastinate``: Procrastinate on PostgreSQL, ``defer`` and its jobs table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from bench.peers.config import Where

#: peer name -> its module under bench.peers
MODULES = {
    "seed": "bench.peers.seed",
    "bare": "bench.peers.bare",
    "rq": "bench.peers.rq_peer",
    "procrastinate": "bench.peers.procrastinate_peer",
}
NAMES = list(MODULES)


@dataclass(frozen=True)
class Peer:
    """One peer: its module and what the harness needs to know of it.

    The module offers ``create_app()`` (the Flask app gunicorn serves),
    ``prepare(where)`` (its schema), ``reset(where)`` (empty its records),
    ``sample_job(where)`` (a job to read the status of), ``unfinished(where,
    ids)`` (how many of ``ids`` are not done yet) and ``worker_argv(where,
    processes)`` (the command lines of its worker processes).
    """

    name: str
    module: ModuleType

    @property
    def app(self) -> str:
        """The gunicorn application of this peer."""
        return f"{self.module.__name__}:create_app()"

    @property
    def done(self) -> str:
        """What its status read answers once the job is done."""
        return str(self.module.DONE)

    @property
    def database(self) -> bool:
        """Whether it keeps its records in a PostgreSQL database of its own."""
        return bool(self.module.DATABASE)

    @property
    def durable(self) -> bool:
        """Whether its job record is committed to disk before the submission answers."""
        return bool(self.module.DURABLE)

    def prepare(self, where: Where) -> None:
        self.module.prepare(where)

    def reset(self, where: Where) -> None:
        self.module.reset(where)

    def sample_job(self, where: Where) -> str:
        return str(self.module.sample_job(where))

    def unfinished(self, where: Where, ids: list[str]) -> int:
        return int(self.module.unfinished(where, ids))

    def worker_argv(self, where: Where, processes: int) -> list[list[str]]:
        argv: list[list[str]] = self.module.worker_argv(where, processes)
        return argv


def peer(name: str) -> Peer:
    """The peer called ``name`` (one of :data:`NAMES`)."""
    return Peer(name, importlib.import_module(MODULES[name]))
