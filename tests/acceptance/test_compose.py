"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

No Docker runs here, so these tests check what can be checked statically: the
services and how they are wired (healthcheck, ``service_healthy``, a DSN
that names the ``postgres`` service with its credentials), that the image
installs this package from files the build context really holds, and that
every ``jobqueue`` command the worker service runs is accepted by the
installed CLI.
"""

from __future__ import annotations

import fnmatch
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

REPO = Path(__file__).resolve().parents[2]  # the checkout these tests belong to
# What `pip install .` needs to build the wheel (pyproject's readme, package, force-include).
BUILD_INPUTS = ("pyproject.toml", "README.md", "jobqueue", "migrations")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whichever of the two compose spellings it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def shell_commands(command: str | list[str]) -> list[list[str]]:
    """The simple commands of a service's command (``sh -c "a && b"`` included)."""
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    if argv[:2] == ["sh", "-c"] or argv[:2] == ["/bin/sh", "-c"]:
        assert len(argv) == 3, argv
        script = argv[2]
        assert not any(c in script for c in "|;`$"), f"keep the script to '&&' chains: {script}"
        return [shlex.split(part) for part in script.split("&&")]
    return [argv]


def test_postgres_service_is_postgres_16_with_healthcheck_and_volume(
        compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert str(pg["image"]).split(":", 1) == ["postgres", "16"]
    test = pg["healthcheck"]["test"]
    assert "pg_isready" in (" ".join(test) if isinstance(test, list) else test)
    mounts = [str(v).split(":") for v in pg["volumes"]]
    data = [m for m in mounts if m[1] == "/var/lib/postgresql/data"]
    assert len(data) == 1
    # A named volume, declared at the top level (not a bind mount of some host path).
    assert data[0][0] in (compose.get("volumes") or {})


def test_worker_waits_for_a_healthy_postgres_and_connects_to_it(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"

    dsn = conninfo_to_dict(environment(worker)["JOBQUEUE_DSN"])
    pg_env = environment(services["postgres"])
    assert dsn["host"] == "postgres"  # the service name is the host on the compose network
    assert str(dsn.get("port", "5432")) == "5432"  # the container port, not the published one
    assert dsn["user"] == pg_env["POSTGRES_USER"]
    assert dsn["password"] == pg_env["POSTGRES_PASSWORD"]
    assert dsn["dbname"] == pg_env["POSTGRES_DB"]


def test_worker_is_built_from_the_repository_dockerfile(compose: dict[str, Any]) -> None:
    build = compose["services"]["worker"]["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (REPO / build["context"]).resolve()
    assert context == REPO
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file()


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_installs_this_package_from_what_the_context_holds() -> None:
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert any(k == "RUN" and "pip install ." in v for k, v in steps)

    copied: set[str] = set()
    for keyword, rest in steps:
        if keyword == "COPY":
            *sources, _dest = shlex.split(rest)
            copied |= {s.rstrip("/") for s in sources if not s.startswith("--")}
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for needed in BUILD_INPUTS:
        assert needed in copied or "." in copied, f"the Dockerfile does not copy {needed}"
        assert (REPO / needed).exists()
        assert not any(fnmatch.fnmatch(needed, pattern) for pattern in ignored), \
            f".dockerignore drops {needed}"
    assert ".git" in ignored


def jobqueue_cli() -> list[str]:
    script = Path(sys.executable).parent / "jobqueue"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from jobqueue.cli import main; main()"]


def test_worker_command_runs_only_commands_the_cli_accepts(compose: dict[str, Any]) -> None:
    commands = shell_commands(compose["services"]["worker"]["command"])
    assert [c[:2] for c in commands] == [["jobqueue", "migrate"], ["jobqueue", "demo"]]
    for argv in commands:
        # --help is answered only after every option before it has parsed:
        # an unknown subcommand or option fails here.
        result = subprocess.run([*jobqueue_cli(), *argv[1:], "--help"], capture_output=True,
                                text=True, timeout=60, cwd=REPO)
        assert result.returncode == 0, f"{argv}: {result.stderr}"
        assert "Usage:" in result.stdout


def test_cli_check_rejects_a_command_that_does_not_exist() -> None:
    # The check above would be worthless if --help succeeded for anything.
    result = subprocess.run([*jobqueue_cli(), "no-such-command", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode != 0
