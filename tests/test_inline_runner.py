"""When a process takes a step itself, and when it hands it to a job instead."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from engine.inline import InlineRunner


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Poll with a deadline; the loop must run the steps meanwhile."""
    try:
        async with asyncio.timeout(5):
            while not predicate():
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_room_while_no_step_has_waited_too_long() -> None:
    clock = Clock()
    runner = InlineRunner(concurrency=1, max_backlog=10, max_wait_s=15.0, clock=clock)
    release = asyncio.Event()
    done: list[int] = []

    async def step(n: int) -> None:
        await release.wait()
        done.append(n)

    runner.submit(lambda: step(1))  # runs at once (one slot)
    runner.submit(lambda: step(2))  # waits for the slot
    await _until(lambda: runner.in_hand == 2, "two in hand")
    assert runner.has_room()
    clock.now += 14.9
    assert runner.has_room()
    clock.now += 0.2  # the waiting step has now waited 15.1 s: new steps go to jobs
    assert not runner.has_room()
    release.set()
    await _until(lambda: done == [1, 2], "both steps, in order")
    assert runner.has_room()  # nothing waits any more


async def test_no_room_beyond_the_backlog_or_once_draining() -> None:
    runner = InlineRunner(concurrency=1, max_backlog=2, clock=Clock())
    release = asyncio.Event()

    async def step() -> None:
        await release.wait()

    runner.submit(step)
    runner.submit(step)
    assert not runner.has_room()
    release.set()
    assert await runner.drain(timeout_s=5) == 0
    assert runner.in_hand == 0
    assert not runner.has_room()  # a process shutting down takes no new step


def test_steps_go_to_jobs_after_the_shorter_of_the_grace_quarter_and_inline_max_wait() -> None:
    from service.settings import Settings
    from service.wiring import _runner

    def settings(max_wait_s: float | None) -> Settings:
        return Settings(
            database_url="postgresql://unused/x", sweep_grace_s=60.0, inline_max_wait_s=max_wait_s
        )

    plain, sooner, later = (_runner(settings(s), 8) for s in (None, 0.25, 100.0))
    assert plain is not None and sooner is not None and later is not None
    assert (plain._max_wait_s, sooner._max_wait_s, later._max_wait_s) == (15.0, 0.25, 15.0)
