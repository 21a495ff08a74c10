"""How every side effect reports back: accepted, declined (final) or ambiguous."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from engine.contracts import Transient


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    AMBIGUOUS = "ambiguous"
    THROTTLED = "throttled"  # 429: nothing was done; ask again after Retry-After


class AmbiguousOutcome(Transient):
    """We cannot know what happened (5xx, timeout, reset, unparseable body).

    For ledger calls the job retries the same idempotent call; the task stays.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: dict[str, object]
    retry_after_s: float | None = None  # on a 429

    @property
    def error_code(self) -> str | None:
        error = self.body.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            return code if isinstance(code, str) else None
        return None
