"""Engine SQL names the workflow's tables through its definition's Storage.

A statement is written once as a template (`{queues}`, `{tasks}`, `{audit}`,
`{key}`) beside its one use, and formatted here once per storage: the engine
itself names no table of a workflow.
"""

from __future__ import annotations

import functools

from workflows.core import Storage


@functools.cache
def statement(template: str, storage: Storage) -> str:
    """`template` with the storage's names put in; each name is a checked identifier."""
    return template.format(**storage.names())
