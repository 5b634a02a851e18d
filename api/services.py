"""What a request needs from the outside world, built once per app."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from api.dispatch import Dispatcher
from core.config import Settings
from storage import JobStore
from storage.limits import RateLimiter


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: JobStore
    dispatcher: Dispatcher
    limiter: RateLimiter


def services() -> Services:
    """The services of the app serving this request."""
    svc: Services = current_app.extensions["slidefarm"]
    return svc
