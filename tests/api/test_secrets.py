"""Secrets never reach logs, error bodies or recorded job errors.

API keys (``sf_<id>_<secret>``), ``Authorization``/``Bearer`` values and
passwords in URLs are masked by ``core.redact``: in every log record once
the API or a worker has started, in the store's ``DatabaseUnavailable``
messages (which /readyz shows), and in the errors and history reasons the
store records (which the API and the dashboard show).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc

from api import create_app
from core.config import Settings
from core.redact import RedactingFilter, install_log_redaction, redact_secrets
from storage import DatabaseUnavailable, JobStore
from storage.db import dispose_engines
from tests.support import ROOT
from tests.support.clients import admin_client
from tests.support.decks import small_deck

PASSWORD = "s3cr3tpw"
UNREACHABLE = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nope"
API_KEY = "sf_abc123_SECRETsecret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (UNREACHABLE, "postgresql://postgres:***@127.0.0.1:1/nope"),
        ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
        ("postgresql+psycopg2://u:p@ss@db/x", "postgresql+psycopg2://u:***@db/x"),
        (f"key {API_KEY} used", "key sf_abc123_*** used"),
        ("signing with whsec_AbC123xyz now", "signing with whsec_*** now"),
        ("Authorization: Bearer xyz", "Authorization: ***"),
        ("got Bearer xyz.abc-def from", "got Bearer *** from"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: ***"),
        ("host=db user=u password=hunter2 port=5432", "host=db user=u password=*** port=5432"),
        # Case-insensitive patterns stay so in the one scan that finds them all.
        ("AUTHORIZATION=abc", "AUTHORIZATION=***"),
        ("PassWord = 'x y'", "PassWord = ***"),
        # Nothing secret: left as it is.
        ("http://api:8000/v1/jobs", "http://api:8000/v1/jobs"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("a basic deck with bearer bonds", "a basic deck with bearer bonds"),
    ],
)
def test_redact_secrets(text: str, expected: str) -> None:
    assert redact_secrets(text) == expected


@pytest.fixture
def redacted_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    install_log_redaction()
    caplog.set_level(logging.INFO)
    return caplog


def test_a_log_record_holding_a_key_or_a_bearer_token_comes_out_redacted(
    redacted_logs: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("slidefarm.test.secrets")
    log.warning("request with key %s", API_KEY)
    log.info("header was Authorization: Bearer xyz")
    log.warning("args %s and %s", "Bearer xyz", {"url": UNREACHABLE})
    try:
        raise RuntimeError(f"cannot use {API_KEY} on {UNREACHABLE}")
    except RuntimeError:
        log.exception("failed")
    text = redacted_logs.text
    assert "SECRETsecret" not in text and "xyz" not in text and PASSWORD not in text
    assert "sf_abc123_***" in text and "Bearer ***" in text and "RuntimeError" in text
    assert all("SECRETsecret" not in r.getMessage() for r in redacted_logs.records)


def test_the_filter_redacts_a_record_on_any_handler() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "key %s url %s", (API_KEY, UNREACHABLE), None
    )
    assert RedactingFilter().filter(record) is True  # redacts, never drops
    assert record.getMessage() == "key sf_abc123_*** url postgresql://postgres:***@127.0.0.1:1/nope"


@pytest.fixture
def unreachable_app(tmp_path: Path) -> Iterator[Any]:
    settings = Settings(
        DATABASE_URL=UNREACHABLE,
        CELERY_BROKER_URL="filesystem://",
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
    )
    yield create_app({"TESTING": True, "SETTINGS": settings})
    dispose_engines()


def test_an_unreachable_database_never_shows_its_password(
    unreachable_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = unreachable_app.test_client()
    # A well-formed key: checking it needs the (unreachable) database.
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer sf_0123456789ab_" + "B" * 40
    answers = [
        client.get("/readyz"),
        client.get("/v1/jobs"),
        client.post("/v1/jobs", json=small_deck()),
        client.get("/v1/jobs/00000000-0000-0000-0000-000000000000"),
    ]
    assert [a.status_code for a in answers] == [503, 503, 503, 503]
    ready = answers[0].get_json()["error"]
    assert ready["details"][0]["field"] == "database"
    assert "not reachable" in ready["details"][0]["message"]
    for answer in answers:
        assert PASSWORD not in answer.get_data(as_text=True)
    assert caplog.records, "the outage is logged"
    assert PASSWORD not in caplog.text


def test_the_stores_outage_message_masks_a_password_the_driver_quotes() -> None:
    # A driver error that quotes its connection string, raised at the
    # store's boundary (its transaction) as a real OperationalError.
    store = JobStore.from_url("sqlite://")
    with pytest.raises(DatabaseUnavailable) as caught:
        with store.transaction():
            raise exc.OperationalError(
                "SELECT 1", {}, Exception(f'could not connect with "{UNREACHABLE}"')
            )
    assert PASSWORD not in str(caught.value)
    assert "postgres:***@127.0.0.1" in str(caught.value)


def test_recorded_errors_and_history_mask_secrets(store: JobStore, settings: Settings) -> None:
    client = admin_client(create_app({"TESTING": True, "SETTINGS": settings}))
    job_id = client.post("/v1/jobs", json=small_deck()).get_json()["job_id"]
    assert store.claim(job_id, "w@h") is not None
    store.requeue(job_id, 1, f"attempt 1 failed: broker redis://:{PASSWORD}@r:6379/0 down")
    assert store.claim(job_id, "w@h") is not None
    assert store.fail(job_id, 2, f"render crashed: key {API_KEY} on {UNREACHABLE}")
    body = client.get(f"/v1/jobs/{job_id}?include=history").get_data(as_text=True)
    assert "render crashed" in body and "sf_abc123_***" in body
    assert PASSWORD not in body and "SECRETsecret" not in body
    for event in store.history(job_id):
        assert PASSWORD not in (event.reason or "")


def test_the_worker_redacts_its_logs_from_start_up(tmp_path: Path) -> None:
    """Loading the worker's Celery app (what ``celery -A workers`` does first)
    installs the redaction for every logger of the process."""
    script = (
        "import logging, workers\n"
        "logging.basicConfig(level=logging.INFO)\n"
        f"logging.getLogger('celery.worker').warning('key %s db %s', {API_KEY!r}, "
        f"{UNREACHABLE!r})\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLIDEFARM_", "DATABASE_URL", "CELERY_", "REDIS_URL"))
    }
    env.update(PYTHONPATH=str(ROOT), SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"))
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "sf_abc123_***" in done.stderr and "postgres:***@" in done.stderr
    assert "SECRETsecret" not in done.stderr and PASSWORD not in done.stderr


@pytest.mark.parametrize(
    "text",
    [
        "GET /v1/jobs/x/video?token=1796000280.ac7b2d5a90f7."
        "hTwEFXdsLwlAbsiXWWrM0c2S9_FHdG0MurW8-36vwUA",
        "link 1796000280.open.hTwEFXdsLwlAbsiXWWrM0c2S9_FHdG0MurW8-36vwU- made",
    ],
)
def test_redact_secrets_masks_a_tokens_signature(text: str) -> None:
    redacted = redact_secrets(text)
    assert "hTwEFXdsLwlAbsiXWWrM0c2S9" not in redacted and "***" in redacted
    assert "1796000280." in redacted
