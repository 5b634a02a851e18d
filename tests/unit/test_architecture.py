"""The layering and wire rules of docs/design.md, checked on the real modules."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import celeryconfig
from api.dispatch import RENDER_TASK
from core.config import Settings
from tests.support import ROOT
from tests.support.stack import stack_env
from workers.tasks import RENDER_TASK as WORKER_RENDER_TASK
from workers.tasks import render_presentation

#: The renderer: the workers' modules that draw slides and encode video.
RENDERER = ("workers.slides", "workers.text", "workers.fonts", "workers.video")


def _modules(package: str) -> set[str]:
    """Every module ``package``'s code imports, by its full dotted name."""
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _imports(package: str) -> set[str]:
    return {name.split(".")[0] for name in _modules(package)}


def test_import_direction() -> None:
    assert not _imports("storage") & {"api", "workers", "celeryconfig"}
    assert "workers" not in _imports("api")
    assert "api" not in _imports("workers")


def test_the_core_imports_nothing_of_the_layers() -> None:
    assert (ROOT / "core" / "__init__.py").is_file()
    assert not _imports("core") & {"api", "workers", "storage", "celeryconfig", "migrations"}


def test_the_api_never_imports_the_renderer() -> None:
    renderer = {
        name
        for name in _modules("api")
        if any(name == m or name.startswith(f"{m}.") for m in RENDERER)
    }
    assert not renderer
    for module in RENDERER:
        assert (ROOT / f"{module.replace('.', '/')}.py").is_file(), module


def test_no_store_reaches_into_another_objects_private_parts() -> None:
    # A store may use its own private members (self._x, and super()._x of a
    # class it extends), never another's (store._snapshot): what several
    # stores need is public on Database or JobStore.
    reached: list[str] = []
    for path in (ROOT / "storage").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                owner = node.value
                mine = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
                inherited = (
                    isinstance(owner, ast.Call)
                    and isinstance(owner.func, ast.Name)
                    and owner.func.id == "super"
                )
                if not (mine or inherited):
                    reached.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not reached, reached


def test_each_table_handle_is_defined_once() -> None:
    defined = [
        str(path.relative_to(ROOT))
        for package in ("api", "workers", "storage", "core", "migrations")
        for path in (ROOT / package).rglob("*.py")
        if "__table__" in path.read_text()
    ]
    assert defined == ["storage/models.py"]


def test_api_process_never_loads_the_renderer() -> None:
    code = (
        "import sys, api; api.create_app();"
        "bad = [m for m in ('workers', 'PIL', 'imageio_ffmpeg', 'fontTools') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=stack_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_api_sends_the_task_the_worker_registers() -> None:
    assert RENDER_TASK == WORKER_RENDER_TASK == render_presentation.name


def test_celery_speaks_json_only_and_acks_late(tmp_path: Path) -> None:
    for url in ("redis://127.0.0.1:6379/0", "filesystem://"):
        conf = celeryconfig.from_settings(
            Settings(CELERY_BROKER_URL=url, SLIDEFARM_BROKER_DIR=str(tmp_path))
        )
        assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
        assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
        assert conf["worker_prefetch_multiplier"] == 1
        assert conf["broker_url"] == url


def test_postgres_urls_use_the_shipped_driver() -> None:
    from storage.db import normalize_url

    assert normalize_url("postgresql://u@h:5432/d").startswith("postgresql+psycopg2://")
    assert normalize_url("postgresql+psycopg2://u@h/d").startswith("postgresql+psycopg2://")
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_statements_are_named_builders_each_cached_by_itself() -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    from storage.jobs import statements

    dialects = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}
    built: dict[tuple[str, str], str] = {}
    for name, builder in vars(statements).items():
        if not hasattr(builder, "cache_info"):
            continue
        params = list(inspect.signature(builder).parameters)
        assert params in ([], ["dialect"]), name  # no caller's values baked in
        for dialect in dialects:
            args = (dialect,) if params else ()
            stmt = builder(*args)
            assert builder(*args) is stmt, name
            built[(name, dialect)] = str(stmt.compile(dialect=dialects[dialect]))
    assert {"claim_job", "complete_job", "insert_job", "load_job", "renew_lease"} <= {
        name for name, _ in built
    }
    # Distinct names, distinct statements: no two builders share one.
    for dialect in dialects:
        mine = [sql for (_, d), sql in built.items() if d == dialect]
        assert len(set(mine)) == len(mine)
