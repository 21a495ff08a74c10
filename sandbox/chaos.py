"""The soak's load and faults, every one of them drawn from one seed.

`submit_all` sends the withdrawals (retrying a 503 or a dropped connection with
the same body: submission is idempotent) and cancels a few. `Chaos.run` walks a
schedule of faults drawn up front (worker SIGKILLs, PostgreSQL crashes, a
nats-server outage, ledger faults before and after applying) while a
supervisor restarts killed workers and a resender replays webhooks, stale or
duplicate. Threads make the interleaving vary from run to run; what is injected,
and when, does not.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from sandbox.chaos_config import ConfigChanges
from sandbox.client import StackClient
from sandbox.scenarios import eligible_cascade
from sandbox.servers import NatsServer, RestartablePostgres
from sandbox.stack import Stack


@dataclass(frozen=True)
class Plan:
    count: int
    spread_s: float
    pg_restarts: int
    nats_down_s: float
    seed: int
    workers: int = 2
    kill_every_s: float = 3.0
    pg_down_s: float = 3.0
    ledger_fault_rate: float = 0.05  # before applying, and the same again after
    cancel_share: float = 0.03
    hang_share: float = 0.1  # cascades that end with the provider whose creates hang


OnAnswer = Callable[[str, dict[str, Any], int], None]  # path, body, final status


def submit_all(
    client: StackClient, market: dict[str, Any], plan: Plan, on_answer: OnAnswer | None = None
) -> tuple[Counter[int], int]:
    """Returns every API answer by status, and how many cancels were sent.
    `on_answer` sees each request's final answer (cascade-core's memory)."""
    rng = random.Random(plan.seed)
    answers: Counter[int] = Counter()
    cancels: list[tuple[float, str]] = []
    sent_cancels = 0
    started = time.monotonic()
    for i in range(plan.count):
        order_id = f"soak-{plan.seed}-{i:05d}"
        body = _withdrawal(order_id, market, plan, rng)
        _post_until_answered(client, "/v1/withdrawals", body, answers, on_answer)
        if rng.random() < plan.cancel_share:
            sent_cancels += 1
            cancels.append((time.monotonic() + rng.uniform(0.2, 5.0), order_id))
        due = [c for c in cancels if c[0] <= time.monotonic()]
        for cancel in due:
            cancels.remove(cancel)
            _cancel(client, cancel[1], answers, on_answer)
        time.sleep(max(0.0, started + plan.spread_s * (i + 1) / plan.count - time.monotonic()))
    for _, order_id in cancels:
        _cancel(client, order_id, answers, on_answer)
    return answers, sent_cancels


def _withdrawal(
    order_id: str, market: dict[str, Any], plan: Plan, rng: random.Random
) -> dict[str, Any]:
    """One withdrawal's body. The order of the draws from `rng` is part of what a seed
    means: change it and the same seed sends other withdrawals."""
    cascade = eligible_cascade(market, rng)
    if rng.random() < plan.hang_share:
        cascade.append("hangs")
    return {
        "order_id": order_id,
        "merchant_id": f"m-{rng.randint(1, 20)}",
        "amount": f"{rng.randint(1, 900)}.{rng.randint(0, 99):02d}",
        "currency": "EUR",
        "cascade": cascade,
    }


def _cancel(
    client: StackClient, order_id: str, answers: Counter[int], on_answer: OnAnswer | None
) -> None:
    """cascade-core's cancel, sent until answered like a submission."""
    _post_until_answered(
        client, f"/v1/withdrawals/{order_id}/cancel", {"reason": "soak"}, answers, on_answer
    )


def _post_until_answered(
    client: StackClient,
    path: str,
    body: dict[str, Any],
    answers: Counter[int],
    on_answer: OnAnswer | None = None,
) -> int:
    """POST until the answer is not a 503 or a dropped connection (60 s at most); every
    answer is counted (0: no answer at all)."""
    deadline, backoff = time.monotonic() + 60, 0.2
    while True:
        try:
            status = client.api.post(path, json=body).status_code
        except httpx.TransportError:
            status = 0
        answers[status] += 1
        if status not in (0, 503) or time.monotonic() > deadline:
            if on_answer is not None:
                on_answer(path, body, status)
            return status
        time.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


class Chaos:
    def __init__(
        self,
        stack: Stack,
        client: StackClient,
        pg: RestartablePostgres | None,
        nats_server: NatsServer,
        plan: Plan,
        database_fault: Callable[[], None] | None = None,
    ) -> None:
        """`database_fault`: what a "pg" fault does instead of a crash-restart in place
        (the HA soak loses the primary's machine: sandbox/soak_ha.py)."""
        self.stack, self.client, self.pg, self.nats, self.plan = (
            stack,
            client,
            pg,
            nats_server,
            plan,
        )
        self.rng = random.Random(plan.seed + 1)
        self.kills = self.pg_restarts = self.webhooks_resent = self.unexpected_exits = 0
        self.api_kills = self.kills_skipped = 0
        self.cancels = 0  # set by the caller from submit_all
        self.config = ConfigChanges(stack, client, random.Random(plan.seed + 3))
        self.database_fault = database_fault or self._crash_postgres
        self._killed: set[int] = set()
        self._supervising = threading.Event()
        self._supervising.set()
        self._resending = True
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)

    def schedule(self) -> list[tuple[float, str]]:
        """(seconds from the start, fault), drawn from the seed."""
        spread = self.plan.spread_s
        faults = [
            (spread * (k + 1) / (self.plan.pg_restarts + 1), "pg")
            for k in range(self.plan.pg_restarts)
        ]
        faults.append((spread * 0.4, "nats"))
        faults += [(spread * 0.25, "config"), (spread * 0.65, "config")]
        t = self.rng.uniform(1, self.plan.kill_every_s)
        while t < spread:
            faults.append((t, "kill"))
            t += self.rng.uniform(0.5, 1.5) * self.plan.kill_every_s
        return sorted(faults)

    def run(self) -> None:
        self.client.set_ledger_faults(
            error_rate=self.plan.ledger_fault_rate,
            error_after_rate=self.plan.ledger_fault_rate,
            seed=self.plan.seed,
        )
        self._supervisor.start()
        resender = threading.Thread(target=self._resend_webhooks, name="resender", daemon=True)
        resender.start()
        started = time.monotonic()
        outage: threading.Thread | None = None
        for at, fault in self.schedule():
            late = time.monotonic() - (started + at)
            time.sleep(max(0.0, -late))
            if fault == "kill":
                at_the_api = self.rng.random() < 1 / 3  # drawn even when skipped: same seed
                if late > self.plan.kill_every_s:
                    # Due while a database fault held the schedule (a failover waits for
                    # its cluster): dropped, never fired in a bunch.
                    self.kills_skipped += 1
                elif at_the_api:
                    self._kill_the_api()
                else:
                    self._kill_a_worker()
            elif fault == "pg":
                self.database_fault()
                self.pg_restarts += 1
            elif fault == "config":
                self.config.change()
            else:
                outage = threading.Thread(target=self._nats_outage, name="nats-outage")
                outage.start()
        if outage is not None:
            outage.join()
        self._resending = False
        resender.join()

    def stop_supervising(self) -> None:
        self._supervising.clear()
        self._supervisor.join()

    def _kill_a_worker(self) -> None:
        live = [p for p in self.stack.worker_procs if p.poll() is None]
        if live:
            victim = self.rng.choice(live)
            self._killed.add(victim.pid)
            victim.send_signal(signal.SIGKILL)
            self.kills += 1

    def _kill_the_api(self) -> None:
        """The API runs the steps of the withdrawals it accepts: SIGKILL it mid-step."""
        try:
            self.stack.restart_api()
        except TimeoutError:  # the database may be down right now; it comes up later
            return
        self.api_kills += 1

    def _crash_postgres(self) -> None:
        assert self.pg is not None, "a crash-restart needs the soak's own PostgreSQL"
        self.pg.crash()
        time.sleep(self.plan.pg_down_s)  # the outage itself
        self.pg.start()

    def _nats_outage(self) -> None:
        self.nats.stop()
        time.sleep(self.plan.nats_down_s)  # the outage itself
        self.nats.start()

    def _supervise(self) -> None:
        """Start a replacement for every worker that exited; count the ones we did not kill."""
        while self._supervising.is_set():
            for proc in list(self.stack.worker_procs):
                if proc.poll() is None:
                    continue
                self.stack.worker_procs.remove(proc)
                self.stack.stopped.append(proc)
                if proc.pid not in self._killed:
                    self.unexpected_exits += 1
                self.stack.start_worker(wait=False)
            time.sleep(0.2)  # polling the processes, not synchronising

    def _resend_webhooks(self) -> None:
        """Stale 'pending' or duplicate webhooks for orders the providers hold."""
        rng = random.Random(self.plan.seed + 2)
        while self._resending:
            try:
                orders = list(self.client.provider_orders().values())
                for order in rng.sample(orders, min(5, len(orders))):
                    status = "pending" if rng.random() < 0.5 else order["status"]
                    self.client.send_webhook(order["provider"], order["reference"], status)
                    self.webhooks_resent += 1
            except httpx.HTTPError:
                pass  # the sandbox itself may be waiting on the database
            time.sleep(1.0)
