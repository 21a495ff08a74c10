"""archive_files.Pacer: the write-ahead rests in slices, not once a block (a block held a
core for 0.4 s at a time, and the writers queued behind it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.archive_files import Pacer, sha256_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.rests: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.rests.append(seconds)
        self.now += seconds


def test_it_rests_pace_times_the_work_every_slice() -> None:
    clock = Clock()
    pacer = Pacer(3.0, clock.sleep, clock)
    for _ in range(100):  # 100 chunks of 5 ms: 0.5 s of work
        clock.now += 0.005
        pacer.tick()

    assert len(clock.rests) >= 20  # a rest every 4 or 5 chunks, not once at the end
    assert all(r <= 3 * (Pacer.SLICE_S + 0.005) + 1e-9 for r in clock.rests)
    assert abs(sum(clock.rests) - 1.5) <= 3 * Pacer.SLICE_S  # 3 x the work, bar the last


def test_a_long_chunk_is_rested_for_at_once() -> None:
    clock = Clock()
    pacer = Pacer(2.0, clock.sleep, clock)
    clock.now += 0.3  # one slow piece (a block's first rows)
    pacer.tick()
    clock.now += 0.001
    pacer.tick()

    assert clock.rests == [pytest.approx(0.6)]


def test_no_pace_never_rests() -> None:
    clock = Clock()
    pacer = Pacer(0.0, clock.sleep, clock)
    for _ in range(10):
        clock.now += 1.0
        pacer.tick()

    assert clock.rests == []


def test_reading_an_archive_back_rests_as_it_hashes(tmp_path: Path) -> None:
    """The due run's read-back (archive.DUE_VERIFY_PACE): a tick a MiB hashed."""
    clock = Clock()

    def hashing() -> float:  # between two reads of the clock, a MiB hashed: 10 ms
        clock.now += 0.01
        return clock.now

    pacer = Pacer(3.0, clock.sleep, hashing)
    path = tmp_path / "events.csv.gz"
    path.write_bytes(bytes(range(256)) * (1 << 14))  # 4 MiB
    real = hashlib.sha256(path.read_bytes()).hexdigest()

    assert sha256_of(path, pacer) == real
    assert len(clock.rests) >= 1 and all(r >= 3 * Pacer.SLICE_S for r in clock.rests)
