"""What SQLite and PostgreSQL write differently, and nothing else: a small ``Dialect`` each.

A dialect names column types and renders the tables and indexes of ``schema``.
"""

from __future__ import annotations

from dataclasses import dataclass

from wholeimage.store.schema import Column, Index, Migration, Table, Type


@dataclass(frozen=True)
class Dialect:
    """How one engine writes what differs."""

    types: dict[Type, str]

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
        return [
            self.create_table(item) if isinstance(item, Table) else self.create_index(item)
            for item in migration
        ]


SQLITE = Dialect(
    types={Type.TEXT: "TEXT", Type.INTEGER: "INTEGER", Type.REAL: "REAL"},
)

POSTGRES = Dialect(
    types={Type.TEXT: "TEXT", Type.INTEGER: "INTEGER", Type.REAL: "DOUBLE PRECISION"},
)
