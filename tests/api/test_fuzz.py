"""schemathesis against the app in-process, from the app's own ``/openapi.json``.

The run is schemathesis's own engine (what ``schemathesis run`` drives), so
every default check runs in every default phase: examples, coverage (each
boundary and each invalid value per parameter), fuzzing (positive and
negative data) and stateful (the document's links from a submitted job to
its reads, cancel, retry and delete). The assertions: no 5xx and no check
failed, i.e. every response is what the document says (status code, content
type, headers, body), invalid input is refused and valid input accepted.

Bounded by examples per operation to well under three minutes on SQLite with
the embedded broker; the number of requests sent is printed.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import Status, events
from schemathesis.engine import from_schema as engine_for
from werkzeug.serving import make_server

from core.config import Settings
from storage.db import dispose_engines
from storage.models import MAX_PRIORITY

#: Added to every request: a tenant's key, made by the ``fuzz_app`` fixture
#: (keys are required, as in production).
AUTH_HEADERS: dict[str, str] = {}

#: The fuzz tenant's own assets (made by ``fuzz_app``): a generated deck's
#: asset ids are random UUIDs no tenant has, which the API rightly refuses
#: (422); ``_real_assets`` puts these in their place, so a schema-valid deck
#: is a deck the API must accept.
FUZZ_ASSETS: dict[str, str] = {}
#: Stores the fuzz assets again that the run deleted (``fuzz_app`` sets it):
#: schemathesis reuses ids it has seen, so ``DELETE /v1/assets/{id}`` can
#: delete them while no job uses them.
RESTORE_ASSETS: list[Callable[[], None]] = []


def _real_assets(ctx: Any, case: Any, **kwargs: Any) -> None:
    body = case.body
    if not FUZZ_ASSETS or not isinstance(body, dict):
        return
    if case.operation.label == "POST /v1/jobs":
        _use_real_assets(body)
    elif case.operation.label == "POST /v1/batches" and isinstance(body.get("jobs"), list):
        for item in body["jobs"]:
            if isinstance(item, dict):
                _use_real_assets(item)


def _use_real_assets(body: dict[str, Any]) -> None:
    from core.deck import is_asset_id

    for restore in RESTORE_ASSETS:
        restore()

    source = body.get("source")
    if isinstance(source, dict) and isinstance(source.get("asset"), str):
        source["asset"] = FUZZ_ASSETS["document"]
    slides = body.get("slides")
    for slide in slides if isinstance(slides, list) else []:
        image = slide.get("image") if isinstance(slide, dict) else None
        if isinstance(image, str) and is_asset_id(image):
            slide["image"] = FUZZ_ASSETS["image"]
        if isinstance(slide, dict) and isinstance(slide.get("audio"), str):
            slide["audio"] = FUZZ_ASSETS["audio"]
    options = body.get("options")
    music = options.get("music") if isinstance(options, dict) else None
    if isinstance(music, dict) and isinstance(music.get("asset"), str):
        music["asset"] = FUZZ_ASSETS["audio"]


# Global (schemathesis has no per-schema before_call); it acts only while
# ``fuzz_app`` has made the assets, and only on submissions.
schemathesis.hook("before_call")(_real_assets)

#: Examples per operation and phase; ~16 operations, so this bounds the run.
MAX_EXAMPLES = 150


def fuzz_config(operations: tuple[dict[str, Any], ...] = (), **extra: Any) -> Any:
    return schemathesis.Config.from_dict(
        {
            "seed": 20240601,  # the same run every time; change it to explore further
            "headers": AUTH_HEADERS,
            # An event stream of a job no worker takes never ends: its first event is enough.
            "max-stream-events": 1,
            "request-timeout": 5,
            "generation": {"max-examples": MAX_EXAMPLES},
            "phases": {"stateful": {"max-steps": 8}},
            **extra,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "operations": [
                {
                    # docs/design.md: the outputs answer 404 until the job is completed, and no
                    # worker runs here, so "just created, yet 404" is the contract.
                    "include-path-regex": r"/(video|thumbnail|slides/\{n\})$",
                    "checks": {
                        "ensure_resource_availability": {"enabled": False},
                        # A well-formed Range past the end of a file (the fixture's
                        # thumbnail is 8 bytes) is rightly 416, as documented.
                        "positive_data_acceptance": {
                            "expected-statuses": [
                                "2xx",
                                "3xx",
                                "401",
                                "403",
                                "404",
                                "409",
                                "416",
                                "429",
                                "5xx",
                            ]
                        },
                    },
                },
                {
                    # A well-formed Range past the end of an asset is rightly 416.
                    "include-name": "GET /v1/assets/{asset_id}/content",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": [
                                "2xx",
                                "3xx",
                                "401",
                                "403",
                                "404",
                                "416",
                                "5xx",
                            ]
                        },
                    },
                },
                {
                    # An upload is judged by its bytes: bytes the document's
                    # schema allows (any binary) are rightly refused with 422
                    # unless they are an image or a document.
                    "include-name": "POST /v1/assets",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "401", "403", "413", "422", "5xx"]
                        },
                    },
                },
                *operations,
            ],
        }
    )


class RequestCounter:
    """Counts every request that reaches the app (a WSGI middleware)."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app
        self.count = 0
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        streaming = False

        def counting_start_response(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            nonlocal streaming
            code = int(status.split(" ", 1)[0])
            streaming = any(
                name.lower() == "content-type" and "event-stream" in value
                for name, value in headers
            )
            with self._lock:
                self.statuses[code] = self.statuses.get(code, 0) + 1
            return start_response(status, headers, *args)

        with self._lock:
            self.count += 1
        body = self.wsgi_app(environ, counting_start_response)
        if streaming:
            return body  # never buffer a stream that may not end
        # A server closes every response; schemathesis's WSGI client reads a
        # body without closing it, which would leave served files open.
        try:
            return [b"".join(body)]
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` on a real HTTP server on loopback (threads), as an outside
    harness would reach it: some checks (``ignored_auth``) send probes that
    schemathesis's in-process WSGI transport cannot."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def fuzz_app(tmp_path: Path, sqlite_template: Path) -> Iterator[Any]:
    """The app on a fresh SQLite file, with limits far above what the run sends."""
    from api import create_app

    db = tmp_path / "slidefarm.db"
    shutil.copy(sqlite_template, db)
    settings = Settings(
        DATABASE_URL=f"sqlite:///{db}",
        CELERY_BROKER_URL="filesystem://",
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
        SLIDEFARM_AUTH="required",
        SLIDEFARM_SUBMIT_RATE=1_000_000,
        SLIDEFARM_SUBMIT_BURST=1_000_000,
        SLIDEFARM_MAX_ACTIVE_JOBS=1_000_000,
        # Callback URLs that are IP literals pass the address guard; its
        # refusals of private addresses are tested in tests/unit/test_webhooks.py.
        SLIDEFARM_WEBHOOK_ALLOW="0.0.0.0/0,::/0",
        # Signed links on, as a deployment that embeds outputs runs.
        SLIDEFARM_SECRET_KEY="fuzz-" + "k" * 40,
        # Every date-time the document allows (years 1 to 9999) is within reach;
        # the horizon's 422 is tested in tests/api/test_scheduling.py.
        SLIDEFARM_MAX_SCHEDULE_DAYS=4_000_000,
    )
    app = create_app({"TESTING": True, "SETTINGS": settings})
    from storage.access import AccessStore

    access = AccessStore(app.extensions["slidefarm"].store)
    token = access.create_key("fuzz").token
    # The document's whole priority range is the fuzz tenant's to ask for; the
    # tenant maximum's 422 is tested in tests/api/test_scheduling.py.
    access.set_limits("fuzz", max_priority=MAX_PRIORITY)
    AUTH_HEADERS.clear()
    AUTH_HEADERS["Authorization"] = f"Bearer {token}"
    from storage.assets import AssetLimits, AssetStore
    from tests.support.assets import audio_bytes, image_bytes, pdf_bytes

    assets = AssetStore(app.extensions["slidefarm"].store, settings.output_dir)
    made_assets = (
        ("image", image_bytes("PNG")),
        ("document", pdf_bytes()),
        ("audio", audio_bytes("wav", 0.2)),
    )

    def restore() -> None:
        present = assets.find(FUZZ_ASSETS.values(), owner="fuzz")
        for name, data in made_assets:
            if FUZZ_ASSETS.get(name) not in present:
                asset, _ = assets.ingest("fuzz", [data], AssetLimits.from_settings(settings))
                FUZZ_ASSETS[name] = asset.id

    restore()
    RESTORE_ASSETS.append(restore)
    app.wsgi_app = RequestCounter(app.wsgi_app)
    yield app
    RESTORE_ASSETS.clear()
    FUZZ_ASSETS.clear()
    dispose_engines()


def _run(app: Any, schema: Any) -> tuple[RequestCounter, list[str], float]:
    """Run schemathesis's engine over ``schema``; return what reached the app,
    every failed check and error, and the seconds it took."""
    counter: RequestCounter = app.wsgi_app
    started = time.monotonic()
    problems: list[str] = []
    for event in engine_for(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            problems += _failures(event)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            problems.append(f"{getattr(event, 'label', 'engine')}: {event.info.format()}")
    return counter, problems, time.monotonic() - started


def _failures(event: events.ScenarioFinished) -> list[str]:
    found = []
    for case_id, checks in event.recorder.checks.items():
        for check in checks:
            if check.status == Status.FAILURE and check.failure_info is not None:
                failure = check.failure_info.failure
                interaction = event.recorder.interactions.get(case_id)
                answer = b""
                if interaction is not None and interaction.response is not None:
                    answer = interaction.response.content or b""
                found.append(
                    f"{event.recorder.label}: {check.name}: {failure.title}\n"
                    f"{failure.message}\n{check.failure_info.code_sample}\n"
                    f"answer: {answer[:400]!r}"
                )
    return found


# Serial: minutes of CPU; beside the other tests it passed the 300 s timeout.
@pytest.mark.serial
def test_schemathesis_finds_nothing(fuzz_app: Any) -> None:
    with served(fuzz_app) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=fuzz_config())
        schema.validate()  # the document itself is valid OpenAPI 3.1
        counter, problems, elapsed = _run(fuzz_app, schema)

    print(
        f"\nschemathesis: {counter.count} requests in {elapsed:.1f}s; "
        f"statuses {dict(sorted(counter.statuses.items()))}"
    )
    assert not {code: n for code, n in counter.statuses.items() if code >= 500}
    assert not problems, "\n\n".join(problems[:20])
    assert counter.count > 1000


def _complete_with_files(app: Any, job_id: str) -> None:
    """What a worker leaves behind, without a worker: files in place, job completed."""
    svc = app.extensions["slidefarm"]
    job = svc.store.claim(job_id, "fuzz@host")
    folder = svc.settings.output_dir / job_id
    (folder / "slides").mkdir(parents=True)
    (folder / "video.mp4").write_bytes(bytes(range(256)) * 64)
    (folder / "thumbnail.jpg").write_bytes(b"\xff\xd8\xff\xe0jpeg")
    (folder / "slides" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\nslide")
    svc.store.add_files(
        job_id, job.attempts, [("video.mp4", 16384), ("thumbnail.jpg", 8), ("slides/001.png", 13)]
    )
    svc.store.complete(
        job_id,
        job.attempts,
        video_url=f"/v1/jobs/{job_id}/video",
        thumbnail_url=f"/v1/jobs/{job_id}/thumbnail",
        slide_image_path="slides",
    )


def test_a_completed_job_reads_as_documented(fuzz_app: Any) -> None:
    """The reads of one completed job: the files (200, 206, 304, 416), the job
    with its history, and a whole event stream, fuzzed with the job id pinned."""
    from tests.support.decks import small_deck

    client = fuzz_app.test_client()
    job_id = client.post("/v1/jobs", json=small_deck(1), headers=AUTH_HEADERS).get_json()["job_id"]
    _complete_with_files(fuzz_app, job_id)
    # No stateful phase: it would create, cancel and delete jobs around the pinned id.
    config = fuzz_config(
        ({"exclude-name-regex": r"^GET /v1/jobs/\{job_id\}", "enabled": False},),
        parameters={"job_id": job_id},
        phases={"stateful": {"enabled": False}},
        generation={"max-examples": 50},
    )
    with served(fuzz_app) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=config)

        counter, problems, elapsed = _run(fuzz_app, schema)

        print(
            f"\nschemathesis, completed job: {counter.count} requests in {elapsed:.1f}s; "
            f"statuses {dict(sorted(counter.statuses.items()))}"
        )
        assert not problems, "\n\n".join(problems[:20])
        assert {200, 206}.issubset(counter.statuses)

        video = schema["/v1/jobs/{job_id}/video"]["GET"]
        etag = client.get(f"/v1/jobs/{job_id}/video", headers=AUTH_HEADERS)
        etag.close()
        expected = (
            ({"Range": "bytes=0-9"}, 206),
            ({"Range": "bytes=999999-"}, 416),
            ({"Range": "bytes=-0"}, 416),
            ({"Range": "items=0-1"}, 200),
            ({"Range": "bytes=0-1,4-5"}, 200),
            ({"Range": "nonsense"}, 200),
            ({"If-None-Match": etag.headers["ETag"]}, 304),
        )
        for headers, status in expected:
            case = video.Case(path_parameters={"job_id": job_id}, headers=headers)
            response = case.call_and_validate(headers=AUTH_HEADERS)
            assert response.status_code == status, (headers, response.status_code)
