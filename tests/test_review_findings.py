"""Findings of the pre-release security review, each pinned by a test.

- The dashboard's sign-in redirect (``next``) took a path holding a tab or a
  newline: browsers drop those from URLs, so ``/\\t/evil.example`` became
  ``//evil.example`` (another site: an open redirect right after the user
  typed a key), and a newline made the ``Location`` header raise (a 500).
- A body the WSGI server cannot de-chunk (a bad chunk size, a missing chunk
  terminator, a body cut short) made gunicorn raise from ``wsgi.input``
  inside the view: a 500 on ``POST /v1/jobs`` and ``POST /login`` instead
  of a 400.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkSize, NoMoreData

from api import create_app
from core.config import Settings
from tests.conftest import small_deck
from tests.test_access import Tenant, locked
from tests.test_api import assert_error

HOSTILE_NEXT = [
    "/\t/evil.example", "/\n/evil.example", "/\r/evil.example", "/\r\n/evil.example",
    "\t//evil.example", "/\t\\evil.example", "/\x00/evil.example", "/\x0b/evil.example",
    "/\x7f/evil.example", "/x\r\nSet-Cookie: slidefarm_session=attacker",
]


@pytest.fixture
def app(settings: Settings) -> Any:
    return create_app({"TESTING": True, "SETTINGS": locked(settings)})


@pytest.fixture
def alice(app: Any) -> Tenant:
    return Tenant(app, "alice")


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_the_sign_in_never_redirects_off_site_nor_fails(app: Any, alice: Tenant,
                                                        target: str) -> None:
    browser = app.test_client()
    signed = browser.post("/login", data={"key": alice.token, "next": target})
    assert signed.status_code == 303, signed.get_data(as_text=True)
    assert signed.headers["Location"] == "/"
    form = browser.get("/login", query_string={"next": target})
    assert form.status_code == 200
    assert b'name="next" value="/"' in form.data


def test_a_same_site_next_still_works(app: Any, alice: Tenant) -> None:
    signed = app.test_client().post("/login", data={"key": alice.token,
                                                    "next": "/jobs/x?status=failed"})
    assert signed.status_code == 303 and signed.headers["Location"] == "/jobs/x?status=failed"


class BrokenChunks(io.RawIOBase):
    """``wsgi.input`` as gunicorn gives it for a body it cannot de-chunk: the
    first read raises gunicorn's own parse error."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self.error


BROKEN_BODIES = [InvalidChunkSize(b"zz"), ChunkMissingTerminator(b"XX"), NoMoreData(b"")]


@pytest.mark.parametrize("error", BROKEN_BODIES, ids=lambda e: type(e).__name__)
def test_a_body_the_server_cannot_dechunk_is_400_not_500(app: Any, alice: Tenant,
                                                         error: Exception) -> None:
    chunked = {"wsgi.input_terminated": True}  # as gunicorn says of a chunked body
    response = alice.client.post("/v1/jobs", headers={"Content-Type": "application/json",
                                                      "Transfer-Encoding": "chunked"},
                                 environ_overrides={**chunked, "wsgi.input": BrokenChunks(error)})
    assert_error(response, 400, "malformed_body")
    login = app.test_client().post(
        "/login", headers={"Content-Type": "application/x-www-form-urlencoded",
                           "Transfer-Encoding": "chunked"},
        environ_overrides={**chunked, "wsgi.input": BrokenChunks(error)})
    assert_error(login, 400, "malformed_body")
    # Nothing was recorded, and a good body still goes through.
    assert alice.client.get("/v1/jobs").get_json()["jobs"] == []
    good = alice.client.post("/v1/jobs", input_stream=io.BytesIO(
        json.dumps(small_deck(slides=1)).encode()), headers={
            "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides=chunked)
    assert good.status_code == 202, good.get_data(as_text=True)
