"""Completion webhooks: signatures, the SSRF guard, delivery over real HTTP,
the store's claims and records, and the whole path through real processes
(gunicorn, celery, PostgreSQL, Redis) to a real receiver."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from api.dispatch import Dispatcher
from storage import JobStore, Settings, Status
from storage.access import AccessStore
from storage.deliveries import WebhookDeliveries, retry_delay
from storage.jobs import utcnow
from storage.models import WebhookStatus, jobs_table
from storage.serialize import job_json, webhook_body
from storage.webhooks import (
    DeliveryResult,
    UnsafeCallback,
    check_callback_url,
    deliver,
    sign,
    verify,
)
from tests.support import ROOT
from tests.support.clients import admin_client
from tests.support.decks import small_deck
from tests.support.services import REQUIRE_SERVICES, flush_run_index
from tests.support.stack import Stack, free_port, make_stack

LOCAL = [ipaddress.ip_network("127.0.0.1/32")]


# -- a real receiver ---------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request. Paths choose
    the answer: ``/ok``, ``/fail`` (500), ``/flaky`` (500 twice, then 200),
    ``/redirect`` (302 to ``/target``), ``/slow`` (answers after 3 s),
    ``/big`` (200 with a 1 MiB body); a path's suffix after ``-`` makes it
    distinct (``/ok-2``)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers.items()),
                                                      body, time.time()))
                    seen = sum(1 for r in receiver.received if r.path == self.path)
                kind = self.path.lstrip("/").split("-")[0].split("?")[0]
                payload = b"secret internal answer"
                headers: dict[str, str] = {}
                if kind == "ok" or kind == "target" or (kind == "flaky" and seen > 2):
                    code = 200
                elif kind == "redirect":
                    code, headers = 302, {"Location": "/target"}
                elif kind == "slow":
                    time.sleep(3)
                    code = 200
                elif kind == "big":
                    code, payload = 200, b"x" * (1 << 20)
                else:
                    code = 500
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:
                    pass  # the caller stopped reading: it may

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a caller that timed out and hung up is expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.at(path)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.at(path))} requests, expected {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


# -- signatures --------------------------------------------------------------------

SECRET = "whsec_test_secret"
BODY = b'{"job_id":"x","status":"completed"}'


def test_a_signature_verifies_and_a_tampered_body_or_old_timestamp_does_not() -> None:
    now = time.time()
    header = sign(BODY, [SECRET], timestamp=int(now))
    assert header.startswith(f"t={int(now)},v1=") and header.count("v1=") == 1
    assert verify(header, BODY, SECRET, now=now)
    assert not verify(header, BODY.replace(b"completed", b"failed"), SECRET, now=now)
    assert not verify(header, BODY + b" ", SECRET, now=now)
    assert not verify(header, BODY, "whsec_another", now=now)
    old = sign(BODY, [SECRET], timestamp=int(now) - 301)
    assert not verify(old, BODY, SECRET, now=now)
    assert verify(old, BODY, SECRET, now=now, tolerance=400)
    # The timestamp is signed too: moving it forward breaks the signature.
    forged = header.replace(f"t={int(now)}", f"t={int(now) + 5}")
    assert not verify(forged, BODY, SECRET, now=now)


@pytest.mark.parametrize("header", [
    "", "t=", "v1=abc", "t=abc,v1=00", "t=1,t=2,v1=00", "garbage", "t=1700000000",
])
def test_malformed_signature_headers_do_not_verify(header: str) -> None:
    assert not verify(header, BODY, SECRET, now=1_700_000_000)


def test_during_a_rotation_both_secrets_sign_and_each_verifies(store: JobStore) -> None:
    access = AccessStore(store)
    [old_secret] = access.webhook_secrets("acme")
    new_secret = access.rotate_webhook_secret("acme", grace=60)
    secrets = access.webhook_secrets("acme")
    assert secrets == [new_secret, old_secret]
    header = sign(BODY, secrets)
    assert header.count("v1=") == 2
    assert verify(header, BODY, new_secret) and verify(header, BODY, old_secret)
    assert not verify(header, BODY, "whsec_someone_else")
    # Once the grace period is over only the new secret signs.
    later = access.webhook_secrets("acme", now=utcnow() + timedelta(seconds=61))
    assert later == [new_secret]
    assert not verify(sign(BODY, later), BODY, old_secret)


# -- the SSRF guard ----------------------------------------------------------------


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.8.9.10/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://LocalHost:8080/", "loopback"),
    ("http://10.0.0.5/", "private"),
    ("http://172.16.3.4/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://169.254.1.1/", "link-local"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://100.64.0.1/", "shared address space"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://[64:ff9b::a00:1]/", "private"),  # NAT64 of 10.0.0.1
    ("http://[2002:7f00:1::1]/", "loopback"),  # 6to4 of 127.0.0.1
    ("http://240.0.0.1/", "reserved"),
    ("http://192.0.2.1/", "reserved"),  # documentation range
    ("http://2130706433/", "non-standard numeric"),  # 127.0.0.1 in decimal
    ("http://0177.0.0.1/", "non-standard numeric"),  # octal
    ("http://0x7f.1/", "non-standard numeric"),  # hex, short form
    ("http://127.1/", "non-standard numeric"),
    ("http://0/", "non-standard numeric"),
    ("http://%31%32%37.0.0.1/", "not a valid host name"),  # percent-encoded 127
    ("file:///etc/passwd", "http or https"),
    ("gopher://93.184.215.14:70/_x", "http or https"),
    ("ftp://93.184.215.14/", "http or https"),
    ("javascript:alert(1)", "http or https"),
    ("//93.184.215.14/", "http or https"),
    ("http://user:pass@93.184.215.14/", "credentials"),
    ("http://user@93.184.215.14/", "credentials"),
    ("http:///path-only", "no host"),
    ("http://93.184.215.14:99999/", "not a valid URL"),
    ("http://93.184.215.14/a b", "without spaces"),
    ("http://93.184.215.14/\r\nX-Injected: 1", "without spaces"),
    ("http://no-such-host.invalid/", "does not resolve"),
    ("http://93.184.215.14/" + "a" * 2048, "longer than 2048"),
])
def test_callbacks_to_internal_or_odd_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeCallback) as refused:
        check_callback_url(url, [])
    assert reason in str(refused.value)


def test_public_addresses_pass_and_allowed_networks_open_the_rest() -> None:
    public = ipaddress.ip_address("93.184.215.14")
    assert check_callback_url("http://93.184.215.14/hook", []) == [public]
    assert check_callback_url("HTTPS://93.184.215.14:8443/a?b=c", []) == [public]
    assert check_callback_url("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/", [])
    loopback = ipaddress.ip_address("127.0.0.1")
    assert check_callback_url("http://127.0.0.1:8080/", LOCAL) == [loopback]
    assert check_callback_url("http://[::ffff:127.0.0.1]/", LOCAL)
    with pytest.raises(UnsafeCallback, match="loopback"):
        check_callback_url("http://127.0.0.2/", LOCAL)  # only the /32 is allowed
    with pytest.raises(UnsafeCallback, match="private"):
        check_callback_url("http://10.0.0.1/", LOCAL)


# -- one delivery over real HTTP ---------------------------------------------------


def _post(url: str, *, allow: list[Any] = LOCAL, timeout: float = 2.0) -> DeliveryResult:
    return deliver(url, BODY, {"Content-Type": "application/json", "X-Test": "1"},
                   timeout=timeout, allow=allow)


def test_a_delivery_posts_the_body_to_the_pinned_address(receiver: Receiver) -> None:
    result = _post(receiver.url("/ok?x=1"))
    assert result.ok and result.status_code == 200 and result.error is None
    assert result.duration_ms > 0
    [got] = receiver.at("/ok?x=1")
    assert got.body == BODY
    assert got.headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert got.headers["X-Test"] == "1" and got.headers["Content-Type"] == "application/json"


def test_failures_are_short_readable_errors_never_the_answer(receiver: Receiver) -> None:
    failed = _post(receiver.url("/fail"))
    assert (failed.status_code, failed.error, failed.ok) == (500, "HTTP 500", False)
    big = _post(receiver.url("/big"))
    assert big.ok and "x" not in repr(big)
    assert "secret internal answer" not in repr(failed)
    refused = _post(f"http://127.0.0.1:{free_port()}/")
    assert (refused.status_code, refused.error) == (None, "connection refused")
    started = time.monotonic()
    slow = _post(receiver.url("/slow"), timeout=0.5)
    assert (slow.status_code, slow.error) == (None, "timed out after 0.5 s")
    assert time.monotonic() - started < 2.5


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    result = _post(receiver.url("/redirect"))
    assert (result.status_code, result.error) == (302, "redirect not followed (HTTP 302)")
    assert not result.ok
    assert receiver.at("/target") == []


def test_https_certificates_are_verified_against_the_host_name(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        if REQUIRE_SERVICES:
            pytest.fail("openssl is not installed (SLIDEFARM_REQUIRE_SERVICES is set)",
                        pytrace=False)
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with conn, context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass  # the client hung up on the self-signed certificate

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        result = _post(f"https://localhost:{port}/hook")
        thread.join(5)
    # Pinned to the address, yet checked against the name: a certificate
    # nobody vouches for is refused, never accepted for convenience.
    assert result.status_code is None and result.error is not None
    assert result.error.startswith("TLS error") and "certificate verify failed" in result.error


def test_an_address_allowed_at_submission_is_refused_at_delivery_if_it_now_is_internal(
        receiver: Receiver) -> None:
    # Shaped like DNS rebinding: a name that passed the check resolves,
    # at delivery, to an address the delivery-time rules refuse.
    url = receiver.url("/ok", host="localhost")
    assert check_callback_url(url, LOCAL) == [ipaddress.ip_address("127.0.0.1")]
    result = _post(url, allow=[])
    assert result.status_code is None
    assert result.error == "refused: localhost resolves to 127.0.0.1 (loopback)"
    assert receiver.at("/ok") == []


# -- the store: claims, records, the schedule -----------------------------------------


def _final_job(store: JobStore, callback_url: str | None = "http://93.184.215.14/hook",
               status: Status = Status.COMPLETED) -> str:
    """A job with ``callback_url`` taken through a real final transition."""
    job, _ = store.create(small_deck(), title="hooked")
    if callback_url is not None:
        with store.transaction() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == job.id)
                         .values(callback_url=callback_url))
    if status is Status.CANCELLED:
        store.request_cancel(job.id)
        return job.id
    claimed = store.claim(job.id, "w@host")
    assert claimed is not None
    if status is Status.COMPLETED:
        assert store.complete(job.id, 1, video_url="v", thumbnail_url="t",
                              slide_image_path="slides")
    else:
        assert store.fail(job.id, 1, "broken")
    return job.id


def _result(code: int | None, error: str | None = None) -> DeliveryResult:
    return DeliveryResult(code, error, 12.5)


@pytest.mark.parametrize("final", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
def test_every_final_state_arms_the_webhook_and_one_claim_wins(store: JobStore,
                                                               final: Status) -> None:
    job_id = _final_job(store, status=final)
    webhook = job_json(store.get(job_id))["webhook"]
    assert webhook["status"] == "pending" and webhook["attempts"] == 0
    assert webhook["url"] == "http://93.184.215.14/hook" and webhook["next_attempt_at"]
    hooks = WebhookDeliveries(store)
    claim = hooks.claim(job_id, lease=30)
    assert claim is not None and claim.attempt == 1 and claim.job.status is final
    assert hooks.claim(job_id, lease=30) is None  # held: a copy of the task does nothing
    assert hooks.claim(job_id, lease=30, now=utcnow() + timedelta(seconds=31)) is not None


def test_no_callback_no_webhook(store: JobStore) -> None:
    job_id = _final_job(store, callback_url=None)
    assert job_json(store.get(job_id))["webhook"] is None
    hooks = WebhookDeliveries(store)
    assert hooks.claim(job_id, lease=30) is None
    assert hooks.due_webhooks(resend_after=10) == []


def test_a_delivery_is_recorded_once_and_a_2xx_delivers(store: JobStore) -> None:
    job_id = _final_job(store)
    hooks = WebhookDeliveries(store)
    claim = hooks.claim(job_id, lease=30)
    assert claim is not None
    ok = _result(204)
    assert hooks.record_delivery(job_id, 1, ok, backoff=1, retry_for=60) is \
        WebhookStatus.DELIVERED
    assert hooks.record_delivery(job_id, 1, ok, backoff=1, retry_for=60) is None  # duplicate
    assert hooks.record_delivery(job_id, 2, ok, backoff=1, retry_for=60) is None
    webhook = job_json(store.get(job_id))["webhook"]
    assert webhook["status"] == "delivered" and webhook["attempts"] == 1
    assert webhook["last_status_code"] == 204 and webhook["last_error"] is None
    assert webhook["delivered_at"] and webhook["next_attempt_at"] is None
    [delivery] = hooks.deliveries(job_id)
    assert (delivery.attempt, delivery.status_code, delivery.error, delivery.duration_ms) == \
        (1, 204, None, 12.5)
    assert hooks.claim(job_id, lease=30, now=utcnow() + timedelta(hours=1)) is None
    assert store.delete(job_id) and hooks.deliveries(job_id) == []


def test_failures_back_off_exponentially_then_fail_after_the_window(store: JobStore) -> None:
    job_id = _final_job(store)
    hooks = WebhookDeliveries(store)
    first = store.get(job_id).webhook_first_at
    assert first is not None
    now = first
    gaps = []
    for attempt in range(1, 4):
        claim = hooks.claim(job_id, lease=30, now=now)
        assert claim is not None and claim.attempt == attempt
        assert hooks.record_delivery(job_id, attempt, _result(500, "HTTP 500"), backoff=10,
                                     retry_for=3600, now=now) is WebhookStatus.PENDING
        due = store.get(job_id).webhook_next_at
        assert due is not None
        gaps.append((due - now).total_seconds())
        assert hooks.claim(job_id, lease=30, now=due - timedelta(seconds=1)) is None
        now = due
    for gap, step in zip(gaps, (10, 20, 40), strict=True):
        assert 0.8 * step <= gap <= 1.2 * step
    # Late in the window, the next attempt is at its very end, and the last one fails.
    late = first + timedelta(seconds=3590)
    claim = hooks.claim(job_id, lease=30, now=late)
    assert claim is not None
    hooks.record_delivery(job_id, claim.attempt, _result(None, "connection refused"),
                          backoff=10, retry_for=3600, now=late)
    assert store.get(job_id).webhook_next_at == first + timedelta(seconds=3600)
    end = first + timedelta(seconds=3600)
    claim = hooks.claim(job_id, lease=30, now=end)
    assert claim is not None
    assert hooks.record_delivery(job_id, claim.attempt, _result(503, "HTTP 503"), backoff=10,
                                 retry_for=3600, now=end) is WebhookStatus.FAILED
    webhook = job_json(store.get(job_id))["webhook"]
    assert webhook["status"] == "failed" and webhook["attempts"] == 5
    assert webhook["last_error"] == "HTTP 503" and webhook["next_attempt_at"] is None
    assert [d.error for d in hooks.deliveries(job_id)] == \
        ["HTTP 500"] * 3 + ["connection refused", "HTTP 503"]
    assert hooks.claim(job_id, lease=30, now=end + timedelta(days=1)) is None


def test_retry_delays_double_with_jitter() -> None:
    for attempt, step in ((1, 10), (2, 20), (5, 160)):
        delays = [retry_delay(10, attempt) for _ in range(50)]
        assert all(0.8 * step <= d <= 1.2 * step for d in delays)
        assert len(set(delays)) > 1


def test_due_webhooks_are_sent_once_until_taken_or_lost(store: JobStore) -> None:
    job_id = _final_job(store)
    hooks = WebhookDeliveries(store)
    assert hooks.due_webhooks(resend_after=10) == [job_id]
    assert hooks.due_webhooks(resend_after=10) == []  # sent, not taken yet
    later = utcnow() + timedelta(seconds=11)
    assert hooks.due_webhooks(resend_after=10, now=later) == [job_id]  # the task was lost
    claim = hooks.claim(job_id, lease=30, now=later)
    assert claim is not None
    hooks.record_delivery(job_id, 1, _result(500, "HTTP 500"), backoff=1, retry_for=60,
                          now=later)
    due = store.get(job_id).webhook_next_at
    assert due is not None
    assert hooks.due_webhooks(resend_after=10, now=due - timedelta(seconds=0.1)) == []
    # The retry is sent as soon as it is due: the last send was taken.
    assert hooks.due_webhooks(resend_after=10, now=due) == [job_id]


def test_a_retried_job_starts_a_fresh_webhook(store: JobStore) -> None:
    job_id = _final_job(store, status=Status.FAILED)
    hooks = WebhookDeliveries(store)
    claim = hooks.claim(job_id, lease=30)
    assert claim is not None
    store.retry(job_id)
    assert job_json(store.get(job_id))["webhook"]["status"] is None
    # The delivery in flight for the earlier end cannot record onto the new round.
    assert hooks.record_delivery(job_id, 1, _result(200), backoff=1, retry_for=60) is None
    assert hooks.claim(job_id, lease=30) is None


# -- the API -------------------------------------------------------------------------


def test_the_job_shows_its_deliveries_and_a_queued_cancel_sends_the_webhook(
        client: Any, store: JobStore, settings: Settings) -> None:
    plain = client.post("/v1/jobs", json=small_deck()).get_json()
    assert plain["webhook"] is None
    job_id = _final_job(store)
    hooks = WebhookDeliveries(store)
    hooks.claim(job_id, lease=30)
    hooks.record_delivery(job_id, 1, _result(500, "HTTP 500"), backoff=1, retry_for=60)
    body = client.get(f"/v1/jobs/{job_id}?include=deliveries,history").get_json()
    assert body["webhook"]["status"] == "pending" and body["webhook"]["last_status_code"] == 500
    [delivery] = body["deliveries"]
    assert delivery["attempt"] == 1 and delivery["status_code"] == 500
    assert delivery["error"] == "HTTP 500" and delivery["at"].endswith("Z")
    assert delivery["duration_ms"] == 12.5 and body["history"]
    assert client.get(f"/v1/jobs/{job_id}?include=nope").status_code == 400

    queued, _ = store.create(small_deck(), title="to cancel")
    with store.transaction() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.id == queued.id)
                     .values(callback_url="http://93.184.215.14/hook"))
    cancelled = client.post(f"/v1/jobs/{queued.id}/cancel").get_json()
    assert cancelled["status"] == "cancelled" and cancelled["webhook"]["status"] == "pending"
    messages = "".join(p.read_text(errors="replace")
                       for p in (settings.broker_dir / "queue").iterdir())
    assert messages.count("slidefarm.deliver_webhook") == 1 and queued.id in messages


def test_a_refused_callback_url_is_a_422_naming_the_field(app: Any) -> None:
    with app.test_request_context("/v1/jobs", method="POST"):
        try:
            check_callback_url("http://169.254.169.254/latest/meta-data/", [])
        except UnsafeCallback as refused:
            response = app.make_response(app.handle_user_exception(refused))
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "unsafe_callback_url"
    assert error["details"] == [{"field": "callback_url",
                                 "message": "169.254.169.254 is cloud metadata"}]


# -- end to end: real API and worker processes, a real receiver -----------------------

E2E_SETTINGS = {
    "SLIDEFARM_NOOP_RENDER": "1",
    "SLIDEFARM_WEBHOOK_ALLOW": "127.0.0.1/32",
    "SLIDEFARM_WEBHOOK_BACKOFF": "0.2",
    "SLIDEFARM_WEBHOOK_RETRY_FOR": "3",
    "SLIDEFARM_WEBHOOK_TIMEOUT": "2",
}


@dataclass
class Farm:
    stack: Stack
    store: JobStore
    dispatcher: Dispatcher
    receiver: Receiver

    def submit(self, path: str, deck: dict[str, Any] | None = None, *,
               dispatch: bool = True, url: str | None = None) -> str:
        """A job whose callback is ``path`` on the receiver (or ``url``),
        submitted through the API; a deck the API would refuse, a URL it
        would refuse, or a job that must stay queued is written to the store
        directly instead."""
        if dispatch and url is None and deck is None:
            status, body = self.stack.request("POST", "/v1/jobs", {
                **small_deck(slides=2), "callback_url": self.receiver.url(path)})
            assert status == 202, body
            return str(body["job_id"])
        job, _ = self.store.create(deck or small_deck(slides=2), title="hooked")
        with self.store.transaction() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == job.id)
                         .values(callback_url=url or self.receiver.url(path)))
        if dispatch:
            assert self.dispatcher.send_render(job.id)
        return job.id

    def job(self, job_id: str, include: str = "") -> dict[str, Any]:
        status, body = self.stack.request("GET", f"/v1/jobs/{job_id}{include}")
        assert status == 200, body
        return dict(body)

    def wait_webhook(self, job_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
        return self.stack.wait_for(
            job_id, lambda j: (j.get("webhook") or {}).get("status") == status, timeout)


@pytest.fixture(scope="module")
def farm(pg_url: str, redis_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    flush_run_index(redis_url)
    stack = make_stack(pg_url, redis_url, tmp_path_factory.mktemp("webhooks"), **E2E_SETTINGS)
    receiver = Receiver()
    try:
        stack.start_api()
        stack.start_worker("hooks", concurrency=2)
        settings = Settings(DATABASE_URL=pg_url, CELERY_BROKER_URL=redis_url)
        yield Farm(stack, JobStore.from_url(pg_url), Dispatcher(settings), receiver)
    finally:
        stack.stop_all()
        receiver.close()


def _verify_with_tenant_secret(farm: Farm, got: Received) -> None:
    secrets = AccessStore(farm.store).webhook_secrets("default")
    assert any(verify(got.headers["Slidefarm-Signature"], got.body, s) for s in secrets)


@pytest.mark.e2e
def test_a_completed_job_posts_one_signed_copy_of_itself(farm: Farm) -> None:
    latencies = []
    for n in range(1, 6):
        job_id = farm.submit(f"/ok-{n}")
        [got] = farm.receiver.wait(f"/ok-{n}", 1)
        job = farm.wait_webhook(job_id, "delivered")
        latencies.append(got.at - datetime.fromisoformat(job["completed_at"]).timestamp())
    print("\nwebhook latency, completion to receipt (ms): "
          + ", ".join(f"{x * 1000:.0f}" for x in latencies))
    assert sorted(latencies)[2] < 2.0
    time.sleep(1.0)  # a duplicate would have arrived by now
    assert all(len(farm.receiver.at(f"/ok-{n}")) == 1 for n in range(1, 6))
    assert job["status"] == "completed"
    expected = {k: v for k, v in job.items() if k != "webhook"}
    assert json.loads(got.body) == expected
    assert json.loads(got.body) == webhook_body(farm.store.get(job_id))
    _verify_with_tenant_secret(farm, got)
    assert not verify(got.headers["Slidefarm-Signature"], got.body + b" ",
                      AccessStore(farm.store).webhook_secrets("default")[0])
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "slidefarm-webhooks"
    assert got.headers["Slidefarm-Event"] == "job.completed"
    assert got.headers["Slidefarm-Delivery"] == f"{job_id}:1"
    webhook = job["webhook"]
    assert webhook["attempts"] == 1 and webhook["last_status_code"] == 200
    assert webhook["delivered_at"] and webhook["last_error"] is None


@pytest.mark.e2e
def test_a_receiver_failing_twice_gets_three_attempts(farm: Farm) -> None:
    job_id = farm.submit("/flaky-1")
    farm.receiver.wait("/flaky-1", 3)
    job = farm.wait_webhook(job_id, "delivered")
    assert job["webhook"]["attempts"] == 3
    deliveries = farm.job(job_id, "?include=deliveries")["deliveries"]
    assert [(d["attempt"], d["status_code"], d["error"]) for d in deliveries] == [
        (1, 500, "HTTP 500"), (2, 500, "HTTP 500"), (3, 200, None)]
    arrivals = [r.at for r in farm.receiver.at("/flaky-1")]
    assert arrivals[1] - arrivals[0] >= 0.2 * 0.8 - 0.05  # backed off
    assert arrivals[2] - arrivals[1] >= 0.4 * 0.8 - 0.05  # doubled
    ids = [r.headers["Slidefarm-Delivery"] for r in farm.receiver.at("/flaky-1")]
    assert ids == [f"{job_id}:{n}" for n in (1, 2, 3)]


@pytest.mark.e2e
def test_a_receiver_that_always_fails_ends_failed_after_the_window(farm: Farm) -> None:
    job_id = farm.submit("/fail-1")
    job = farm.wait_webhook(job_id, "failed", timeout=30)
    deliveries = farm.job(job_id, "?include=deliveries")["deliveries"]
    assert len(deliveries) == job["webhook"]["attempts"] >= 4
    assert all(d["status_code"] == 500 and d["error"] == "HTTP 500" for d in deliveries)
    first, last = (datetime.fromisoformat(d["at"]) for d in (deliveries[0], deliveries[-1]))
    assert 3.0 <= (last - first).total_seconds() < 5.0
    assert job["webhook"]["next_attempt_at"] is None
    time.sleep(1.0)
    assert len(farm.receiver.at("/fail-1")) == len(deliveries)


@pytest.mark.e2e
def test_a_redirect_is_not_followed(farm: Farm) -> None:
    job_id = farm.submit("/redirect-1")
    farm.wait_webhook(job_id, "failed", timeout=30)
    deliveries = farm.job(job_id, "?include=deliveries")["deliveries"]
    assert deliveries and all(d["status_code"] == 302 and
                              d["error"] == "redirect not followed (HTTP 302)"
                              for d in deliveries)
    assert farm.receiver.at("/target") == []


@pytest.mark.e2e
def test_failed_and_cancelled_jobs_post_their_end_too(farm: Farm) -> None:
    broken = farm.submit("/ok-failed", {"title": "no slides", "slides": []})
    [got] = farm.receiver.wait("/ok-failed", 1)
    assert got.headers["Slidefarm-Event"] == "job.failed"
    assert json.loads(got.body)["status"] == "failed"
    _verify_with_tenant_secret(farm, got)
    farm.wait_webhook(broken, "delivered")

    # Cancelled while queued, by the API: the API sends the delivery task.
    queued = farm.submit("/ok-cancelled", dispatch=False)
    status, body = farm.stack.request("POST", f"/v1/jobs/{queued}/cancel")
    assert status == 202 and body["status"] == "cancelled"
    [got] = farm.receiver.wait("/ok-cancelled", 1)
    assert got.headers["Slidefarm-Event"] == "job.cancelled"
    assert json.loads(got.body)["status"] == "cancelled"
    farm.wait_webhook(queued, "delivered")


@pytest.mark.e2e
def test_a_callback_that_became_internal_is_refused_at_delivery(farm: Farm) -> None:
    # 127.0.0.2 is loopback but outside SLIDEFARM_WEBHOOK_ALLOW (127.0.0.1/32):
    # as if the name had resolved elsewhere at submission.
    job_id = farm.submit("", url=f"http://127.0.0.2:{farm.receiver.port}/ok-never")
    job = farm.wait_webhook(job_id, "failed", timeout=30)
    assert job["webhook"]["last_error"] == "refused: 127.0.0.2 is loopback"
    assert job["webhook"]["last_status_code"] is None
    assert farm.receiver.at("/ok-never") == []


def test_the_readme_recipe_verifies_what_slidefarm_signs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Webhooks", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    recipe = namespace["verify_slidefarm"]
    header = sign(BODY, ["whsec_new", "whsec_old"])
    assert recipe(header, BODY, "whsec_new") and recipe(header, BODY, "whsec_old")
    assert not recipe(header, BODY + b"x", "whsec_new")
    assert not recipe(header, BODY, "whsec_other")
    assert not recipe(sign(BODY, ["whsec_new"], timestamp=int(time.time()) - 301), BODY,
                      "whsec_new")
    assert not recipe("t=abc,v1=00", BODY, "whsec_new")


def test_the_api_refuses_an_internal_callback_at_submission(app: Any) -> None:
    client = admin_client(app)
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data/",
                "http://10.1.2.3/", "file:///etc/passwd", "http://[::1]/", 12345,
                "http://[:::]/", "http://[::1/", "http://0/", "http://2130706433/",
                "http://a:0/", "http://u:p@example.com/", "http://localhost:8080/",
                "http://localhost./", "http://api.localhost/"):
        response = client.post("/v1/jobs", json={**small_deck(), "callback_url": url})
        assert response.status_code == 422, (url, response.get_data(as_text=True))
        assert response.get_json()["error"]["details"][0]["field"] == "callback_url"
    assert client.get("/v1/jobs").get_json()["jobs"] == []  # nothing was recorded
    accepted = client.post("/v1/jobs", json={**small_deck(),
                                             "callback_url": "https://93.184.215.14/hook"})
    assert accepted.status_code == 202
    webhook = accepted.get_json()["webhook"]  # not final yet: nothing due
    assert webhook["url"] == "https://93.184.215.14/hook" and webhook["status"] is None
    # A name that does not resolve now may later: accepted, checked at every delivery.
    later = client.post("/v1/jobs", json={**small_deck(),
                                          "callback_url": "https://hooks.example.invalid/x"})
    assert later.status_code == 202
