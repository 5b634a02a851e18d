"""``GET /openapi.json``: valid OpenAPI 3.1, complete, and made of the models
the API validates with."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from api.openapi import PUBLIC_PATHS, SIGNED_PATHS, build_document
from api.schemas import Submission
from core.config import Settings
from tests.support.decks import small_deck

#: The dashboard's HTML pages, its icon and its sign-in, not part of the JSON API.
UNDOCUMENTED = re.compile(
    r"^/(static/.*|jobs/.*|batches(/.*)?|workers|overview.*|login|logout|favicon\.(svg|ico)|)$"
)


@pytest.fixture
def sqlite_app(tmp_path: Path, sqlite_template: Path) -> Any:
    """The app on SQLite only: the document does not depend on the backend."""
    import shutil

    from api import create_app

    db = tmp_path / "slidefarm.db"
    shutil.copy(sqlite_template, db)
    return create_app(
        {
            "TESTING": True,
            "SETTINGS": Settings(
                DATABASE_URL=f"sqlite:///{db}",
                CELERY_BROKER_URL="filesystem://",
                SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
                SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
                SLIDEFARM_AUTH="off",
            ),
        }
    )


def _openapi_path(rule: str) -> str:
    """``/v1/jobs/<job_id>/slides/<int(signed=True):n>`` -> ``/v1/jobs/{job_id}/slides/{n}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_the_document_is_valid_openapi_3_1(sqlite_app: Any) -> None:
    response = sqlite_app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document = response.get_json()
    assert document["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 meta-schema; raises if invalid
    assert len(list(schema.get_all_operations())) == sum(
        1 for item in document["paths"].values() for method in item if method != "parameters"
    )


def test_every_route_is_documented_with_its_methods(sqlite_app: Any) -> None:
    """A new route (or method) without its operation in the document fails here."""
    served: dict[str, set[str]] = {}
    for rule in sqlite_app.url_map.iter_rules():
        if not UNDOCUMENTED.match(rule.rule):
            methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
            served.setdefault(_openapi_path(rule.rule), set()).update(methods)
    assert "/v1/jobs/{job_id}/slides/{n}" in served
    paths = build_document(auth_required=True)["paths"]
    documented = {path: set(item) - {"parameters"} for path, item in paths.items()}
    assert served == documented


def test_every_documented_status_has_a_body_or_none(sqlite_app: Any) -> None:
    """Errors are the Error schema; 401 says how to authenticate, 429 when to retry."""
    paths = build_document(auth_required=True)["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"
                    }, (path, method, status)
            responses = operation["responses"]
            if path not in PUBLIC_PATHS:
                assert "401" in responses, (path, method)
                assert "WWW-Authenticate" in responses["401"]["headers"]
                assert "503" in responses, (path, method)
            if "429" in responses:
                assert responses["429"]["headers"]["Retry-After"]["required"] is True


@pytest.mark.parametrize("auth_required", [True, False])
def test_security_follows_the_auth_setting(auth_required: bool) -> None:
    document = build_document(auth_required=auth_required)
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            expected = [{"bearerAuth": []}] if auth_required and path not in PUBLIC_PATHS else []
            if expected and path in SIGNED_PATHS:  # a signed link's token opens them too
                expected.append({"signedLink": []})
            assert operation["security"] == expected, (path, method)


def test_the_submission_schema_is_the_validating_model(sqlite_app: Any) -> None:
    document = sqlite_app.test_client().get("/openapi.json").get_json()
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/Submission"}
    components = document["components"]["schemas"]
    expected = Submission.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = expected.pop("$defs")
    assert components["Submission"] == expected
    for name, definition in defs.items():
        assert components[name] == definition
    assert components["Submission"]["additionalProperties"] is False


def test_the_document_lists_every_size(sqlite_app: Any) -> None:
    document = sqlite_app.test_client().get("/openapi.json").get_json()
    options = document["components"]["schemas"]["Options"]["properties"]
    assert options["resolution"]["enum"] == ["480p", "720p", "1080p", "2160p"]
    assert options["resolution"]["default"] == "720p"
    assert options["aspect"]["enum"] == ["16:9", "9:16", "1:1"]
    assert options["aspect"]["default"] == "16:9"
    assert "1080x1920" in options["aspect"]["description"]


def test_the_api_validates_with_the_submission_model(sqlite_app: Any) -> None:
    """What the document allows is accepted, what it forbids is refused: the
    submit route validates with Submission (callback_url accepted, not stored)."""
    client = sqlite_app.test_client()
    deck = small_deck(1)
    accepted = client.post("/v1/jobs", json={**deck, "callback_url": "https://example.com/h"})
    assert accepted.status_code == 202, accepted.get_json()
    stored = sqlite_app.extensions["slidefarm"].store.get(accepted.get_json()["job_id"])
    assert stored.title == deck["title"]
    assert "callback_url" not in stored.deck  # the deck alone is stored
    refused = client.post("/v1/jobs", json={**deck, "callback_url": "ftp://example.com/h"})
    assert refused.status_code == 422
    assert refused.get_json()["error"]["details"][0]["field"] == "callback_url"
    too_long = client.post("/v1/jobs", json={**deck, "callback_url": "https://e.com/" + "a" * 2048})
    assert too_long.status_code == 422


def test_the_document_is_built_once_per_app(sqlite_app: Any) -> None:
    client = sqlite_app.test_client()
    client.get("/openapi.json")
    cached = sqlite_app.extensions["slidefarm.openapi"]
    client.get("/openapi.json")
    assert sqlite_app.extensions["slidefarm.openapi"] is cached


def test_the_asset_routes_are_documented() -> None:
    paths = build_document(auth_required=True)["paths"]
    upload = paths["/v1/assets"]["post"]
    assert set(upload["requestBody"]["content"]) == {
        "application/octet-stream",
        "multipart/form-data",
    }
    assert {"200", "201", "413", "422"} <= set(upload["responses"])
    assert upload["responses"]["201"]["links"]["GetAsset"]["operationId"] == "getAsset"
    assert set(paths["/v1/assets/{asset_id}"]) == {"parameters", "get", "delete"}
    assert "409" in paths["/v1/assets/{asset_id}"]["delete"]["responses"]
    content = paths["/v1/assets/{asset_id}/content"]["get"]["responses"]["200"]["content"]
    assert {"image/png", "application/pdf"} <= set(content)
