"""Months of closed withdrawals, written straight into a migrated database by set-based
SQL, for bench/volume.py: what a real installation holds after running for a while.

Each withdrawal has the rows a closed one leaves behind, in the shapes a real stack
writes (copied from withdrawals run on the sandbox: instant, webhook-driven, declining,
failing-after-accepting and never-answering providers, and a person's decision):
its `order_queues` row, one `order_tasks` row per provider asked, its audit rows (7 for
the commonest, one provider paid at once), a settle-objective judgement, the webhook
the provider sent (`webhook_inbox` keeps every one), the ledger's hold as the last
reconciliation fetched it (`ledger_holds`), and, for the last `OUTBOX_RETENTION`, its
outbox rows, published (the relay prunes older ones). Nothing of it is in flight:
timers fired, jobs purged, provider outcomes pruned past their window, as they would
be. Every constraint and trigger of the schema stays on: foreign keys, checks, the
audit trail's append-only triggers and its routing into month partitions.

Randomness is PostgreSQL's `random()` after `setseed`, per chunk, and every id is an
md5 of the seed and the withdrawal's number: the same seed gives the same rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from service.history import add_months, partitions

LEGACY = "order_task_events_legacy"
OUTBOX_RETENTION = timedelta(days=7)  # Settings.outbox_retention_s's default
PERSON = "person:ana@example.com (sub 00u1ana at https://idp.example.com)"
# Shares of the withdrawals by what happened to them (the rest: manual, a person's
# negative decision, then the next provider). ok2: a cascade of two where the first
# paid and the second was stopped unasked.
SHAPES = (("ok1", 0.60), ("ok2", 0.875), ("decl_ok", 0.945), ("fail_ok", 0.965), ("decl", 0.995))
# The providers of the history: beta pays at creation (its webhook comes after, and is
# ignored), alpha and gamma pay by webhook, seconds to minutes later.
PROVIDERS = (("alpha", 0.5), ("beta", 0.8))
# Default provider timing (workflows/withdrawal_events.Timing): rechecks after 5, 10,
# 20, 40 and 80 s, then a person.
RECHECKS_S = (5, 10, 20, 40, 80)


@dataclass(frozen=True)
class Event:
    from_state: str
    to_state: str
    event_type: str
    actor: str  # literal, or "{submitter}", "{provider}", "{person}"
    payload: dict[str, Any]
    ms: int  # after the task started
    after_delay: bool = False  # also after the task's delay (a webhook, a person)
    flags: tuple[str, ...] = ()  # payload keys filled per row: ref, speaker, due, operator


def _opening(accepted: str | None, paid: bool = False) -> list[Event]:
    events = [
        Event("PENDING", "CREATING", "start", "{submitter}", {"event": "start", "version": 1}, 0),
        Event(
            "CREATING",
            "CREATING",
            "funds_frozen",
            "system",
            {"event": "funds_frozen", "version": 2, "replayed": False},
            35,
        ),
        Event(
            "CREATING",
            "CREATING",
            "order_submitting",
            "system",
            {"event": "order_submitting", "version": 3},
            45,
        ),
    ]
    if accepted:
        payload = {"event": "order_accepted", "version": 4, "paid": paid}
        events.append(
            Event("CREATING", accepted, "order_accepted", "system", payload, 55, False, ("ref",))
        )
    return events


def _released(from_state: str, to_state: str, version: int, ms: int, late: bool) -> Event:
    payload = {"event": "funds_released", "version": version}
    return Event(from_state, to_state, "funds_released", "system", payload, ms, late)


def _manual() -> list[Event]:
    """A provider that never answers: ambiguous create, rechecks, a person says no."""
    events = _opening(None)
    events += [
        Event(
            "CREATING",
            "NEGATIVE_EVAL",
            "order_ambiguous",
            "system",
            {"event": "order_ambiguous", "reason": "http_503", "version": 4},
            1500,
        ),
        Event(
            "NEGATIVE_EVAL",
            "RECHECKING",
            "begin_recheck",
            "system",
            {"event": "begin_recheck", "version": 5},
            1505,
        ),
    ]
    due, version = 1505, 6
    for n, wait in enumerate(RECHECKS_S):
        due += wait * 1000
        last = n == len(RECHECKS_S) - 1
        tick = {"kind": "recheck_tick", "event": "timer_fired", "version": version}
        unknown = {"event": "status_unknown", "reason": "http_503", "version": version + 1}
        events += [
            Event(
                "RECHECKING", "RECHECKING", "timer_fired", "timer", tick, due + 100, False, ("due",)
            ),
            Event(
                "RECHECKING",
                "MANUAL_CHECK" if last else "RECHECKING",
                "status_unknown",
                "system",
                {**unknown, "solicited": True},
                due + 110,
                False,
                ("speaker",),
            ),
        ]
        version += 2
    decision = {
        "event": "manual_resolved",
        "reason": "no order at the provider",
        "version": version,
        "positive": False,
    }
    return [
        *events,
        Event(
            "MANUAL_CHECK",
            "MANUAL_CHECK",
            "manual_resolved",
            "{person}",
            decision,
            due + 110,
            True,
            ("operator",),
        ),
        _released("MANUAL_CHECK", "FAILED", version + 1, due + 125, True),
    ]


def _succeeded(paid: bool) -> list[Event]:
    said = {"event": "provider_succeeded", "version": 5, "solicited": False}
    if paid:  # the create's answer said paid: the system speaks, the webhook is ignored
        word = Event(
            "EXECUTING",
            "EXECUTING",
            "provider_succeeded",
            "system",
            {**said, "speaker": None},
            60,
            False,
            ("ref",),
        )
    else:
        word = Event(
            "EXECUTING",
            "EXECUTING",
            "provider_succeeded",
            "{provider}",
            said,
            60,
            True,
            ("ref", "speaker"),
        )
    commit = {"event": "funds_committed", "version": 6}
    return [
        *_opening("EXECUTING", paid),
        word,
        Event(
            "EXECUTING",
            "SUCCEEDED",
            "funds_committed",
            "system",
            commit,
            110 if paid else 90,
            not paid,
        ),
    ]


FAILED = {"event": "provider_failed", "reason": "provider_failed", "version": 5, "solicited": False}
# Each kind of task: its audit rows, in order.
KINDS: dict[str, list[Event]] = {
    "paid": _succeeded(True),
    "hook": _succeeded(False),
    "decline": [
        *_opening(None),
        Event(
            "CREATING",
            "NEGATIVE_EVAL",
            "order_declined",
            "system",
            {"event": "order_declined", "reason": "declined", "version": 4},
            60,
        ),
        _released("NEGATIVE_EVAL", "SKIPPED", 5, 90, False),
    ],
    "fail": [
        *_opening("EXECUTING"),
        Event(
            "EXECUTING",
            "EXECUTING",
            "provider_failed",
            "{provider}",
            FAILED,
            60,
            True,
            ("ref", "speaker"),
        ),
        _released("EXECUTING", "FAILED", 6, 85, True),
    ],
    "manual": _manual(),
    "stop": [Event("PENDING", "CANCELLED", "stop", "system", {"event": "stop", "version": 1}, 2)],
}
# Each kind's final task row: status, funds, last_reason, whether an order was made.
TASK_END = {
    "paid": ("SUCCEEDED", "COMMITTED", None, True),
    "hook": ("SUCCEEDED", "COMMITTED", None, True),
    "decline": ("SKIPPED", "RELEASED", "declined", True),
    "fail": ("FAILED", "RELEASED", "provider_failed", True),
    "manual": ("FAILED", "RELEASED", f"manual:{PERSON}:no order at the provider", True),
    "stop": ("CANCELLED", "NONE", None, False),
}


def _lit(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _case(column: str, values: dict[str, str], default: str = "NULL") -> str:
    arms = " ".join(f"WHEN {_lit(k)} THEN {v}" for k, v in values.items())
    return f"CASE {column} {arms} ELSE {default} END"


def _duration(kind: str, delay: str) -> str:
    """SQL: how long a task of `kind` lasted from its start, given its delay column."""
    arms = {}
    for name, events in KINDS.items():
        last = events[-1]
        span = f"interval '{last.ms} ms'"
        arms[name] = f"({span} + {delay})" if last.after_delay else span
    return _case(kind, arms)


def _templates() -> str:
    """SQL VALUES of every kind's audit rows (the temporary table `vtmpl`)."""
    rows = []
    for kind, events in KINDS.items():
        for seq, e in enumerate(events, 1):
            rows.append(
                "("
                + ", ".join(
                    [
                        _lit(kind),
                        str(seq),
                        _lit(e.from_state),
                        _lit(e.to_state),
                        _lit(e.event_type),
                        _lit(e.actor),
                        _lit(json.dumps(e.payload)) + "::jsonb",
                        str(e.ms),
                        str(e.after_delay).lower(),
                        "ARRAY[" + ", ".join(_lit(f) for f in e.flags) + "]::text[]",
                    ]
                )
                + ")"
            )
    return (
        "CREATE TEMP TABLE vtmpl (kind, seq, from_state, to_state, event_type, actor, payload,"
        " ms, after_delay, flags) AS VALUES " + ",\n".join(rows)
    )


def _shape_sql() -> str:
    arms = " ".join(f"WHEN r_shape < {share} THEN '{name}'" for name, share in SHAPES)
    return f"CASE {arms} ELSE 'manual' END"


def _provider_sql() -> str:
    arms = " ".join(f"WHEN r_prov < {share} THEN '{name}'" for name, share in PROVIDERS)
    return f"CASE {arms} ELSE 'gamma' END"


def _succ(provider: str) -> str:
    return f"CASE WHEN {provider} = 'beta' THEN 'paid' ELSE 'hook' END"


# One chunk's withdrawals (%(lo)s..%(hi)s): every per-withdrawal choice made once, here.
PLAN = f"""
CREATE TEMP TABLE vq ON COMMIT DROP AS
WITH g AS (
    SELECT i, random() AS r_shape, random() AS r_prov, random() AS r_amt, random() AS r_d0,
           random() AS r_d1, random() AS r_m, random() AS r_jit, random() AS r_cur
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
), s AS (
    SELECT g.*, %(start)s::timestamptz + (i - 1 + r_jit) * %(step)s::interval AS created_at,
           {_shape_sql()} AS shape, {_provider_sql()} AS p0
    FROM g
), k AS (
    SELECT s.*, CASE WHEN p0 = 'beta' THEN 'alpha' ELSE 'beta' END AS p1,
           CASE shape WHEN 'decl_ok' THEN 'decline' WHEN 'decl' THEN 'decline'
                      WHEN 'fail_ok' THEN 'fail' WHEN 'manual' THEN 'manual'
                      ELSE {_succ("p0")} END AS k0
    FROM s
), d AS (
    SELECT k.*,
           CASE shape WHEN 'ok2' THEN 'stop' WHEN 'ok1' THEN NULL WHEN 'decl' THEN NULL
                      ELSE {_succ("p1")} END AS k1,
           -- a webhook comes seconds to minutes after the order (skewed short); a person
           -- decides within hours, and always before the fill's "now"
           CASE WHEN k0 = 'manual'
                THEN least(interval '10 min' + r_d0 * interval '8 hours',
                           (%(now)s::timestamptz - created_at) / 3)
                ELSE make_interval(secs => 2 + r_d0 ^ 3 * 300) END AS d0,
           make_interval(secs => 2 + r_d1 ^ 3 * 300) AS d1
    FROM k
), e AS (
    SELECT d.*, created_at + interval '20 ms' AS start0,
           created_at + interval '20 ms' + {_duration("k0", "d0")} AS end0
    FROM d
), f AS (
    SELECT e.*, CASE WHEN k1 IS NOT NULL THEN end0 + interval '3 ms' END AS start1
    FROM e
)
SELECT i, md5(%(seed)s::text || ':q:' || i)::uuid AS qid,
       md5(%(seed)s::text || ':t0:' || i)::uuid AS t0,
       md5(%(seed)s::text || ':t1:' || i)::uuid AS t1,
       'wd_' || substr(md5(%(seed)s::text || ':o:' || i), 1, 20) AS order_id,
       md5(%(seed)s::text || ':tr:' || i) AS trace,
       'ord_' || substr(md5(%(seed)s::text || ':r0:' || i), 1, 16) AS ref0,
       'ord_' || substr(md5(%(seed)s::text || ':r1:' || i), 1, 16) AS ref1,
       'merchant-' || lpad(floor(r_m * r_m * 200)::int::text, 3, '0') AS merchant,
       round(exp(ln(500.0) + r_amt * ln(400.0)))::bigint AS amount,
       CASE WHEN r_cur < 0.8 THEN 'EUR' ELSE 'USD' END AS currency,
       shape, p0, p1, k0, k1, d0, d1, created_at, start0, end0, start1,
       coalesce(start1 + {_duration("k1", "d1")}, end0) + interval '8 ms' AS finished
FROM f
"""

TASKS = """
CREATE TEMP TABLE vt ON COMMIT DROP AS
SELECT qid, 0 AS pos, t0 AS tid, p0 AS provider, k0 AS kind, d0 AS delay, ref0 AS ref,
       start0 AS start_at, end0 AS end_at, created_at, order_id, trace, amount, currency
FROM vq
UNION ALL
SELECT qid, 1, t1, p1, k1, d1, ref1, start1, finished - interval '8 ms', created_at, order_id,
       trace, amount, currency
FROM vq WHERE k1 IS NOT NULL
"""

QUEUES = """
INSERT INTO order_queues (id, workflow, order_id, request_hash, merchant_id, amount_minor,
    currency, status, core_notified_at, policy, policy_reason, requested_cascade, trace_id,
    created_at, updated_at, finished_at, workflow_version, cohort, rollout_version,
    providers_version)
SELECT qid, 'withdrawal', order_id, encode(sha256(convert_to(order_id || merchant, 'UTF8')), 'hex'),
       merchant, amount, currency,
       (CASE WHEN shape = 'decl' THEN 'FAILED' ELSE 'COMPLETED' END)::queue_status,
       finished + interval '20 ms', 'health_cascade', 'bucket:' || (i %% 100) || '<100',
       CASE WHEN shape IN ('ok1', 'decl') THEN ARRAY[p0] ELSE ARRAY[p0, p1] END, trace,
       created_at, finished, finished, 3, 'health_cascade', 1, 1
FROM vq
"""


def _task_end(index: int) -> str:
    return _case(
        "kind",
        {k: _lit(str(v[index]) if v[index] is not None else None) for k, v in TASK_END.items()},
    )


TASK_ROWS = f"""
INSERT INTO order_tasks (id, queue_id, position, provider, version, status, funds,
    provider_ref, order_submitted, recheck_attempts, webhook_deadline, last_reason,
    created_at, updated_at, providers_version)
SELECT tid, qid, pos, provider,
       (SELECT count(*) FROM vtmpl m WHERE m.kind = vt.kind),
       ({_task_end(0)})::task_status, ({_task_end(1)})::funds_status,
       CASE WHEN kind IN ('paid', 'hook', 'fail') THEN ref END,
       kind <> 'stop', CASE WHEN kind = 'manual' THEN {len(RECHECKS_S)} ELSE 0 END,
       CASE WHEN kind IN ('paid', 'hook', 'fail')
            THEN start_at + interval '55 ms' + interval '15 minutes' END,
       {_task_end(2)}, created_at, end_at, 1
FROM vt
"""

# Every audit row of the chunk, in time order (ids follow it, as the service's do), keyed
# by its withdrawal's submission as engine/journal.py keys it; the last OUTBOX_RETENTION's
# also as published outbox rows (payload: the event's, with its ids and states).
EVENTS = """
WITH rows AS (
    SELECT vt.qid, vt.tid, m.from_state, m.to_state, m.event_type,
           CASE m.actor WHEN '{submitter}' THEN
                    CASE WHEN vt.pos = 0 THEN 'cascade-core' ELSE 'system' END
                WHEN '{provider}' THEN 'provider:' || vt.provider
                WHEN '{person}' THEN %(person)s
                ELSE m.actor END AS actor,
           vt.start_at + m.ms * interval '1 ms'
               + CASE WHEN m.after_delay THEN vt.delay ELSE interval '0' END AS at,
           m.payload, m.flags, vt.ref, vt.provider, vt.trace, vt.created_at, vt.order_id
    FROM vt JOIN vtmpl m ON m.kind = vt.kind
  UNION ALL
    SELECT qid, NULL, 'ACTIVE', CASE WHEN shape = 'decl' THEN 'FAILED' ELSE 'COMPLETED' END,
           CASE WHEN shape = 'decl' THEN 'queue_failed' ELSE 'queue_completed' END, 'system',
           finished - interval '4 ms',
           jsonb_build_object('event', CASE WHEN shape = 'decl' THEN 'queue_failed'
                                            ELSE 'queue_completed' END,
                              'outcome', CASE WHEN shape = 'decl' THEN 'FAILED'
                                              ELSE 'COMPLETED' END,
                              'version', NULL),
           '{}'::text[], NULL, NULL, trace, created_at, order_id
    FROM vq
), written AS (
    INSERT INTO order_task_events (queue_id, task_id, from_state, to_state, event_type,
        payload, actor, trace_id, occurred_at, queue_created_at)
    SELECT qid, tid, from_state, to_state, event_type,
           payload
           || CASE WHEN 'ref' = ANY(flags) THEN jsonb_build_object('provider_ref', ref)
                   ELSE '{}' END
           || CASE WHEN 'speaker' = ANY(flags) THEN jsonb_build_object('speaker', provider)
                   ELSE '{}' END
           || CASE WHEN 'operator' = ANY(flags) THEN jsonb_build_object('operator', actor)
                   ELSE '{}' END
           || CASE WHEN 'due' = ANY(flags) THEN jsonb_build_object('due_at',
                       to_char((at - interval '100 ms') AT TIME ZONE 'UTC',
                               'YYYY-MM-DD HH24:MI:SS.US') || '+00:00')
                   ELSE '{}' END,
           actor, trace, at, created_at
    FROM rows ORDER BY at
    RETURNING id, queue_id, task_id, from_state, to_state, payload, trace_id, occurred_at
)
INSERT INTO outbox (subject, queue_id, task_id, payload, trace_id, created_at, published_at,
                    event_id)
SELECT CASE WHEN w.task_id IS NULL THEN 'order.queue.' ELSE 'order.task.' END
           || lower(w.to_state),
       w.queue_id, w.task_id,
       w.payload || jsonb_build_object('to', w.to_state, 'from', w.from_state,
                                       'task_id', w.task_id, 'order_id', q.order_id,
                                       'queue_id', w.queue_id),
       w.trace_id, w.occurred_at, w.occurred_at + interval '40 ms', md5('ev:' || w.id)::uuid
FROM written w JOIN vq q ON q.qid = w.queue_id
WHERE w.occurred_at > %(outbox_since)s
ORDER BY w.id
"""

WEBHOOKS = """
INSERT INTO webhook_inbox (provider, webhook_id, reference, body, received_at, processed_at,
                           outcome)
SELECT provider, 'msg_' || substr(md5('wh:' || tid), 1, 24), tid::text,
       jsonb_build_object('type', 'order.updated', 'data', jsonb_build_object(
           'id', ref, 'status', CASE WHEN kind = 'fail' THEN 'failed' ELSE 'succeeded' END,
           'reference', tid::text)),
       at, at, CASE WHEN kind = 'paid' THEN 'ignored' ELSE 'applied' END
FROM (SELECT vt.*, start_at + CASE WHEN kind = 'paid' THEN interval '100 ms'
                                   ELSE interval '60 ms' + delay END AS at
      FROM vt WHERE kind IN ('paid', 'hook', 'fail')) w
ORDER BY at
"""

HOLDS = """
INSERT INTO ledger_holds (key, provider, currency, amount, status, fetched_at, order_id)
SELECT tid::text, provider, currency, to_char(amount / 100.0, 'FM9999999990.00'),
       CASE WHEN kind IN ('paid', 'hook') THEN 'committed' ELSE 'released' END,
       %(now)s::timestamptz, order_id
FROM vt WHERE kind <> 'stop'
"""

# Judged when it settled: final, or (manual) when it reached a person, 157 s in.
SLO = f"""
INSERT INTO settle_slo_results (queue_id, policy, result, judged_at)
SELECT qid, 'health_cascade', 'on_time',
       CASE WHEN k0 = 'manual'
            THEN start0 + interval '{KINDS["manual"][-3].ms} ms' ELSE finished END
FROM vq
"""


@dataclass
class Fill:
    withdrawals: int
    start: datetime  # the first submission
    now: datetime  # the fill's "now": every withdrawal is final before it
    seed: int
    chunk: int = 50_000


def first_month(now: datetime, months: int) -> datetime:
    """The first instant of the UTC month `months` before `now`'s."""
    year, month = divmod(now.year * 12 + now.month - 1 - months, 12)
    return datetime(year, month + 1, 1, tzinfo=UTC)


def shape_partitions(url: str, since: datetime, ahead: int = 3) -> list[str]:
    """Partitions as an installation partitioned (0015) before `since` has them: the
    first one (legacy) ends at `since`, and a month each after it, made by the
    function the workers' history job calls. A fresh database's legacy partition
    runs to the end of this month and its months are empty: they are dropped and the
    legacy one attached again with the earlier bound (both empty: no rows checked)."""
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            for p in partitions(conn):
                if p.name != LEGACY and not p.is_default:
                    conn.execute(f'DROP TABLE "{p.name}"')
            conn.execute(f"ALTER TABLE order_task_events DETACH PARTITION {LEGACY}")
            attach = f"ALTER TABLE order_task_events ATTACH PARTITION {LEGACY}"
            bounds = sql.SQL(" FOR VALUES FROM (MINVALUE) TO ({})").format(sql.Literal(since))
            conn.execute(sql.SQL(attach) + bounds)  # DDL takes no parameters
        return add_months(conn, ahead)


def fill(url: str, plan: Fill, progress: Callable[[int, float], None]) -> None:
    """Write `plan.withdrawals` closed withdrawals submitted evenly from `plan.start` to
    an hour before `plan.now`, a transaction per chunk, in time order."""
    step = (plan.now - timedelta(hours=1) - plan.start) / plan.withdrawals
    started = time.monotonic()
    with psycopg.connect(url) as conn:
        # The bench's own session only: fewer full-page images in the WAL of a bulk load.
        conn.execute("SET wal_compression = on")
        conn.execute(_templates())
        for lo in range(1, plan.withdrawals + 1, plan.chunk):
            hi = min(lo + plan.chunk - 1, plan.withdrawals)
            params = {
                "lo": lo,
                "hi": hi,
                "start": plan.start,
                "step": step,
                "now": plan.now,
                "seed": str(plan.seed),
                "person": PERSON,
                "outbox_since": plan.now - OUTBOX_RETENTION,
            }
            # setseed takes [-1, 1]: one value per seed and chunk, so a chunk's draws
            # are the same whichever chunks ran before it
            conn.execute("SELECT setseed(%s)", (((plan.seed * 7919 + lo) % 20_000) / 10_000 - 1,))
            for statement in (PLAN, TASKS, QUEUES, TASK_ROWS, EVENTS, WEBHOOKS, HOLDS, SLO):
                conn.execute(statement, params)
            conn.commit()
            progress(hi, time.monotonic() - started)
