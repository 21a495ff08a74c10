"""Lifecycle events on a real nats-server: every transition exactly once, in order,
through a relay crash and a NATS outage."""

from __future__ import annotations

import signal
from collections import Counter

import psycopg

from sandbox.client import StackClient
from sandbox.servers import NatsServer
from sandbox.soak_checks import stream_messages
from sandbox.stack import wait_until


def outbox(url: str, queue_ids: list[str]) -> list[tuple[str, str, str]]:
    """(event id, subject, queue id) in outbox order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_id::text, subject, queue_id::text FROM outbox"
            " WHERE queue_id = ANY(%s::uuid[]) ORDER BY id",
            (queue_ids,),
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def unpublished(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def assert_exactly_once_in_order(url: str, nats_url: str, queue_ids: list[str]) -> None:
    wait_until(lambda: unpublished(url) == 0, 60, "the outbox to drain", every=0.2)
    expected = outbox(url, queue_ids)
    ours = {row[0] for row in expected}
    published = [m for m in stream_messages(nats_url) if m["id"] in ours]
    counts = Counter(m["id"] for m in published)
    assert [i for i, n in counts.items() if n > 1] == []  # nothing twice
    assert set(counts) == ours  # nothing missing
    subjects = {m["id"]: m["subject"] for m in published}
    assert all(subjects[i] == subject for i, subject, _ in expected)
    place = {event_id: n for n, (event_id, _, _) in enumerate(expected)}
    for queue_id in queue_ids:  # per withdrawal, stream order == outbox order
        ids = [place[m["id"]] for m in published if m["body"]["queue_id"] == queue_id]
        assert ids == sorted(ids)


def test_every_transition_is_published_exactly_once(
    client: StackClient, migrated_url: str, nats_server: NatsServer
) -> None:
    client.set_provider("alpha", behaviour="decline")
    ids = [client.submit(["alpha", "beta", "gamma"]).json()["id"] for _ in range(5)]
    for queue_id in ids:
        client.wait_final(queue_id)
    assert_exactly_once_in_order(migrated_url, nats_server.url, ids)
    subjects = {m["subject"] for m in stream_messages(nats_server.url)}
    assert {
        "order.task.creating",
        "order.task.skipped",
        "order.task.succeeded",
        "order.queue.completed",
    } <= subjects


def test_relay_killed_mid_batch_publishes_nothing_twice(
    client: StackClient, migrated_url: str, nats_server: NatsServer
) -> None:
    nats_server.stop()  # build a backlog first
    try:
        ids = [client.submit(["alpha", "beta"]).json()["id"] for _ in range(8)]
        for queue_id in ids:
            client.wait_final(queue_id)
        backlog = unpublished(migrated_url)
        assert backlog > 20
    finally:
        nats_server.start()
    # Slow the relay down so that it is certainly killed between publish and mark.
    client.stack.kill_workers(signal.SIGKILL)
    client.stack.extra_env["OUTBOX_RELAY_PAUSE_S"] = "0.02"
    try:
        client.stack.start_worker()
        wait_until(lambda: 0 < unpublished(migrated_url) < backlog, 30, "the relay to start")
        client.stack.kill_workers(signal.SIGKILL)  # mid-batch: published, not yet marked
    finally:
        del client.stack.extra_env["OUTBOX_RELAY_PAUSE_S"]
        for _ in range(2):
            client.stack.start_worker()
    assert_exactly_once_in_order(migrated_url, nats_server.url, ids)


def test_events_wait_out_a_nats_outage(
    client: StackClient, migrated_url: str, nats_server: NatsServer
) -> None:
    nats_server.stop()
    try:
        queue_id = client.submit(["alpha", "beta"]).json()["id"]
        view = client.wait_final(queue_id)  # the cascade does not wait for NATS
        assert view["status"] == "COMPLETED"
        assert unpublished(migrated_url) > 0
    finally:
        nats_server.start()
    assert_exactly_once_in_order(migrated_url, nats_server.url, [queue_id])
