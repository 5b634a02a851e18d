"""The layering and wire rules of docs/design.md, checked on the real modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import celeryconfig
from api.dispatch import RENDER_TASK
from storage import Settings
from tests.support import ROOT
from tests.support.stack import stack_env
from workers.tasks import RENDER_TASK as WORKER_RENDER_TASK
from workers.tasks import render_presentation


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_import_direction() -> None:
    assert not _imports("storage") & {"api", "workers", "celeryconfig"}
    assert "workers" not in _imports("api")
    assert "api" not in _imports("workers")


def test_api_process_never_loads_the_renderer() -> None:
    code = (
        "import sys, api; api.create_app();"
        "bad = [m for m in ('workers', 'PIL', 'imageio_ffmpeg', 'fontTools') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=stack_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_api_sends_the_task_the_worker_registers() -> None:
    assert RENDER_TASK == WORKER_RENDER_TASK == render_presentation.name


def test_celery_speaks_json_only_and_acks_late(tmp_path: Path) -> None:
    for url in ("redis://127.0.0.1:6379/0", "filesystem://"):
        conf = celeryconfig.from_settings(Settings(CELERY_BROKER_URL=url,
                                                   SLIDEFARM_BROKER_DIR=str(tmp_path)))
        assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
        assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
        assert conf["worker_prefetch_multiplier"] == 1
        assert conf["broker_url"] == url


def test_postgres_urls_use_the_shipped_driver() -> None:
    from storage.db import normalize_url

    assert normalize_url("postgresql://u@h:5432/d").startswith("postgresql+psycopg2://")
    assert normalize_url("postgresql+psycopg2://u@h/d").startswith("postgresql+psycopg2://")
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
