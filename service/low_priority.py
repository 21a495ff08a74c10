"""Work that must not take the cores from live traffic: run in a thread of its own at
a lower CPU priority (service/archive.py reads and writes a month's files this way).

Linux keeps a nice value per thread, so the value is set on a thread made for the work
and ended with it: a pooled thread would keep it, and an unprivileged process cannot
lower it again. Elsewhere (no per-thread nice) the work runs at the process's priority.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# When the work and the service both want a core, the scheduler gives the service's
# threads the larger share (nice 10 weighs about a tenth of nice 0).
NICENESS = 10


def at_low_priority(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` in a thread of its own at NICENESS more than this one's."""
    with ThreadPoolExecutor(1, "low-priority", initializer=_lower_priority) as thread:
        return thread.submit(work, *args).result()


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: as it is
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + NICENESS)
