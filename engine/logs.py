"""Structured JSON logs. Every line carries order_id, queue_id, task_id and trace_id.

The ids live in context variables: the API sets them per request, the jobs per
job, so any logger anywhere (ours, procrastinate's, uvicorn's) writes them.
Values are ids only; secrets never enter the context.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType

from engine.rows import JsonObject

IDS = ("order_id", "queue_id", "task_id", "trace_id")
_context: contextvars.ContextVar[Mapping[str, str | None]] = contextvars.ContextVar(
    "log_context", default=MappingProxyType(dict.fromkeys(IDS))
)


def current() -> dict[str, str | None]:
    return dict(_context.get())


@contextlib.contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """Add ids to every log line written inside the block."""
    merged = {**_context.get(), **{k: v for k, v in ids.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: str | None) -> None:
    """Add ids for the rest of the current task (e.g. once a request is parsed)."""
    _context.set({**_context.get(), **{k: v for k, v in ids.items() if v is not None}})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: JsonObject = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_context.get(),
        }
        job = getattr(record, "job", None)  # procrastinate's own lines name the job
        if isinstance(job, dict) and line["task_id"] is None:
            line["task_id"] = (job.get("task_kwargs") or {}).get("task_id")
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            line.update(extra)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(level: int = logging.INFO) -> None:
    """JSON to stderr for every logger, including uvicorn's and procrastinate's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # A library's warning becomes a JSON line too (logger "py.warnings").
    logging.captureWarnings(True)
    # httpx logs every request at INFO; each step already logs its call's outcome
    # (and failures are classified and logged where they are handled).
    logging.getLogger("httpx").setLevel(logging.WARNING)


UVICORN_LOG_CONFIG: JsonObject = {"version": 1, "disable_existing_loggers": False}
