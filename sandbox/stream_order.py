"""The relay's promise, checked from outside: the ORDERS stream read back with a
JetStream consumer holds every outbox event exactly once, and each withdrawal's
events in outbox order (activities/outbox_relay.py).

Also a realistic outbox to relay (`fill_outbox`): many withdrawals, each with
the events a happy-path withdrawal writes, interleaved as concurrent
withdrawals interleave them.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass

import nats
import psycopg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from psycopg.types.json import Jsonb

from activities.outbox_relay import STREAM

# What one happy-path withdrawal over one provider writes to the outbox, in order
# (counted on a real stack: submit, freeze, order, webhook, settle, completed).
HAPPY_PATH = [
    "order.task.creating",
    "order.task.creating",
    "order.task.creating",
    "order.task.executing",
    "order.task.executing",
    "order.task.succeeded",
    "order.queue.completed",
]


@dataclass(frozen=True)
class Verdict:
    events: int  # in the outbox
    withdrawals: int
    stored: int  # messages in the stream
    missing: int
    repeated: int  # events stored more than once
    out_of_order: int  # withdrawals whose events the stream holds out of outbox order

    @property
    def ok(self) -> bool:
        return self.stored == self.events and not (self.missing or self.repeated)

    @property
    def in_order(self) -> bool:
        return self.out_of_order == 0

    def line(self) -> str:
        return (
            f"JetStream holds {self.stored} messages for {self.events} events of"
            f" {self.withdrawals} withdrawals: missing {self.missing}, repeated"
            f" {self.repeated}, withdrawals out of order {self.out_of_order};"
            f" exactly once: {'yes' if self.ok else 'NO'},"
            f" in order per withdrawal: {'yes' if self.in_order else 'NO'}"
        )


def judge(stream: list[str], outbox: list[tuple[str, str]]) -> Verdict:
    """`stream`: message ids in stream order; `outbox`: (event id, withdrawal) in id order."""
    place = {event_id: n for n, (event_id, _) in enumerate(outbox)}
    withdrawal = dict(outbox)
    counts = Counter(stream)
    last: dict[str, int] = {}
    disordered: set[str] = set()
    for event_id in stream:
        key = withdrawal.get(event_id)
        if key is None:
            continue  # not ours: `missing` and `stored` tell
        if last.get(key, -1) > place[event_id]:
            disordered.add(key)
        last[key] = place[event_id]
    return Verdict(
        events=len(outbox),
        withdrawals=len({key for _, key in outbox}),
        stored=len(stream),
        missing=sum(1 for event_id in place if event_id not in counts),
        repeated=sum(1 for event_id, n in counts.items() if n > 1),
        out_of_order=len(disordered),
    )


async def stream_ids(nats_url: str) -> list[str]:
    """Every message's Nats-Msg-Id in stream order, read by an ephemeral pull consumer."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(STREAM)).state.messages
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
        sub = await js.pull_subscribe("order.>", stream=STREAM, config=config)
        ids: list[str] = []
        while len(ids) < total:
            ids += [(m.headers or {})["Nats-Msg-Id"] for m in await sub.fetch(1000, timeout=5)]
        await sub.unsubscribe()
        return ids
    finally:
        await nc.close()


def outbox_events(url: str) -> list[tuple[str, str]]:
    """(event id, withdrawal) of every outbox row, in id order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_id::text, coalesce(queue_id::text, '') FROM outbox ORDER BY id"
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


async def check_stream(url: str, nats_url: str) -> Verdict:
    return judge(await stream_ids(nats_url), outbox_events(url))


def interleaved(rng: random.Random, withdrawals: int, each: int) -> list[tuple[int, int]]:
    """(withdrawal, its event's number) in the order concurrent withdrawals write them:
    one starts per time unit, its events follow at random gaps (about 20 units)."""
    timed = []
    for w in range(withdrawals):
        at = rng.uniform(0, withdrawals)
        for n in range(each):
            timed.append((at, w, n))
            at += rng.expovariate(1 / 20)
    return [(w, n) for _, w, n in sorted(timed)]


def fill_outbox(url: str, rng: random.Random, withdrawals: int, each: int) -> None:
    """Outbox rows for `withdrawals` withdrawals of `each` events, interleaved."""
    ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(withdrawals)]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        copy_sql = "COPY outbox (subject, queue_id, task_id, payload, trace_id) FROM STDIN"
        with cur.copy(copy_sql) as copy:
            for w, n in interleaved(rng, withdrawals, each):
                subject = HAPPY_PATH[n % len(HAPPY_PATH)]
                copy.write_row((subject, ids[w], ids[w], Jsonb(_body(ids[w], n)), ids[w].hex))


def _body(queue_id: uuid.UUID, n: int) -> dict[str, object]:
    """About the size of a real event's body (engine/journal.py)."""
    return {
        "order_id": f"bench-{queue_id.hex[:12]}",
        "queue_id": str(queue_id),
        "task_id": str(queue_id),
        "from": "CREATING" if n else None,
        "to": "EXECUTING",
        "event": "funds_frozen",
        "version": 3,
        "number": n,
        "provider": "alpha",
        "amount_minor": 12_500,
        "currency": "EUR",
    }
