"""The cohort guard on a real PostgreSQL: what its window counts, when it moves a
cohort back (once, audited, with its figures), and that a restore starts a fresh
window. Withdrawals are rows inserted as the engine leaves them: the guard only
reads them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from activities.provider_config import DEFAULT_PROVIDERS_FILE, ProviderConfig, load_providers
from devstack.embedded import database_url as server_url
from engine.db import Pool, open_pool
from engine.journal import Conn
from engine.migrations import migrate
from service.cohort_guard import (
    _WINDOW,
    ACTOR,
    CohortGuard,
    Move,
    NotMovedBack,
    check_cohorts,
    export_moved_back,
    restore,
    window_arms,
    window_params,
)
from service.cohort_stats import Arm
from service.live_config import LiveConfig
from service.provider_documents import ProviderSet
from service.rollout import GuardSettings, Policy, RolloutConfig
from tests.conftest import fresh_database

CASCADE, HEALTH, SINGLE = Policy.CASCADE, Policy.HEALTH_CASCADE, Policy.SINGLE_SHOT
# Small samples, so that a test needs tens of rows; the rule is the default's otherwise.
SMALL = GuardSettings(min_sample=10)


@pytest.fixture(scope="module")
def template() -> Iterator[str]:
    with fresh_database("_cohort_guard") as url:
        migrate(url)
        yield str(conninfo_to_dict(url)["dbname"])


@pytest.fixture
def url(template: str) -> Iterator[str]:
    """A database of its own per test (the audit table refuses TRUNCATE): a copy
    of the migrated one, which PostgreSQL makes in a blink."""
    admin = server_url()
    name = f"{template}_{os.urandom(3).hex()}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def conn(url: str) -> AsyncIterator[Conn]:
    pool: Pool = await open_pool(url, max_size=1)
    try:
        async with pool.connection() as c:
            yield c
    finally:
        await pool.close()


async def add(
    conn: Conn,
    policy: Policy,
    n: int,
    status: str = "COMPLETED",
    *,
    manual: bool = False,
    waiting: bool = False,
    age_s: float = 60.0,
) -> None:
    """n withdrawals of `policy`, submitted age_s ago; `manual`: a task went through
    MANUAL_CHECK (its audit row); `waiting`: a task waits there now."""
    for _ in range(n):
        queue_id, task_id = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor,"
            " currency, status, policy, cohort, created_at) VALUES (%s, %s, 'h', 'm', 100,"
            " 'EUR', %s, %s, %s, now() - make_interval(secs => %s))",
            (queue_id, f"o-{queue_id}", status, policy, policy, age_s),
        )
        task_status, funds = ("MANUAL_CHECK", "FROZEN") if waiting else ("FAILED", "NONE")
        await conn.execute(
            "INSERT INTO order_tasks (id, queue_id, position, provider, status, funds)"
            " VALUES (%s, %s, 0, 'alpha', %s, %s)",
            (task_id, queue_id, task_status, funds),
        )
        if manual or waiting:
            await conn.execute(
                "INSERT INTO order_task_events (queue_id, task_id, from_state, to_state,"
                " event_type, actor) VALUES (%s, %s, 'EXECUTING', 'MANUAL_CHECK', 'sla', 't')",
                (queue_id, task_id),
            )


async def test_the_window_counts_settled_withdrawals_of_each_policy(conn: Conn) -> None:
    await add(conn, CASCADE, 3)  # paid
    await add(conn, CASCADE, 2, "FAILED")
    await add(conn, CASCADE, 1, manual=True)  # paid after a person looked
    await add(conn, CASCADE, 4, "ACTIVE", waiting=True)  # a provider that never answers
    await add(conn, CASCADE, 5, "ACTIVE")  # in flight: not settled, not counted
    await add(conn, CASCADE, 6, age_s=7200)  # before the window
    await add(conn, SINGLE, 7)
    await add(conn, SINGLE, 1, "FAILED", manual=True)
    arms = await window_arms(conn, "default", {CASCADE: 3600.0, HEALTH: 3600.0})
    assert arms[CASCADE] == (Arm(n=10, succeeded=4, manual=5), Arm(n=8, succeeded=7, manual=1))
    assert arms[HEALTH] == (Arm(0, 0, 0), Arm(n=8, succeeded=7, manual=1))
    shorter = await window_arms(conn, "default", {CASCADE: 30.0})
    assert shorter[CASCADE] == (Arm(0, 0, 0), Arm(0, 0, 0))


async def test_the_window_is_planned_by_its_length_not_by_the_history(conn: Conn) -> None:
    """A year of history (60,000 withdrawals, analysed): the window's query must cost
    what its hour holds, under the server's jit_above_cost. Planned against an
    unknown bound, it cost a third of the table and was JIT-compiled on every run
    (1.3 s of a core on 5 million withdrawals, for 0.3 ms of work)."""
    await conn.execute(
        "INSERT INTO order_queues (id, order_id, request_hash, merchant_id, amount_minor,"
        " currency, status, policy, cohort, created_at)"
        " SELECT gen_random_uuid(), 'old-' || i, 'h', 'm', 100, 'EUR', 'COMPLETED',"
        " 'cascade', 'cascade', now() - make_interval(days => 1 + i % 365)"
        " FROM generate_series(1, 60000) i"
    )
    await conn.execute("ANALYZE order_queues")
    await add(conn, CASCADE, 3)
    params = window_params("default", {CASCADE: 3600.0})
    plan = await (await conn.execute("EXPLAIN (FORMAT JSON) " + _WINDOW, params)).fetchone()
    jit_above = await (await conn.execute("SELECT current_setting('jit_above_cost')")).fetchone()
    assert plan is not None and jit_above is not None
    cost = plan["QUERY PLAN"][0]["Plan"]["Total Cost"]
    assert cost < float(jit_above["current_setting"]), cost
    arms = await window_arms(conn, "default", {CASCADE: 3600.0})
    assert arms[CASCADE][0] == Arm(n=3, succeeded=3, manual=0)


@dataclass
class FakeStore:
    """The live configuration, in memory: what the decision logic needs of it."""

    config: RolloutConfig
    scope: str = "default"
    changes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rollout(self) -> RolloutConfig:
        return self.config

    async def change_rollout(
        self,
        conn: Conn,
        change: Callable[[RolloutConfig], RolloutConfig],
        *,
        actor: str,
        reason: str,
        expected: int | None = None,
    ) -> int:
        self.config = change(self.config)
        self.changes.append((actor, reason))
        return len(self.changes) + 1


async def test_a_worse_cohort_is_moved_back_once_with_its_figures(conn: Conn) -> None:
    await add(conn, CASCADE, 5)
    await add(conn, CASCADE, 15, "FAILED")
    await add(conn, SINGLE, 19)
    await add(conn, SINGLE, 1, "FAILED")
    store = FakeStore(RolloutConfig(guard=SMALL))
    before = _moves(CASCADE, "success")
    guard = CohortGuard(store, every_s=0.0)
    [move] = await guard(conn)
    assert (move.cohort, move.to) == (CASCADE, SINGLE)
    assert store.config.moved_back == {CASCADE: SINGLE}
    [(actor, reason)] = store.changes
    assert actor == ACTOR == "guard:cohort"
    assert "success rate 25.0% (n=20) vs control 95.0% (n=20)" in reason
    assert "z=5.63" in reason and "new withdrawals get single_shot" in reason
    assert _moves(CASCADE, "success") == before + 1
    assert await guard(conn) == [] and len(store.changes) == 1  # moved back already


async def test_a_cohort_whose_guard_is_off_or_too_small_is_left_alone(conn: Conn) -> None:
    await add(conn, CASCADE, 20, "FAILED")
    await add(conn, SINGLE, 20)
    off = {CASCADE: SMALL.model_copy(update={"enabled": False})}
    store = FakeStore(RolloutConfig(guard=SMALL, guard_cohorts=off))
    assert await check_cohorts(conn, store) == []
    store = FakeStore(RolloutConfig())  # min_sample 200
    assert await check_cohorts(conn, store) == []
    assert store.changes == []


async def test_the_guard_runs_at_most_every_every_s(conn: Conn) -> None:
    await add(conn, CASCADE, 20, "FAILED")
    await add(conn, SINGLE, 20)
    store = FakeStore(RolloutConfig(guard=SMALL, moved_back={CASCADE: SINGLE}))
    guard = CohortGuard(store, every_s=3600.0)
    assert await guard(conn) == []  # ran: nothing to move
    store.config = store.config.restoring(CASCADE)
    assert await guard(conn) == []  # within every_s: did not run
    assert store.changes == []


async def test_two_guards_at_once_move_a_cohort_back_once(url: str, conn: Conn) -> None:
    """Two workers' guards judging at the same moment, each with its own live
    configuration and connection: one version moves the cohort back."""
    await add(conn, CASCADE, 20, "FAILED")
    await add(conn, SINGLE, 20)
    pool = await open_pool(url, max_size=3)
    lives = [LiveConfig(pool, url, "default") for _ in range(2)]
    try:
        for live in lives:
            await live.open(RolloutConfig(guard=SMALL), ProviderSet(0, _providers()), "test")

        async def judge(live: LiveConfig) -> list[Move]:
            async with pool.connection() as c:
                return await CohortGuard(live, every_s=0.0)(c)

        moves = await asyncio.gather(*(judge(live) for live in lives))
        assert sorted(len(m) for m in moves) == [0, 1]
        rows = await conn.execute("SELECT changed_by FROM live_config WHERE name = 'rollout'")
        assert [r["changed_by"] for r in await rows.fetchall()] == ["seed:test", ACTOR]
    finally:
        await pool.close()


async def test_a_restore_is_audited_and_starts_a_fresh_window(url: str, conn: Conn) -> None:
    pool = await open_pool(url, max_size=1)
    live = LiveConfig(pool, url, "default")
    try:
        await live.open(RolloutConfig(guard=SMALL), ProviderSet(0, _providers()), "test")
        await add(conn, HEALTH, 20, "ACTIVE", waiting=True)  # all sent to a person
        await add(conn, SINGLE, 20)
        [move] = await check_cohorts(conn, live)
        assert [f.what for f in move.findings] == ["success", "manual"]  # waiting: not paid
        assert live.rollout.moved_back == {HEALTH: SINGLE}
        with pytest.raises(NotMovedBack):
            await restore(conn, live, CASCADE, "person:ana", "not moved back")
        version = await restore(conn, live, HEALTH, "person:ana", "provider fixed")
        assert (live.rollout.moved_back, version) == ({}, move.version + 1)
        rows = await conn.execute(
            "SELECT changed_by, reason FROM live_config WHERE name = 'rollout' ORDER BY version"
        )
        assert [r["changed_by"] for r in await rows.fetchall()][1:] == [ACTOR, "person:ana"]
        assert await check_cohorts(conn, live) == []  # the old evidence was overruled
        await add(conn, HEALTH, 20, "ACTIVE", waiting=True, age_s=0.0)
        await add(conn, SINGLE, 20, age_s=0.0)
        assert [m.cohort for m in await check_cohorts(conn, live)] == [HEALTH]
    finally:
        await live.close()
        await pool.close()


def test_the_gauge_says_which_cohorts_are_moved_back() -> None:
    export_moved_back(RolloutConfig(moved_back={HEALTH: SINGLE, CASCADE: CASCADE}))
    assert REGISTRY.get_sample_value("cohort_moved_back", {"cohort": "health_cascade"}) == 1
    assert REGISTRY.get_sample_value("cohort_moved_back", {"cohort": "cascade"}) == 0
    export_moved_back(RolloutConfig())
    assert REGISTRY.get_sample_value("cohort_moved_back", {"cohort": "health_cascade"}) == 0


def _moves(cohort: Policy, reason: str) -> float:
    labels = {"cohort": cohort, "reason": reason}
    return REGISTRY.get_sample_value("cohort_guard_moves_total", labels) or 0.0


def _providers() -> dict[str, ProviderConfig]:
    return dict(load_providers(DEFAULT_PROVIDERS_FILE))
