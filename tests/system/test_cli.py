"""The ``slidefarm`` console script, run as a user would (a subprocess) against
real PostgreSQL, Redis and a real worker, and for the SQLite-to-PostgreSQL move."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storage import JobStore
from storage.access import AccessStore
from storage.counters import totals
from storage.db import create_db_engine
from tests.support import ROOT
from tests.support.decks import small_deck
from tests.support.services import create_pg_database, drop_pg_database
from tests.support.stack import Stack, stack_env

CLI = str(Path(sys.executable).parent / "slidefarm")
pytestmark = pytest.mark.e2e


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def run_json(env: dict[str, str], *args: str) -> Any:
    result = run(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_against_a_running_stack(pg_redis_stack: Stack, tmp_path: Path) -> None:
    stack = pg_redis_stack
    stack.start_worker("cli")
    env = stack.env
    deck_file = tmp_path / "deck.json"
    deck_file.write_text(json.dumps(small_deck(slides=2, duration=0.5)))

    waited = run(env, "submit", str(deck_file), "--wait")
    assert waited.returncode == 0, waited.stderr
    assert "completed" in waited.stdout and "video:" in waited.stdout
    video = Path(waited.stdout.split("video:", 1)[1].strip().splitlines()[0])
    assert video.is_file()

    job_id = run(env, "submit", str(deck_file)).stdout.strip()
    assert len(job_id) == 36
    listed = run_json(env, "jobs", "list")
    assert job_id in [j["job_id"] for j in listed["jobs"]] and len(listed["jobs"]) == 2
    table = run(env, "jobs", "list", "--status", "completed")
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("ID")
    deadline = time.monotonic() + 60
    while (shown := run_json(env, "jobs", "show", job_id))["status"] != "completed":
        assert time.monotonic() < deadline, shown
        time.sleep(0.3)
    assert shown["job_id"] == job_id and shown["history"][0]["to"] == "queued"
    assert [e["to"] for e in shown["history"]] == ["queued", "processing", "completed"]
    human = run(env, "jobs", "show", job_id)
    assert human.returncode == 0 and "history:" in human.stdout

    finished = run(env, "jobs", "cancel", job_id)
    assert finished.returncode == 1
    assert finished.stderr.strip().startswith("Error:")
    assert len(finished.stderr.strip().splitlines()) == 1
    missing = run(env, "jobs", "show", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1 and "No such job" in missing.stderr

    workers = run_json(env, "workers")
    assert [w["name"].split("@")[0] for w in workers["workers"]] == ["cli"]
    # The worker registered the voices its host speaks: espeak-ng and Piper's joe.
    voices = {v["id"]: v for v in run_json(env, "voices")["voices"]}
    assert (
        voices["espeak-ng:en"]["workers"] == 1 and voices["espeak-ng:en"]["engine"] == "espeak-ng"
    )
    assert voices["piper:en_US-joe-medium"]["language"] == "en-us"
    assert "piper:en_US-joe-medium" in run(env, "voices").stdout
    stats = run_json(env, "stats")
    assert stats["total"] == 2 and stats["queue_depth"] is not None

    assert run(env, "jobs", "delete", job_id).returncode == 0
    assert run(env, "jobs", "delete", job_id).returncode == 1
    cleaned = run(env, "cleanup", "--older-than", "0s")
    assert cleaned.returncode == 0 and "deleted 1 job" in cleaned.stdout
    assert run_json(env, "jobs", "list")["jobs"] == []
    assert run(env, "cleanup", "--older-than", "soon").returncode == 2

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"title": "", "slides": []}))
    refused = run(env, "submit", str(bad))
    assert refused.returncode == 1 and "invalid deck" in refused.stderr


def moved_metrics(url: str) -> dict[str, int]:
    """Every transition count /metrics would show for the database at ``url``."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return totals(conn)
    finally:
        engine.dispose()


def test_db_upgrade_and_copy_from_sqlite_to_postgres(pg_server: Any, tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'small.db'}"
    env = stack_env(DATABASE_URL=source)
    assert run(env, "db", "upgrade").returncode == 0
    store = JobStore.from_url(source)
    ids = []
    for n in range(3):
        job, _ = store.create(small_deck(), title=f"deck {n}")
        ids.append(job.id)
    store.claim(ids[0], "w@h")
    store.add_file(ids[0], 1, "video.mp4", 10)
    store.complete(ids[0], 1, video_url="/v", thumbnail_url="/t", slide_image_path="slides")
    key = AccessStore(store).create_key("acme").token
    gone, _ = store.create(small_deck(), title="deleted before the move")
    assert store.delete(gone.id)  # its submission lives on in a counter row

    target = create_pg_database(pg_server, prefix="slidefarm_copy")
    try:
        copied = run(env, "db", "copy", "--from", source, "--to", target)
        assert copied.returncode == 0, copied.stderr
        assert "3 jobs" in copied.stdout and "1 files" in copied.stdout
        assert "1 tenants" in copied.stdout and "1 keys" in copied.stdout
        assert "counters" in copied.stdout
        moved = JobStore.from_url(target)
        assert moved_metrics(target) == moved_metrics(source)
        assert AccessStore(moved).verify(key) is not None  # the key works on the new store
        for job_id in ids:
            before, after = store.get(job_id), moved.get(job_id)
            assert after == before
            assert moved.history(job_id) == store.history(job_id)
        again = run(env, "db", "copy", "--from", source, "--to", target)
        assert again.returncode == 0 and "0 jobs" in again.stdout  # idempotent
    finally:
        drop_pg_database(pg_server, target)


def test_assets_upload_list_and_delete(db_url: str, tmp_path: Path) -> None:
    from tests.support.assets import pdf_bytes, svg_bytes

    env = stack_env(DATABASE_URL=db_url, SLIDEFARM_OUTPUT_DIR=str(tmp_path / "out"))
    document = tmp_path / "photo.png"  # a PDF, whatever its name says
    document.write_bytes(pdf_bytes())
    made = run_json(env, "assets", "upload", str(document), "--tenant", "acme")
    assert made["kind"] == "pdf" and made["created"] and made["owner"] == "acme"
    again = run_json(env, "assets", "upload", str(document), "--tenant", "acme")
    assert again["id"] == made["id"] and not again["created"]
    listed = run_json(env, "assets", "list", "--tenant", "acme")
    assert [a["id"] for a in listed["assets"]] == [made["id"]]
    assert run_json(env, "assets", "list", "--tenant", "globex")["assets"] == []
    svg = tmp_path / "logo.svg"
    svg.write_bytes(svg_bytes())
    refused = run(env, "assets", "upload", str(svg))
    assert refused.returncode != 0 and "SVG is not accepted" in refused.stderr
    deleted = run(env, "assets", "delete", made["id"])
    assert deleted.returncode == 0, deleted.stderr
    assert run_json(env, "assets", "list")["assets"] == []
    missing = run(env, "assets", "delete", made["id"])
    assert missing.returncode != 0 and "no asset" in missing.stderr


def test_submit_pdf_uploads_the_document_and_submits_its_pages(db_url: str, tmp_path: Path) -> None:
    from tests.support.assets import image_bytes, pdf_bytes

    env = stack_env(
        DATABASE_URL=db_url,
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "out"),
        # Its wake-up goes to this test's broker folder, not the checkout's.
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
    )
    document = tmp_path / "Quarterly review.pdf"
    document.write_bytes(pdf_bytes(pages=3))
    job = run_json(
        env,
        "submit",
        "--pdf",
        str(document),
        "--tenant",
        "acme",
        "--aspect",
        "9:16",
        "--resolution",
        "1080p",
        "--transition",
        "fade",
        "--narrate",
        "--voice",
        "espeak-ng:fr",
    )
    assert job["status"] == "queued" and job["title"] == "Quarterly review"
    deck = JobStore(create_db_engine(db_url)).get(job["job_id"]).deck
    asset = run_json(env, "assets", "list", "--tenant", "acme")["assets"][0]
    assert deck["source"] == {"asset": asset["id"]} and asset["kind"] == "pdf"
    assert deck["options"]["aspect"] == "9:16" and deck["options"]["resolution"] == "1080p"
    assert deck["options"]["transition"] == "fade"
    assert deck["options"]["narrate"] is True and deck["options"]["voice"] == "espeak-ng:fr"
    # The document is linked to the queued job: it cannot be deleted under it.
    busy = run(env, "assets", "delete", asset["id"])
    assert busy.returncode != 0 and "queued or processing job" in busy.stderr
    # An image is not a document; DECK_FILE and --pdf are one or the other.
    picture = tmp_path / "photo.pdf"
    picture.write_bytes(image_bytes("PNG"))
    wrong = run(env, "submit", "--pdf", str(picture))
    assert wrong.returncode != 0 and "not a PDF or PPTX" in wrong.stderr
    both = run(env, "submit", str(document), "--pdf", str(document))
    assert both.returncode != 0 and "either DECK_FILE or --pdf" in both.stderr


def test_submit_priority_and_run_at(db_url: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    env = stack_env(
        DATABASE_URL=db_url,
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "out"),
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
        SLIDEFARM_MAX_SCHEDULE_DAYS="2",
    )
    deck = tmp_path / "deck.json"
    deck.write_text(json.dumps(small_deck(slides=1)))
    later = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    job = run_json(
        env,
        "submit",
        str(deck),
        "--priority",
        "42",
        "--run-at",
        later.isoformat(),
        "--tenant",
        "acme",
    )
    assert job["status"] == "scheduled" and job["priority"] == 42
    assert job["run_at"] == later.isoformat().replace("+00:00", "Z")
    assert not list((tmp_path / "broker").rglob("*.msg"))  # nothing sent for it
    listed = run_json(env, "jobs", "list", "--status", "scheduled")
    assert [j["job_id"] for j in listed["jobs"]] == [job["job_id"]]
    assert "PRIORITY" in run(env, "jobs", "list").stdout

    naive = run(env, "submit", str(deck), "--run-at", "2030-01-01T10:00:00")
    assert naive.returncode == 2 and "zone offset" in naive.stderr
    far = (later + timedelta(days=3)).isoformat()
    too_far = run(env, "submit", str(deck), "--run-at", far)
    assert too_far.returncode == 1 and "SLIDEFARM_MAX_SCHEDULE_DAYS" in too_far.stderr
    assert run(env, "submit", str(deck), "--priority", "101").returncode == 2

    # --idempotency-key covers the options the deck file does not hold.
    key = ("--idempotency-key", "nightly", "--run-at", later.isoformat())
    first = run_json(env, "submit", str(deck), *key, "--priority", "1")
    assert run_json(env, "submit", str(deck), *key, "--priority", "1")["job_id"] == first["job_id"]
    conflict = run(env, "submit", str(deck), *key, "--priority", "2")
    assert conflict.returncode == 1 and "Idempotency-Key" in conflict.stderr

    cancelled = run(env, "jobs", "cancel", job["job_id"])
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert run_json(env, "jobs", "show", job["job_id"])["history"][-1]["from"] == "scheduled"


def test_tenant_limits(db_url: str, tmp_path: Path) -> None:
    env = stack_env(DATABASE_URL=db_url, SLIDEFARM_MAX_RUNNING="4")
    assert run(env, "keys", "create", "--tenant", "acme").returncode == 0
    assert run(env, "keys", "create", "--tenant", "globex").returncode == 0
    shown = run_json(env, "tenants", "limits", "acme")
    assert shown == {
        "tenant": "acme",
        "weight": 1.0,
        "max_running": None,
        "max_priority": None,
        "effective": {"max_running": 4, "max_priority": 10},
    }
    changed = run_json(
        env, "tenants", "limits", "acme", "--weight", "2.5", "--max-running", "0",
        "--max-priority", "-5",
    )  # fmt: skip
    assert changed["weight"] == 2.5 and changed["max_running"] == 0
    assert changed["effective"] == {"max_running": 0, "max_priority": -5}
    human = run(env, "tenants", "limits", "acme", "--max-running", "default")
    assert human.returncode == 0, human.stderr
    header, row = human.stdout.splitlines()
    assert header.split() == ["TENANT", "WEIGHT", "MAX", "RUNNING", "MAX", "PRIORITY"]
    assert row.split() == ["acme", "2.5", "4", "(default)", "-5"]
    listed = run_json(env, "tenants", "list")["tenants"]
    assert [(t["tenant"], t["weight"], t["max_priority"]) for t in listed] == [
        ("acme", 2.5, -5),
        ("globex", 1.0, None),
    ]
    table = run(env, "tenants", "list").stdout
    assert "globex" in table and "10 (default)" in table
    assert (
        run_json(env, "tenants", "limits", "acme", "--max-priority", "default")["max_priority"]
        is None
    )

    for bad in (("--max-priority", "101"), ("--max-running", "-1"), ("--max-running", "lots")):
        refused = run(env, "tenants", "limits", "acme", *bad)
        assert refused.returncode == 2 and "default" in refused.stderr
    zero = run(env, "tenants", "limits", "acme", "--weight", "0")
    assert zero.returncode == 1 and "weight" in zero.stderr
    unknown = run(env, "tenants", "limits", "nobody")
    assert unknown.returncode == 1 and "no tenant nobody" in unknown.stderr
