"""Findings of the security review of the HTTP layer, each pinned by a test,
on both backends.

- The ASCII ``filename=`` of a download was folded to ASCII after path
  separators were removed, so a fullwidth solidus (U+FF0F) came back as
  ``/``: a deck titled ``..／..／etc／passwd`` was offered as
  ``/../etc/passwd.mp4`` to clients that read only ``filename=``, and a
  fullwidth colon came back as ``:``, which Windows refuses.
"""

from __future__ import annotations

from typing import Any

import pytest

from storage import Settings
from tests.test_access import Tenant
from tests.test_api import fetch
from tests.test_http import VIDEO, completed, http_app


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
