"""slidefarm's HTTP API: ``gunicorn 'api:create_app()'``."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from api.auth import init_auth
from api.body import guard_request_body
from api.compression import init_compression
from api.cors import init_cors
from api.dispatch import Dispatcher
from api.drain import Drain
from api.errors import register_error_handlers
from api.services import Services
from core.config import Settings, get_settings
from core.redact import install_log_redaction
from storage import JobStore
from storage.db import set_process_role
from storage.limits import RateLimiter

MAX_BODY_BYTES = 1024 * 1024


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the API. ``test_config`` may carry ``SETTINGS`` (a :class:`Settings`)
    and ``DISPATCHER`` to replace the environment's."""
    install_log_redaction()  # before anything can log a key or a database password
    # No app-wide static route: it would shadow the dashboard's public one at
    # the same URL and answer its script with 401.
    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    if test_config is None:
        # A serving process (gunicorn's worker): the API's connection budget.
        set_process_role("api")
    settings: Settings = app.config.get("SETTINGS") or get_settings()
    dispatcher: Dispatcher = app.config.get("DISPATCHER") or Dispatcher(settings)
    store = JobStore.from_settings(settings)
    app.extensions["slidefarm"] = Services(
        settings=settings,
        store=store,
        dispatcher=dispatcher,
        limiter=RateLimiter(store, settings.redis_url),
    )
    # Set by gunicorn's hooks when this process is asked to stop (gunicornconf.py).
    app.extensions["slidefarm_drain"] = Drain()
    if not app.debug and not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )

    from api import assets, batches, dashboard, health, inspect, jobs, openapi

    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(assets.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(inspect.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(openapi.bp)
    register_error_handlers(app)
    init_compression(app)
    init_cors(app, settings.cors_origin_set)  # before auth: a preflight carries no key
    init_auth(app)
    app.wsgi_app = guard_request_body(app.wsgi_app)  # type: ignore[method-assign,assignment]
    if settings.trusted_proxies:
        # Only then are X-Forwarded-* believed (scheme, so the session cookie
        # is Secure behind a TLS proxy; host and client address), and only
        # as many hops as there are proxies: a client cannot forge them.
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )
    return app
