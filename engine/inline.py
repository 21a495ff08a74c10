"""Steps run in the process that committed the transition asking for them.

A transition writes its activity's name and token on the task row, so the
intent is durable before the call is made. Running it here, right after the
commit, saves a queued job's hand-off: its insert, the fetch and the finish
(each a commit, with a fetch by every idle worker), and a pre-read of the rows.
Nothing is lost when this process cannot finish one:

- a failed attempt is handed to a procrastinate job, which owns it from then on
  (retries with backoff, dead letter);
- a process that dies with steps in hand leaves tasks whose token is set and no
  job: the sweep defers them again after its grace (engine/sweep.py);
- while the oldest step waiting here has waited `max_wait_s` (a quarter of the
  sweep's grace by default, so the sweep never mistakes a waiting step for a
  lost one), or `max_backlog` are in hand, new steps go to jobs at once: a
  burst beyond what this process can soon do is shared by every worker.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engine.rows import QueueRow, TaskRow

log = logging.getLogger("payment.inline")


@dataclass(frozen=True)
class Intent:
    """An activity a committed transition asked for, with the rows it left."""

    task_id: str
    activity: str
    token: int
    task: TaskRow
    queue: QueueRow


class InlineRunner:
    """At most `concurrency` steps at a time; takes more while none has waited
    `max_wait_s` to start and fewer than `max_backlog` are in hand."""

    def __init__(
        self,
        concurrency: int = 8,
        max_backlog: int = 2048,
        max_wait_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None  # made in the running loop
        self._max_backlog = max_backlog
        self._max_wait_s = max_wait_s
        self._waiting: collections.deque[float] = collections.deque()  # since when, FIFO
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def has_room(self) -> bool:
        if self._closing or len(self._tasks) >= self._max_backlog:
            return False
        oldest = self._waiting[0] if self._waiting else None
        return oldest is None or self._clock() - oldest < self._max_wait_s

    @property
    def in_hand(self) -> int:
        return len(self._tasks)

    def submit(self, work: Callable[[], Awaitable[None]]) -> None:
        self._waiting.append(self._clock())
        task = asyncio.get_running_loop().create_task(self._run(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Callable[[], Awaitable[None]]) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
        try:
            await self._slots.acquire()  # FIFO: the oldest waiting step starts first
        finally:
            self._waiting.popleft()
        try:
            await work()
        except Exception:  # work hands its own failures on; this is a bug's last stop
            log.exception("in-process step failed; the sweep will find its task")
        finally:
            self._slots.release()

    async def drain(self, timeout_s: float) -> int:
        """Take nothing new (later steps go to jobs); wait for those in hand.
        Returns how many were still running at the timeout (cancelled: swept later)."""
        self._closing = True
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        return len(pending)
