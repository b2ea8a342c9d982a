"""The Store's units of work, as values: statements, and procedures made of them.

A :class:`Op` names a statement of ``sql/*.sql``, carries its parameters and
says what to read back (nothing, one row, all rows, one value, a row count)
and as which row class. A *procedure* is a generator that yields steps and
receives each step's result; it holds the logic of an operation that needs
several statements (a unique-key retry, a claim under advisory locks, a
leader's round) without doing any I/O itself.

That split is what keeps the sync and the async Store from drifting apart:
every operation is written once, as a procedure, and only the few lines that
run a step differ between :class:`~jobqueue.db.store.Store` and
:class:`~jobqueue.db.store.AsyncStore` (the way psycopg runs its sans-I/O
generators on both kinds of connection).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from psycopg.rows import RowFactory, scalar_row, tuple_row

T = TypeVar("T")


class Fetch(Enum):
    NONE = "none"  # run it, read nothing
    ALL = "all"  # every row
    ONE = "one"  # the first row, or None
    SCALAR = "scalar"  # the first column of the first row, or None
    ROWCOUNT = "rowcount"  # how many rows it touched


def named_row(cls: type[T]) -> RowFactory[T]:
    """Rows as ``cls``, matched to its fields by column name.

    Where the columns are the first fields in order (the usual case, and what
    the statements are written for) each row is built positionally, which is
    what the claim's hundreds of rows per second can afford; otherwise by
    keyword, so that a column with no field of that name fails at once.
    """
    fields = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def factory(cursor: Any) -> Any:
        names = tuple(column.name for column in cursor.description or ())
        if names == fields[:len(names)]:
            return lambda values: cls(*values)
        return lambda values: cls(**dict(zip(names, values, strict=True)))

    return factory


@dataclass(frozen=True, slots=True)
class Op:
    """One named statement and how to read its result.

    ``row`` is the class each row is built as, by column name; ``idents`` are
    identifiers other than the schema (a LISTEN channel), quoted by psycopg.
    """

    name: str
    params: Mapping[str, Any] | None = None
    fetch: Fetch = Fetch.NONE
    row: type[Any] | None = None
    idents: tuple[tuple[str, str], ...] = ()

    def row_factory(self) -> RowFactory[Any]:
        if self.row is not None:
            return named_row(self.row)
        return scalar_row if self.fetch is Fetch.SCALAR else tuple_row

    def result(self, rows: list[Any], rowcount: int) -> Any:
        """The step's result from what the cursor holds (shared by both runners)."""
        if self.fetch is Fetch.ALL:
            return rows
        if self.fetch is Fetch.ONE or self.fetch is Fetch.SCALAR:
            return rows[0] if rows else None
        if self.fetch is Fetch.ROWCOUNT:
            return rowcount
        return None


def run(name: str, params: Mapping[str, Any] | None = None) -> Op:
    return Op(name, params)


def listen(channel: str) -> Op:
    """LISTEN on ``channel`` (an identifier, not a parameter)."""
    return Op("listen", idents=(("channel", channel),))


def rows(name: str, params: Mapping[str, Any] | None, row: type[Any]) -> Op:
    return Op(name, params, Fetch.ALL, row)


def row(name: str, params: Mapping[str, Any] | None, row_class: type[Any]) -> Op:
    return Op(name, params, Fetch.ONE, row_class)


def scalar(name: str, params: Mapping[str, Any] | None = None) -> Op:
    return Op(name, params, Fetch.SCALAR)


def rowcount(name: str, params: Mapping[str, Any] | None = None) -> Op:
    return Op(name, params, Fetch.ROWCOUNT)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Several statements in one round trip; the result is the list of their results.

    On an autocommit connection they form one implicit transaction (psycopg's
    pipeline mode syncs once at the end): all commit, or none.
    """

    ops: tuple[Op, ...]


@dataclass(frozen=True, slots=True)
class Copy:
    """``COPY name FROM STDIN`` fed with ``chunks`` of rows in COPY's text format."""

    name: str
    chunks: Iterable[str]


@dataclass(frozen=True, slots=True)
class Transaction:
    """Run ``procedure`` inside a transaction (a savepoint within the caller's)."""

    procedure: Procedure[Any]


@dataclass(frozen=True, slots=True)
class InPipeline:
    """Ask whether the connection is in pipeline mode (a caller's may be): the result
    is a bool. COPY is not allowed there."""


Step = Op | Pipeline | Copy | Transaction | InPipeline
Procedure = Generator[Step, Any, T]


def single(op: Op) -> Procedure[Any]:
    """The procedure of one statement: its result."""
    return (yield op)




def in_transaction(procedure: Procedure[T]) -> Procedure[T]:
    """``procedure`` as one transaction (a savepoint within the caller's)."""
    return (yield Transaction(procedure))  # type: ignore[no-any-return]
