"""The SQL of jobqueue, kept in ``.sql`` files and loaded by name.

``queries.sql`` holds one statement per ``-- name: NAME`` header. The schema
name is an identifier, not a parameter, so each statement is composed once per
schema through :class:`psycopg.sql.Identifier` and cached; values always travel
as bound parameters.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@cache
def _statements() -> dict[str, str]:
    text = _read("queries.sql")
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise RuntimeError(f"queries.sql names {name!r} twice")
        out[name] = body.strip().rstrip(";")
    return out


def statement_names() -> list[str]:
    """Every statement name in queries.sql (fragments excluded)."""
    return [name for name in _statements() if not name.startswith("fragment_")]


@cache
def query(name: str, schema: str) -> sql.Composed:
    """The statement called ``name``, composed for ``schema``.

    Statements named ``fragment_X`` are shared pieces, not statements: others
    include them as ``{X}``.
    """
    return compose(name, schema)


def compose(name: str, schema: str, **identifiers: str) -> sql.Composed:
    """:func:`query` with more identifiers (a LISTEN channel), uncached."""
    statements = _statements()
    try:
        text = statements[name]
    except KeyError:
        raise KeyError(f"no statement named {name!r} in queries.sql") from None
    ident = sql.Identifier(schema)
    fragments = _fragments(statements, ident)
    idents = {key: sql.Identifier(value) for key, value in identifiers.items()}
    return sql.SQL(text).format(schema=ident, **fragments, **idents)


def _fragments(statements: dict[str, str], ident: sql.Identifier) -> dict[str, sql.Composed]:
    """The fragments composed for a schema; a fragment may include fragments that
    include none (one level: enough, and no cycle can form)."""
    raw = {key.removeprefix("fragment_"): body for key, body in statements.items()
           if key.startswith("fragment_")}
    plain: dict[str, sql.Composed] = {}
    for key, body in raw.items():
        try:
            plain[key] = sql.SQL(body).format(schema=ident)
        except KeyError:
            continue  # it includes another fragment: composed below
    return {key: plain.get(key) or sql.SQL(body).format(schema=ident, **plain)
            for key, body in raw.items()}


def schema_revision_text(revision: str, schema: str) -> str:
    """Schema migration ``revision`` (a file in ``sql/schema``) as text for ``schema``."""
    quoted = sql.Identifier(schema).as_string(None)
    return _read(f"schema/{revision}.sql").format(schema=quoted)
