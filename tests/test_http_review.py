"""Findings of the security review of signed links and download names, each
pinned by a test, on both backends.

- A signed link's token opens a file without a key for up to a day, and it
  travels in the URL, which is what access logs write: gunicorn's access log
  printed it whole, so anyone reading the logs could replay every link the
  API served (the logs mask keys, Bearer values and passwords, not tokens).
- The ASCII ``filename=`` of a download was folded to ASCII after path
  separators were removed, so a fullwidth solidus (U+FF0F) came back as
  ``/``: a deck titled ``..／..／etc／passwd`` was offered as
  ``/../etc/passwd.mp4`` to clients that read only ``filename=``, and a
  fullwidth colon came back as ``:``, which Windows refuses.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from core.config import Settings
from core.redact import redact_secrets
from tests.conftest import Proc, Stack, stack_env
from tests.test_access import Tenant
from tests.test_api import fetch
from tests.test_http import SECRET, VIDEO, completed, http_app


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=30) as response:
        return response.status, response.read()


def test_the_access_log_never_shows_a_signed_links_token(settings: Settings,
                                                         tmp_path: Path) -> None:
    app = http_app(settings)
    alice = Tenant(app, "alice")
    job_id = completed(app, alice, slides=1)
    env = stack_env(DATABASE_URL=settings.database_url, CELERY_BROKER_URL="filesystem://",
                    SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
                    SLIDEFARM_OUTPUT_DIR=str(settings.output_dir), SLIDEFARM_AUTH="required",
                    SLIDEFARM_SECRET_KEY=SECRET)
    stack = Stack(env, tmp_path)
    api = Proc("api-access-log", [
        sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "4",
        "-b", f"127.0.0.1:{stack.port}", "--graceful-timeout", "5",
        "--access-logfile", "-", "api:create_app()"], env, tmp_path)
    stack.procs.append(api)
    try:
        stack.wait_ready(api)
        status, body = _get(f"{stack.base}/v1/jobs/{job_id}?signed=1", alice.token)
        assert status == 200
        video_url = json.loads(body)["video_url"]
        token = parse_qs(urlsplit(video_url).query)["token"][0]
        assert _get(video_url) == (200, VIDEO)
    finally:
        stack.stop_all()
    log = api.log()
    expires, key_id, signature = token.split(".")
    served = [line for line in log.splitlines() if f"/v1/jobs/{job_id}/video" in line]
    assert served, log[-2000:]  # the request was logged...
    assert signature not in log, served  # ...without what opens the file
    assert f"token={expires}.{key_id}." in served[0]  # which link, and whose, stays readable


@pytest.mark.parametrize("text", [
    "GET /v1/jobs/x/video?token=1796000280.ac7b2d5a90f7."
    "hTwEFXdsLwlAbsiXWWrM0c2S9_FHdG0MurW8-36vwUA",
    "link 1796000280.open.hTwEFXdsLwlAbsiXWWrM0c2S9_FHdG0MurW8-36vwU- made",
])
def test_redact_secrets_masks_a_tokens_signature(text: str) -> None:
    redacted = redact_secrets(text)
    assert "hTwEFXdsLwlAbsiXWWrM0c2S9" not in redacted and "***" in redacted
    assert "1796000280." in redacted


@pytest.mark.parametrize(("title", "ascii_name"), [
    ("..／..／etc／passwd", "etc passwd"),
    ("a／b", "a b"),
    ("‥／‥／secret", "secret"),
    ("report：final＂", "report_final_"),
    ("＜script＞", "_script_"),
])
def test_the_ascii_download_name_has_no_separator_a_fold_brings_back(
        settings: Settings, title: str, ascii_name: str) -> None:
    app: Any = http_app(settings)
    alice = Tenant(app, "alice")
    job_id = completed(app, alice, slides=1, title=title)
    response = fetch(alice.client, f"/v1/jobs/{job_id}/video?download=1")
    assert response.status_code == 200 and response.data == VIDEO
    disposition = response.headers["Content-Disposition"]
    plain = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert plain == f"{ascii_name}.mp4", disposition
    assert "/" not in plain and ":" not in plain and not plain.startswith(".")
