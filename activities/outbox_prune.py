"""Pruning the outbox: the relay deletes published rows past their retention
(activities/outbox_relay.py, once a minute), by the key's oldest rows."""

from __future__ import annotations

from typing import Any

# The oldest rows by id, a batch at a time: an index scan of the key's first rows,
# never the whole table. (`published_at < cutoff` alone is a sequential scan of a
# week of events, every minute: 615 MiB at 40/s, read past shared buffers and
# evicting the hot tables' pages; bench/volume.py.) Ids follow publication closely;
# a row held back (unpublished, or published late after an outage) only stays in the
# batch's way until its own time comes, while the rows beside it go.
_PRUNE = """
WITH oldest AS (SELECT id, published_at FROM outbox ORDER BY id LIMIT %(batch)s)
DELETE FROM outbox o USING oldest
WHERE o.id = oldest.id AND oldest.published_at < now() - make_interval(secs => %(keep_s)s)
"""
PRUNE_BATCH = 10_000
PRUNE_BATCHES = 20  # a minute's worth at 100 withdrawals/s is 42,000 rows


async def prune(conn: Any, keep_s: float, batch: int = PRUNE_BATCH) -> int:
    """Delete published rows older than `keep_s`, oldest ids first, until a batch finds
    fewer than half of its rows old enough (the rest are young, or held back); the
    number deleted."""
    deleted = 0
    for _ in range(PRUNE_BATCHES):
        cur = await conn.execute(_PRUNE, {"batch": batch, "keep_s": keep_s})
        deleted += max(cur.rowcount, 0)
        if cur.rowcount < batch // 2:
            break
    return deleted
