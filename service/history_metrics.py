"""The audit trail's partitions as gauges, read from SQL at scrape time
(service/metrics_api.py; docs/ops.md "Retention and the archive"): the hourly `history`
job runs in whichever worker takes it, so only the database can say how far ahead the
months are made and how long the oldest hot month has waited."""

from __future__ import annotations

from prometheus_client import Gauge

from engine.journal import Conn
from service.settings import Settings

AHEAD = Gauge(
    "audit_partitions_ahead_seconds",
    "Seconds from now to the end of the last month partition of the audit trail made",
)
OLDEST = Gauge(
    "audit_oldest_month_end_age_seconds",
    "Seconds since the end of the oldest month of the audit trail still in the hot tables",
)
DEFAULT_ROWS = Gauge(
    "audit_default_partition_rows",
    "Audit rows in the default partition (events after their month left; months not made"
    " in time), counted up to a million",
)
RETENTION = Gauge(
    "audit_retention_seconds",
    "RETENTION_DAYS in seconds as this process has it; 0: nothing is archived (no ARCHIVE_DIR)",
)

# The view reads the catalog (a few rows); the default partition is counted up to a
# bound, so a scrape never reads a big one whole.
_GAUGES = """
SELECT
    coalesce(extract(epoch FROM max(upper) - now()), 0) AS ahead,
    coalesce(extract(epoch FROM now() - min(upper)), 0) AS oldest,
    (SELECT count(*) FROM (SELECT 1 FROM order_task_events_default LIMIT 1000000) d) AS rows
FROM v_event_partitions WHERE NOT is_default
"""


async def export(conn: Conn, settings: Settings) -> None:
    row = await (await conn.execute(_GAUGES)).fetchone()
    assert row is not None
    AHEAD.set(float(row["ahead"]))
    OLDEST.set(float(row["oldest"]))
    DEFAULT_ROWS.set(row["rows"])
    archiving = settings.archive_dir is not None
    RETENTION.set(settings.retention_days * 86400 if archiving else 0)
