"""The soak's configuration fault: a person changes the live configuration while
the load and the other faults run (service/live_config.py).

Each change is one an on-call engineer makes in an incident: a provider's timing
(its rechecks and webhook SLA), the first step of a webhook secret rotation (the
new secret first, the old one still accepted), and the rollout's guard settings.
Withdrawals in flight keep the settings they started with; the soak's money and
liveness checks judge that nothing went wrong meanwhile. A change the API cannot
take right now (the database is down: a 503) is tried again, as a person would.
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from activities.standard_webhooks import new_secret
from sandbox.client import StackClient
from sandbox.stack import Stack

CREDENTIALS = ("api_key", "webhook_secrets")


class ConfigChanges:
    def __init__(self, stack: Stack, client: StackClient, rng: random.Random) -> None:
        self.stack, self.client, self.rng = stack, client, rng
        self.applied = self.refused = 0

    def change(self) -> None:
        shown = self._get("/ops/v1/config")
        if shown is None:
            self.refused += 1
            return
        providers = shown["providers"]["body"]
        name = self.rng.choice(sorted(providers))
        settings = {k: v for k, v in providers[name].items() if k not in CREDENTIALS}
        timing = settings["timing"]
        settings["timing"] = {**timing, "recheck_base_s": round(self.rng.uniform(0.2, 1.0), 2)}
        # A rotation's first step: the new secret first, the one the sandbox signs with kept.
        settings["webhook_secrets"] = [new_secret(), self.stack.secrets[name]]
        self._put(f"/ops/v1/config/providers/{name}", {"settings": settings, "reason": "soak"})
        rollout = shown["rollout"]["body"]
        guard = {**rollout["guard"], "window_s": float(self.rng.randint(600, 7200))}
        self._put(
            "/ops/v1/config/rollout", {"config": {**rollout, "guard": guard}, "reason": "soak"}
        )

    def _get(self, path: str) -> dict[str, Any] | None:
        for _ in range(20):
            try:
                answer = self.client.admin.get(path)
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code == 200:
                return answer.json()  # type: ignore[no-any-return]
            time.sleep(0.5)  # a person retrying a 503, not a synchronisation
        return None

    def _put(self, path: str, body: dict[str, Any]) -> None:
        for _ in range(20):
            try:
                status = self.client.admin.put(path, json=body).status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                self.applied += 1
                return
            if 400 <= status < 500:
                break
            time.sleep(0.5)  # as above
        self.refused += 1
