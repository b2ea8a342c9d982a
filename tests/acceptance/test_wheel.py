"""The built wheel: it ships the migrations and SQL, and its CLI migrates a database.

Builds the wheel from the repository, checks its contents, installs it into a
fresh virtualenv (dependencies come from the environment running the tests,
so no network is needed) and runs that venv's ``jobqueue migrate`` from a
directory outside the repository, where the checkout cannot shadow the
installed package.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobqueue.db import migrate

REPO = Path(__file__).resolve().parents[2]  # the checkout these tests belong to
REQUIRED_TABLES = {"jobs", "dead_jobs", "workers", "cron", migrate.VERSION_TABLE}


def run(cmd: Sequence[str | Path], cwd: Path, timeout: float = 180,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def build_wheel(out: Path) -> Path:
    """Build without network when the build backend is installed here (it is in CI)."""
    if importlib.util.find_spec("hatchling") is None:
        # pip fetches the backend into an isolated build environment.
        cmd: list[str | Path] = [sys.executable, "-m", "pip", "wheel", "--no-deps",
                                 "-w", out, REPO]
    elif importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, REPO]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "-w", out, REPO]
    run(cmd, cwd=out.parent)
    wheels = list(out.glob("jobqueue-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel installed in it; returns its bin directory."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root)
    python = root / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    cwd=root).stdout.strip())
    # --system-site-packages reaches the base interpreter's packages, not those of a
    # venv running these tests: list the latter too. A .pth line only appends the
    # directory; the .pth files inside it (the editable install of the checkout)
    # are not run, so the checkout stays off sys.path.
    outer = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_outer_dependencies.pth").write_text("\n".join(sorted(outer)) + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", wheel], cwd=root)
    return root / "bin"


def clean_env() -> dict[str, str]:
    """The environment without anything that could point Python or jobqueue elsewhere."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "JOBQUEUE_", "VIRTUAL_ENV"))}


def test_wheel_ships_migrations_sql_and_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    assert "jobqueue/migrations/env.py" in names
    assert "jobqueue/migrations/script.py.mako" in names
    revisions = sorted((REPO / "migrations" / "versions").glob("*.py"))
    assert revisions
    for revision in revisions:
        assert f"jobqueue/migrations/versions/{revision.name}" in names
    sql_files = sorted((REPO / "jobqueue" / "sql").rglob("*.sql"))
    assert any(p.name == "queries.sql" for p in sql_files)
    for path in sql_files:
        assert f"jobqueue/{path.relative_to(REPO / 'jobqueue').as_posix()}" in names
    # Only the package: a top-level migrations/ or tests/ would land in site-packages.
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"jobqueue"} | {t for t in tops if t.endswith(".dist-info")}
    assert len(tops) == 2
    assert "jobqueue = jobqueue.cli:main" in entry_points


def test_installed_cli_migrates_an_empty_schema_from_outside_the_repo(
        installed: Path, pg_dsn: str, schema: str, admin: psycopg.Connection[Any],
        tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env()

    where = run([installed / "python", "-c",
                 "import jobqueue; from jobqueue.db import migrate; "
                 "print(jobqueue.__file__); print(migrate.migrations_dir())"],
                cwd=elsewhere, env=env).stdout.split()
    venv_root = installed.parent.resolve()
    assert Path(where[0]).resolve().is_relative_to(venv_root), where
    assert Path(where[1]).resolve().is_relative_to(venv_root), where
    assert not Path(where[0]).resolve().is_relative_to(REPO)

    result = run([installed / "jobqueue", "migrate", "--dsn", pg_dsn, "--schema", schema],
                 cwd=elsewhere, env=env)
    assert migrate.head_revision() in result.stdout

    rows = admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                         (schema,)).fetchall()
    assert {r[0] for r in rows} >= REQUIRED_TABLES
    assert migrate.current_revision(admin, schema) == migrate.head_revision()

    printed = run([installed / "jobqueue", "migrate", "--sql", "--schema", "printed"],
                  cwd=elsewhere, env=env).stdout
    assert 'CREATE TABLE "printed".jobs' in printed
    assert "jobqueue_alembic_version" in printed
