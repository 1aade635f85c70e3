"""What SQLite and PostgreSQL write differently, and nothing else: a small ``Dialect`` each.

The algorithm (``base``) writes its statements once, with ``:name`` parameters; a dialect turns
them into what its driver takes, names column types, spells "insert unless a unique key is
already there" and "compare bytes", and renders the tables and indexes of ``schema``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from wholeimage.store.schema import Column, Index, Migration, Statement, Table, Type

_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True)
class Dialect:
    """How one engine writes what differs."""

    types: dict[Type, str]
    pyformat: bool  # the driver takes %(name)s rather than :name
    insert_ignore_prefix: str  # INSERT ... into a unique key already there does nothing
    insert_ignore_suffix: str
    byte_collation: str  # appended to a column to compare it byte by byte ("" if it already is)

    def sql(self, statement: str) -> str:
        """``statement`` (``:name`` parameters) as this engine's driver takes it."""
        return _render(statement, pyformat=self.pyformat)

    def insert(self, table: str, columns: tuple[str, ...], *, ignore_duplicates: bool) -> str:
        """An ``INSERT`` of one row given as ``:column`` parameters."""
        values = ", ".join(f":{column}" for column in columns)
        prefix, suffix = (
            (self.insert_ignore_prefix, self.insert_ignore_suffix)
            if ignore_duplicates
            else ("INSERT", "")
        )
        return f"{prefix} INTO {table} ({', '.join(columns)}) VALUES ({values}){suffix}"

    def in_byte_order(self, column: str) -> str:
        """``column`` compared byte by byte, for an ``ORDER BY`` both engines agree on."""
        return f"{column}{self.byte_collation}"

    def column(self, column: Column) -> str:
        """A column definition."""
        parts = [column.name, self.types[column.type]]
        if column.primary_key:
            parts.append("PRIMARY KEY")
        if column.not_null:
            parts.append("NOT NULL")
        if column.unique:
            parts.append("UNIQUE")
        if column.default is not None:
            parts.append(f"DEFAULT {column.default}")
        return " ".join(parts)

    def create_table(self, table: Table) -> str:
        """``CREATE TABLE IF NOT EXISTS``, one line a column or constraint."""
        lines = [self.column(column) for column in table.columns]
        lines.extend(f"UNIQUE ({', '.join(columns)})" for columns in table.unique)
        body = ",\n    ".join(lines)
        return f"CREATE TABLE IF NOT EXISTS {table.name} (\n    {body}\n)"

    @staticmethod
    def create_index(index: Index) -> str:
        """``CREATE [UNIQUE] INDEX IF NOT EXISTS`` (alike in both engines)."""
        unique = "UNIQUE " if index.unique else ""
        where = f" WHERE {index.where}" if index.where is not None else ""
        return (
            f"CREATE {unique}INDEX IF NOT EXISTS {index.name} "
            f"ON {index.table} ({', '.join(index.columns)}){where}"
        )

    def migration(self, migration: Migration) -> list[str]:
        """The statements of one migration, in order."""
        return [self._statement(item) for item in migration]

    def _statement(self, item: Table | Index | Statement) -> str:
        if isinstance(item, Table):
            return self.create_table(item)
        if isinstance(item, Index):
            return self.create_index(item)
        return item.sql


@functools.lru_cache(maxsize=256)
def _render(statement: str, *, pyformat: bool) -> str:
    if not pyformat:
        return statement
    # A literal % would be taken for a placeholder once parameters are passed.
    return _NAMED_PARAMETER.sub(r"%(\1)s", statement.replace("%", "%%"))


SQLITE = Dialect(
    types={Type.TEXT: "TEXT", Type.INTEGER: "INTEGER", Type.REAL: "REAL"},
    pyformat=False,
    insert_ignore_prefix="INSERT OR IGNORE",
    insert_ignore_suffix="",
    byte_collation="",  # BINARY, SQLite's default collation
)

POSTGRES = Dialect(
    types={Type.TEXT: "TEXT", Type.INTEGER: "INTEGER", Type.REAL: "DOUBLE PRECISION"},
    pyformat=True,
    insert_ignore_prefix="INSERT",
    insert_ignore_suffix=" ON CONFLICT DO NOTHING",
    byte_collation=' COLLATE "C"',
)
