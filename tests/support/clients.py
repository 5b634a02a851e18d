"""Talking to the API in-process: the app, admin and tenant clients, keys,
and the checks every answer shares."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from core.config import Settings
from storage import JobStore
from storage.access import AccessStore
from tests.support.decks import small_deck


def admin_token(url: str, tenant: str = "default") -> str:
    """A new admin key on the database at ``url``."""
    return AccessStore(JobStore.from_url(url)).create_key(tenant, admin=True).token


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header that sends ``token``."""
    return {"Authorization": f"Bearer {token}"}


def locked(settings: Settings, **update: Any) -> Settings:
    """``settings`` with keys required (whatever the backend) and trusted for 0 s."""
    return settings.model_copy(update={"auth": "required", "key_cache_ttl": 0.0, **update})


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """The settings the ``app`` fixture runs with; a test module about keys
    or HTTP overrides this fixture (say, with :func:`locked` settings)."""
    return settings


@pytest.fixture
def app(app_settings: Settings) -> Any:
    """A fresh API app on this test's database and embedded broker."""
    from api import create_app

    return create_app({"TESTING": True, "SETTINGS": app_settings})


def admin_client(app: Any) -> Any:
    """A test client that, when the app needs keys, sends an admin key of
    the ``default`` tenant with every request."""
    test_client = app.test_client()
    settings = app.extensions["slidefarm"].settings
    if settings.auth_required:
        token = admin_token(settings.database_url)
        test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return test_client


@pytest.fixture
def client(app: Any) -> Any:
    """:func:`admin_client` of the test's app (tests of access itself build
    their own clients and keys)."""
    return admin_client(app)


@pytest.fixture
def anonymous_client(app: Any) -> Any:
    """A client of the test's app that sends no key."""
    return app.test_client()


class Tenant:
    """A test client speaking with one key."""

    def __init__(self, app: Any, tenant: str, admin: bool = False) -> None:
        store = app.extensions["slidefarm"].store
        made = AccessStore(store).create_key(tenant, admin=admin)
        self.key_id, self.token = made.key.id, made.token
        self.client: FlaskClient = app.test_client()
        self.client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {made.token}"

    def submit(self, **extra: Any) -> dict[str, Any]:
        response = self.client.post("/v1/jobs", json={**small_deck(slides=1), **extra})
        assert response.status_code == 202, response.get_data(as_text=True)
        body: dict[str, Any] = response.get_json()
        return body


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """``response`` has ``status`` and the API's one error shape (of ``code``)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    if code:
        assert error["code"] == code
    return dict(error)


def fetch(client: FlaskClient, url: str, **kwargs: Any) -> Any:
    """GET ``url``, read the whole body and close the response (files stay unlocked)."""
    response = client.get(url, **kwargs)
    response.get_data()
    response.close()
    return response
