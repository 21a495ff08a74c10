"""The rows the engine reads, typed by the columns it relies on.

A queue or task row carries the engine's columns (below) and the workflow's own
(its key, its state's fields): the definition reads those. Rows come from
psycopg's `dict_row` (the database edge, `DbRow`); the engine names the columns
it needs here, so a rename fails type-checking, not a withdrawal at run time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast
from uuid import UUID

# The database and JSON edge: a row as psycopg's dict_row returns it, or a JSON
# object (a job's arguments, an event's payload). Everything else is typed.
DbRow = dict[str, Any]
JsonObject = dict[str, Any]


class QueueRow(TypedDict):
    """A workflow instance (one withdrawal): the engine's columns."""

    id: UUID
    status: str
    workflow: str
    workflow_version: int
    cancel_requested: bool
    needs_attention: bool
    trace_id: str | None
    traceparent: str | None


class TaskRow(TypedDict):
    """One task of a queue: the engine's columns; the definition's own ride along."""

    id: UUID
    queue_id: UUID
    position: int
    status: str
    version: int
    activity: str | None
    activity_token: int | None
    updated_at: datetime


def as_queue(row: DbRow) -> QueueRow:
    """A queue row read with `SELECT *` (its columns are the schema's)."""
    return cast(QueueRow, row)


def as_task(row: DbRow) -> TaskRow:
    """A task row read with `SELECT *`."""
    return cast(TaskRow, row)


def column(row: QueueRow | TaskRow, name: str) -> object:
    """A column the engine does not know by name (the storage's key, a span column)."""
    return cast(DbRow, row).get(name)
