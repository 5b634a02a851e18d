"""RQ's job function, in a module of its own: RQ's default worker imports the
job's module in every forked work horse, so it imports nothing heavy (with
Flask beside it, each no-op job paid ~0.1 s of imports)."""

from __future__ import annotations

from typing import Any


def render(deck: dict[str, Any]) -> None:
    """The no-op render."""
