"""The fixtures every test folder sees. They are defined in ``tests/support``
(services, processes, clients, the browser, a webhook receiver) and offered
here by name."""

from tests.support.browser import browser
from tests.support.clients import anonymous_client, app, app_settings, client
from tests.support.images import image_server
from tests.support.services import (
    db_url,
    pg_server,
    pg_url,
    redis_url,
    settings,
    sqlite_template,
    store,
)
from tests.support.stack import fault_stack, pg_redis_stack, private_redis
from tests.support.webhooks import receiver

__all__ = [
    "anonymous_client",
    "app",
    "app_settings",
    "browser",
    "client",
    "db_url",
    "fault_stack",
    "image_server",
    "pg_redis_stack",
    "pg_server",
    "pg_url",
    "private_redis",
    "receiver",
    "redis_url",
    "settings",
    "sqlite_template",
    "store",
]
