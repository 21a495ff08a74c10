"""What each simulated provider has to carry: orders open at once and orders
created per second, so that tests can check the limits payment-service keeps
(GET /providers/_admin/{name}/load)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 1.0
KEEP = 10_000


@dataclass
class ProviderLoad:
    in_flight: int = 0
    peak_in_flight: int = 0
    created: deque[float] = field(default_factory=lambda: deque(maxlen=KEEP))
    throttled: int = 0

    def opened(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def closed(self) -> None:
        self.in_flight = max(self.in_flight - 1, 0)

    def create_called(self) -> None:
        self.created.append(time.monotonic())

    def peak_per_window(self) -> int:
        """The most create calls that fell within any WINDOW_S-long window."""
        times, best, start = list(self.created), 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= WINDOW_S:
                start += 1
            best = max(best, end - start + 1)
        return best

    def to_json(self) -> dict[str, int]:
        return {
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "creates": len(self.created),
            "peak_creates_per_s": self.peak_per_window(),
            "throttled": self.throttled,
        }
