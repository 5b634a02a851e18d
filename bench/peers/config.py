"""Where a peer keeps its records: read once from the environment in the
peer's processes (``PEERS_DATABASE_URL``, ``PEERS_REDIS_URL``), passed
explicitly in the harness that runs several peers at once."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Where:
    """A peer's PostgreSQL database (plain ``postgresql://`` URL, or empty
    for the peers without one) and its Redis URL (broker and cache)."""

    database_url: str
    redis_url: str

    @classmethod
    def from_environ(cls) -> Where:
        return cls(os.environ.get("PEERS_DATABASE_URL", ""), os.environ.get("PEERS_REDIS_URL", ""))

    def environ(self) -> dict[str, str]:
        """The variables a peer's process reads this from."""
        return {"PEERS_DATABASE_URL": self.database_url, "PEERS_REDIS_URL": self.redis_url}

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg2 driver slidefarm ships (SQLAlchemy
        2.1 would pick psycopg 3 for the bare scheme)."""
        return self.database_url.replace("postgresql://", "postgresql+psycopg2://", 1)
