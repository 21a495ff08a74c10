"""Batches of outbox events to JetStream with asynchronous acknowledgements,
never two events of one withdrawal in flight at once.

An acknowledgement is JetStream's word that the message is stored; a message
whose acknowledgement has not come back may be stored or not. One connection
delivers in order, but a message can still fail alone while the ones sent
after it are stored: the stream refuses it (its size, a storage error), a
clustered stream changes leader under it, or its acknowledgement is late past
the deadline. Were a withdrawal's event N+1 in flight beside its event N, N
failing and N+1 stored would put N+1 first in the stream, and no republish
could move it back. So a withdrawal's next event goes out only once its
previous one is acknowledged, and the events of different withdrawals travel
together: in flight at once, at most one per withdrawal in the batch.

A failed acknowledgement holds back its own withdrawal's remaining events and
lets the others go on; the relay marks what was acknowledged and republishes
the rest from the first unmarked row, where JetStream drops whatever of it was
stored after all (`Nats-Msg-Id`). No acknowledgement at all for
`ack_timeout_s` (NATS gone) ends the batch there.

The acknowledgements come back on one inbox subscription, answered by index,
with no future per message: with nats-py's `publish_async` (a future and two
callbacks each) the same batches cost 50-60 us of this process's CPU per
event, this way 20-25 us, and CPU is what bounds the relay.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import APIError, NoStreamResponseError


@dataclass(frozen=True, slots=True)
class Event:
    id: int  # the outbox row's
    withdrawal: str  # its queue_id; "" for events of no withdrawal: one chain, in read order
    subject: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Outcome:
    acked: list[int] = field(default_factory=list)  # stored now, or found stored (duplicates)
    duplicates: int = 0
    failure: BaseException | None = None  # the first; what was acked before and beside it counts


class Publisher:
    """Publishes batches, one at a time, on one NATS connection (`start` once)."""

    def __init__(self, nc: Any, *, pause_s: float = 0.0) -> None:
        self._nc, self._pause = nc, pause_s  # pause: after each send; tests kill mid-batch
        self._prefix = ""
        self._number = 0
        self._batch: _Batch | None = None

    async def start(self) -> None:
        self._prefix = f"{self._nc.new_inbox()}."
        await self._nc.subscribe(f"{self._prefix}*", cb=self._on_ack)

    async def publish(self, events: list[Event], *, ack_timeout_s: float) -> Outcome:
        """Publish `events` (outbox order), in order per withdrawal; never raises."""
        self._number += 1
        batch = self._batch = _Batch(self._number, events)
        try:
            for first in batch.firsts():
                await self._send(batch, first)
            batch.all_sent = True  # of the firsts: the rest follow their acknowledgements
            await batch.finished(ack_timeout_s)
        except Exception as exc:  # NATS away: sending failed, or no acknowledgement in time
            batch.fail(exc)
        finally:
            self._batch = None  # acknowledgements still on their way are ignored
        return batch.outcome

    async def _send(self, batch: _Batch, index: int) -> None:
        event = batch.events[index]
        reply = f"{self._prefix}{batch.number}_{index}"
        batch.in_flight += 1  # before: its acknowledgement may come while publish yields
        try:
            await self._nc.publish(event.subject, event.body, reply=reply, headers=event.headers)
        except BaseException:
            batch.in_flight -= 1
            raise
        if self._pause:
            await asyncio.sleep(self._pause)

    async def _on_ack(self, msg: Any) -> None:
        number, _, index = msg.subject[len(self._prefix) :].partition("_")
        batch = self._batch
        if batch is None or number != str(batch.number):
            return  # for a batch that has ended
        following = batch.acknowledged(int(index), msg.data)
        try:
            if following is not None:
                await self._send(batch, following)
        except Exception as exc:  # the connection is gone: no use waiting for the rest
            batch.fail(exc, end=True)
        batch.settle()


# A stored message's acknowledgement is `{"stream":"ORDERS","seq":7}`, with a
# `"duplicate"` field (only ever true) when it was stored before; a refusal
# starts with `{"error":`. Looked for as bytes: JSON-decoding every
# acknowledgement costs about as much as sending the message. Anything else is
# decoded (`_slow_answer`).
_STORED = b'{"stream":'
_DUPLICATE = b'"duplicate"'


def _slow_answer(data: bytes) -> tuple[Exception | None, bool]:
    """(the refusal, or None when stored; whether it was a duplicate)."""
    try:
        answer = json.loads(data)
        if "error" in answer:
            APIError.from_error(answer["error"])  # raises the error's own class
        if "seq" in answer:
            return None, bool(answer.get("duplicate"))
    except APIError as exc:
        return exc, False
    except (ValueError, TypeError, KeyError):  # no JSON: a status (no stream takes it)
        pass
    return NoStreamResponseError(), False


class _Batch:
    def __init__(self, number: int, events: list[Event]) -> None:
        self.number, self.events = number, events
        self._chains: dict[str, deque[int]] = {}
        for index, event in enumerate(events):
            self._chains.setdefault(event.withdrawal, deque()).append(index)
        self.in_flight = 0
        self.all_sent = False  # until then, acknowledgements may catch up with the sends
        self.outcome = Outcome()
        self._loop = asyncio.get_running_loop()
        self._heard_at = self._loop.time()
        self._done: asyncio.Future[None] = self._loop.create_future()

    def firsts(self) -> list[int]:
        return [chain.popleft() for chain in self._chains.values()]

    def acknowledged(self, index: int, data: bytes) -> int | None:
        """Record an acknowledgement; the index of its withdrawal's next event, if one goes."""
        self.in_flight -= 1
        self._heard_at = self._loop.time()
        event = self.events[index]
        if data.startswith(_STORED):
            duplicate = _DUPLICATE in data
        else:
            refusal, duplicate = _slow_answer(data)
            if refusal is not None:  # holds back its withdrawal's next events
                self.fail(refusal)
                return None
        self.outcome.acked.append(event.id)
        self.outcome.duplicates += duplicate
        chain = self._chains[event.withdrawal]
        return chain.popleft() if chain else None

    def fail(self, exc: BaseException, *, end: bool = False) -> None:
        self.outcome.failure = self.outcome.failure or exc
        if end and not self._done.done():
            self._done.set_result(None)

    def settle(self) -> None:
        if self.all_sent and self.in_flight <= 0 and not self._done.done():
            self._done.set_result(None)

    async def finished(self, ack_timeout_s: float) -> None:
        self.settle()  # an empty batch, or every acknowledgement already in
        while not self._done.done():
            silence = self._loop.time() - self._heard_at
            if silence >= ack_timeout_s:
                raise TimeoutError(f"no acknowledgement from JetStream for {ack_timeout_s} s")
            await asyncio.wait([self._done], timeout=ack_timeout_s - silence)
