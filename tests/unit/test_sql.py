"""The named statements of ``jobqueue/sql/queries.sql``: loading, naming and composing.

No database here: these tests check the text. Every statement must load under a
unique name, compose for any schema name with the schema quoted as an
identifier, reach its tables only through that schema, and use only psycopg
``%(name)s`` placeholders. The SQL the code asks for by name must exist.
"""

from __future__ import annotations

import re
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

import jobqueue
from jobqueue import sql as queries

HEADER = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)
TABLES = ("jobs", "dead_jobs", "workers", "cron")
# A schema name that breaks anything not quoting it: capitals, a space, a quote.
WEIRD = 'Weird "Schema"Name'
WEIRD_QUOTED = '"Weird ""Schema""Name"'


def queries_text() -> str:
    return resources.files("jobqueue.sql").joinpath("queries.sql").read_text(encoding="utf-8")


def test_every_header_in_the_file_is_a_loaded_statement_and_no_name_repeats() -> None:
    # Read the headers independently of the loader, so a header it skipped is caught.
    in_file = HEADER.findall(queries_text())
    repeated = [name for name, n in Counter(in_file).items() if n > 1]
    assert repeated == []
    assert in_file == list(queries._statements())
    # Fragments (pieces other statements include) are the only names not listed.
    assert [n for n in in_file if n not in queries.statement_names()] == \
        [n for n in in_file if n.startswith("fragment_")]
    assert len(queries.statement_names()) >= 10


def test_loader_rejects_a_file_naming_a_statement_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "-- name: one\nSELECT 1;\n-- name: two\nSELECT 2;\n-- name: one\nSELECT 3;\n"
    monkeypatch.setattr(queries, "_read", lambda name: text)
    with pytest.raises(RuntimeError, match="'one' twice"):
        queries._statements.__wrapped__()


@pytest.mark.parametrize("name", queries.statement_names())
def test_statement_composes_with_the_schema_quoted(name: str) -> None:
    plain = queries.compose(name, "jobqueue", channel="c", role="r").as_string(None)
    weird = queries.compose(name, WEIRD, channel="c", role="r").as_string(None)
    assert plain.strip(), f"{name} is empty"
    assert "{" + "schema}" not in plain and "{" + "schema}" not in weird
    if '"jobqueue".' in plain:
        # Every schema reference is the quoted identifier, never a raw splice.
        assert weird.count(WEIRD_QUOTED + ".") == plain.count('"jobqueue".')
        assert WEIRD not in weird.replace(WEIRD_QUOTED, "")


@pytest.mark.parametrize("name", list(queries._statements()))
def test_statement_reaches_tables_only_through_the_schema(name: str) -> None:
    # An unqualified table name would resolve through search_path: another
    # schema's jobs table, or the application's.
    text = queries._statements()[name]
    body = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    unqualified = re.findall(
        r"\b(?:FROM|INTO|UPDATE|JOIN|USING|TABLE)\s+(" + "|".join(TABLES) + r")\b",
        body, flags=re.IGNORECASE)
    assert unqualified == [], f"{name} names {unqualified} without {{schema}}"


@pytest.mark.parametrize("name", list(queries._statements()))
def test_statement_uses_only_named_placeholders(name: str) -> None:
    # psycopg reads every lone % as a placeholder: LIKE 'x%' must be written %%.
    text = queries._statements()[name]
    rest = re.sub(r"%\(\w+\)s|%%", "", text)
    assert "%" not in rest, f"{name} has a stray %"
    assert not re.search(r"(?<![:\w])\$\d", text), f"{name} uses $n placeholders"


def test_every_statement_the_code_asks_for_exists() -> None:
    package = Path(jobqueue.__file__).parent
    wanted: set[str] = set()
    for source in package.rglob("*.py"):
        wanted |= set(re.findall(r"\b(?:query|Op|Copy|run|rows|row|scalar|rowcount)\(\s*\"(\w+)\"",
                                 source.read_text(encoding="utf-8")))
    assert len(wanted) >= 10  # the scan finds the calls
    assert wanted - set(queries.statement_names()) == set()


def test_unknown_statement_name_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match="no statement named 'nope'"):
        queries.query("nope", "jobqueue")


def test_composition_is_cached_per_schema() -> None:
    assert queries.query("claim", "a") is queries.query("claim", "a")
    assert queries.query("claim", "a") is not queries.query("claim", "b")


@pytest.mark.parametrize(
    "revision",
    sorted(p.name[:-4] for p in resources.files("jobqueue.sql").joinpath("schema").iterdir()
           if p.name.endswith(".sql")))
def test_schema_files_format_with_a_quoted_schema(revision: str) -> None:
    text = queries.schema_revision_text(revision, WEIRD)
    assert "{schema}" not in text
    assert WEIRD_QUOTED + "." in text
    assert WEIRD not in text.replace(WEIRD_QUOTED, "")
