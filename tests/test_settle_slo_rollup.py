"""The settle objective's month from minutes rolled up (migration 0018):
settle_slo_summary(period) must say exactly what counting the judgements says,
whatever has been rolled up so far, and a minute is rolled up only once no
transaction that could still commit a judgement into it is open."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime

import psycopg
import pytest

from tests.history_data import migrated_database

RAW = """
SELECT policy, result, count(*) FROM settle_slo_results
WHERE judged_at > now() - %(period)s::interval GROUP BY 1, 2 ORDER BY 1, 2
"""
SUMMARY = "SELECT policy, result, judgements FROM settle_slo_summary(%(period)s::interval)"
PERIODS = ("30 days", "1 hour", "45 days", "36 hours 30 seconds", "90 seconds")

# Queues for the judgements to reference; their own columns do not matter here.
_QUEUES = """
INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor, currency,
                          status, created_at, finished_at, core_notified_at)
SELECT gen_random_uuid(), %s || i, 'h', 'merchant-1', 100, 'EUR', 'COMPLETED',
       now(), now(), now()
FROM generate_series(1, %s) AS i
RETURNING id
"""


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with migrated_database("_slo") as found:
        yield found


def judge(conn: psycopg.Connection, ages_s: list[float], rng: random.Random, tag: str) -> None:
    """One judgement a queue, `ages_s` seconds before now."""
    ids = [row[0] for row in conn.execute(_QUEUES, (tag, len(ages_s))).fetchall()]
    rows = [
        (queue_id, rng.choice(["cascade", "single_shot"]), rng.choice(["on_time", "late"]), age)
        for queue_id, age in zip(ids, ages_s, strict=True)
    ]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO settle_slo_results (queue_id, policy, result, judged_at)"
            " VALUES (%s, %s, %s, now() - make_interval(secs => %s))",
            rows,
        )


def both(url: str) -> list[tuple[list[tuple[object, ...]], list[tuple[object, ...]]]]:
    """(summary, count) for each period, each pair at one now() (one transaction)."""
    with psycopg.connect(url) as conn:
        return [
            (
                conn.execute(SUMMARY, {"period": period}).fetchall(),
                conn.execute(RAW, {"period": period}).fetchall(),
            )
            for period in PERIODS
        ]


def roll_up(url: str, **args: str) -> datetime:
    named = ", ".join(f"{name} => %({name})s::interval" for name in args)
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT settle_slo_roll_up({named})", args).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_the_summary_says_what_counting_says_at_every_step_of_the_roll_up(url: str) -> None:
    rng = random.Random(23)
    with psycopg.connect(url) as conn:  # 40 days of judgements, a few in the last minutes
        judge(conn, [rng.uniform(0, 40 * 86400) for _ in range(3000)], rng, "old-")
        judge(conn, [rng.uniform(0, 180) for _ in range(50)], rng, "new-")
    for summary, counted in both(url):
        assert summary == counted and counted  # nothing rolled up yet: all from the rows
    previous = None
    for _ in range(20):  # four days a call, as a new installation's history catches up
        up_to = roll_up(url, most="4 days")
        for summary, counted in both(url):
            assert summary == counted
        if up_to == previous:
            break
        previous = up_to
    else:
        pytest.fail("the roll-up never caught up")
    with psycopg.connect(url) as conn:  # what comes after the roll-up counts too
        judge(conn, [0.0] * 5, rng, "later-")
        rolled = conn.execute("SELECT sum(judgements) FROM settle_slo_minutes").fetchone()
    assert rolled is not None and rolled[0] >= 2900  # most of it read from the minutes
    for summary, counted in both(url):
        assert summary == counted


def test_a_minute_stays_open_while_a_transaction_begun_in_it_is_open(url: str) -> None:
    """A judgement's judged_at is its transaction's start: a roll-up past it, while it
    has not committed, would never count it."""
    rng = random.Random(7)
    with psycopg.connect(url) as open_one:
        started = open_one.execute("SELECT now()").fetchone()
        assert started is not None
        judge(open_one, [0.0], rng, "open-")  # judged_at: this transaction's start
        # Asked to roll up an hour into the future, it stops at the open transaction.
        up_to = roll_up(url, lag="-1 hour", most="100 days")
        assert up_to <= started[0]
    for summary, counted in both(url):  # committed now: counted from its row
        assert summary == counted
