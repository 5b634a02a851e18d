"""The project installs quietly and completely: building its wheel or an
editable install warns about nothing, and an installed (non-editable) copy
serves the dashboard's templates and script from inside the package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import ROOT
from tests.support.stack import stack_env

#: What a build needs from the tree (copied, so no build folder lands in it).
SOURCES = ("pyproject.toml", "README.md", "celeryconfig.py", "api", "workers", "storage", "core")


def _copy_tree(target: Path) -> Path:
    target.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(source, target / name)
    return target


def _backend(tree: Path, hook: str, out: Path) -> list[str]:
    """Run one PEP 517 hook of the build backend, as pip does; the warnings
    it raised (what pip prints to whoever installs the project)."""
    code = (
        "import json, warnings\n"
        "from setuptools import build_meta\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    build_meta.{hook}({str(out)!r})\n"
        "print(json.dumps([f'{w.category.__name__}: {w.message}' for w in caught]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env=stack_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    caught: list[str] = json.loads(result.stdout.splitlines()[-1])
    return caught


def test_wheel_and_editable_builds_print_no_warning(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path / "src")
    for hook in ("build_wheel", "build_editable"):
        (tmp_path / hook).mkdir()
        assert _backend(tree, hook, tmp_path / hook) == [], hook


def test_an_installed_wheel_serves_templates_and_static_files(
    tmp_path: Path, sqlite_template: Path
) -> None:
    tree = _copy_tree(tmp_path / "src")
    (tmp_path / "dist").mkdir()
    _backend(tree, "build_wheel", tmp_path / "dist")
    wheel = next((tmp_path / "dist").glob("slidefarm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {f"api/templates/{p.name}" for p in (ROOT / "api" / "templates").glob("*.html")}
    assert templates and templates <= names and "api/static/dashboard.js" in names
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # From another folder, with the installed copy first on the path: the
    # working tree (editable install) must not be what answers.
    code = (
        "import api, core, storage, workers, sys\n"
        "for package in (api, core, storage, workers):\n"
        f"    assert package.__file__.startswith({str(site)!r}), package.__file__\n"
        "client = api.create_app().test_client()\n"
        "page = client.get('/')\n"
        "script = client.get('/static/dashboard.js')\n"
        "print(page.status_code, script.status_code, len(script.data))\n"
        "assert page.status_code == 200 and b'<html' in page.data.lower()\n"
        "assert script.status_code == 200 and script.data\n"
    )
    shutil.copy(sqlite_template, tmp_path / "slidefarm.db")
    env = stack_env(
        PYTHONPATH=str(site),
        DATABASE_URL=f"sqlite:///{tmp_path / 'slidefarm.db'}",
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "out"),
        SLIDEFARM_AUTH="off",
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
