"""A model of one withdrawal queue of three tasks, driven in memory the way the engine drives it.

The model mirrors engine/engine.py and engine/jobs.py without a database:
- an event is applied with `decide`; follow-ups are applied at once, recursively;
- a state that changed is stored (dump/load round trip) and its version bumped;
- after a top-level event changed a task's status, the queue rule runs and its
  Stop/Start events are applied to the chosen tasks;
- `RunActivity` becomes a job carrying an activity token (the task version it
  was issued at), which becomes the task's awaited token. A job whose token is no
  longer awaited does nothing; results of attempts (freeze, create_order,
  check_status) are dropped unless their token is still awaited; ledger facts
  (commit, release) always apply, and a misfit fails the job. Applying a result
  consumes its token. A job runs in two steps (start, result) so that other events
  can come in between;
- create_order first returns OrderSubmitting (the definition then issues the
  create call again) and, once the row says order_submitted, sends the order;
- `StartTimer` becomes a pending timer, delivered later (possibly twice, or a
  superseded one).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from workflows.core import (
    Alert,
    Event,
    FollowUp,
    IllegalTransition,
    RunActivity,
    StartTimer,
    TaskView,
)
from workflows.withdrawal import decide
from workflows.withdrawal_definition import WITHDRAWAL, queue_decide
from workflows.withdrawal_events import (
    TERMINAL,
    Cancel,
    Funds,
    FundsCommitted,
    FundsFrozen,
    FundsInsufficient,
    FundsReleased,
    ManualResolved,
    OrderAccepted,
    OrderAmbiguous,
    OrderDeclined,
    OrderSubmitting,
    ProviderFailed,
    ProviderNotFound,
    ProviderPending,
    ProviderSucceeded,
    QueueStatus,
    Start,
    StatusUnknown,
    Stop,
    TaskState,
    TaskStatus,
    Timer,
    TimerFired,
    Timing,
)

S = TaskStatus
MAX_FOLLOW_UPS = 8  # engine.MAX_FOLLOW_UPS
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
REF = "prov-ref"
TIMINGS = [
    Timing(recheck_max_attempts=2),
    Timing(
        recheck_max_attempts=1,
        poll_interval=timedelta(seconds=30),
        status_timeout=timedelta(minutes=2),
    ),
]
LEDGER_FACTS: dict[str, Event] = {"commit": FundsCommitted(), "release": FundsReleased()}
# Results an attempt may come back with (repeats weight the happier ones).
ATTEMPT_RESULTS: dict[str, list[Event]] = {
    "freeze": [FundsFrozen(), FundsInsufficient(), FundsFrozen()],
    "create_order": [
        OrderAccepted(REF),
        OrderAccepted(REF, paid=True),
        OrderDeclined("limit_exceeded"),
        OrderAmbiguous("timeout"),
        OrderAccepted(REF),
    ],
    "check_status": [
        ProviderSucceeded(REF),
        ProviderSucceeded(None),
        ProviderFailed("rejected"),
        ProviderPending(REF),
        ProviderNotFound(),
        StatusUnknown("http_503"),
    ],
}
OBSERVATIONS = ATTEMPT_RESULTS["check_status"]
RARE = 6
FINAL_QUEUE = {QueueStatus.COMPLETED, QueueStatus.FAILED, QueueStatus.CANCELLED}


@dataclass
class Job:
    task: int
    activity: str
    token: int  # the task version the activity was issued at
    running: bool = False  # passed its token check; the call may have been made
    sends: bool = False  # create_order: the row said order_submitted, so it sends


@dataclass(frozen=True)
class PendingTimer:
    task: int
    kind: Timer
    due_at: datetime


@dataclass
class Queue:
    tasks: list[TaskState]
    positions: list[int]
    versions: list[int] = field(default_factory=lambda: [1, 1, 1])
    tokens: list[int | None] = field(default_factory=lambda: [None, None, None])
    status: QueueStatus = QueueStatus.ACTIVE
    cancel_requested: bool = False
    jobs: list[Job] = field(default_factory=list)
    timers: list[PendingTimer] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)  # task of every commit requested
    alerts: list[tuple[int, Alert]] = field(default_factory=list)
    now: datetime = T0

    def by_position(self) -> list[int]:
        return sorted(range(len(self.tasks)), key=lambda i: self.positions[i])


def new_queue(positions: list[int] | None = None, timings: list[Timing] | None = None) -> Queue:
    timings = timings or [Timing()] * 3
    queue = Queue([TaskState(S.PENDING, timing=t) for t in timings], positions or [1, 2, 3])
    run_queue_rule(queue)  # Engine.activate
    return queue


# The engine, in memory -------------------------------------------------------------------
def apply(
    queue: Queue,
    task: int,
    event: Event,
    depth: int = 0,
    result_of: tuple[int, bool] | None = None,
) -> bool:
    """Engine._apply_locked. `result_of` is (token, strict) for an activity result.

    Returns False for a stale result. IllegalTransition propagates before anything
    is written (the engine rolls its transaction back).
    """
    if result_of is not None:
        token, strict = result_of
        if strict and queue.tokens[task] != token:
            return False
    state = queue.tasks[task]
    new, commands = decide(state, event, queue.now)
    if result_of is not None and queue.tokens[task] == result_of[0]:
        queue.tokens[task] = None  # the awaited result has come
    if new != state:
        stored = WITHDRAWAL.load(WITHDRAWAL.dump(new), state.timing)
        assert stored == new
        queue.tasks[task] = stored
        queue.versions[task] += 1
    for command in commands:
        if isinstance(command, FollowUp):
            assert depth < MAX_FOLLOW_UPS, "follow-up chain too long"
            apply(queue, task, command.event, depth + 1)
        elif isinstance(command, RunActivity):
            queue.tokens[task] = queue.versions[task]
            queue.jobs.append(Job(task, command.activity, queue.versions[task]))
            if command.activity == "commit":
                queue.commits.append(task)
        elif isinstance(command, Alert):
            queue.alerts.append((task, command))
        elif isinstance(command, StartTimer):
            queue.timers.append(PendingTimer(task, Timer(command.kind), command.due_at))
        else:
            raise AssertionError(f"version 1 never asks for {command}")
    if depth == 0 and queue.tasks[task].status != state.status:
        run_queue_rule(queue)
    return True


def run_queue_rule(queue: Queue) -> None:
    views = [TaskView(str(i), queue.positions[i], str(t.status)) for i, t in enumerate(queue.tasks)]
    decision = queue_decide(queue.status, queue.cancel_requested, views)
    for task_id in decision.stop:
        apply(queue, int(task_id), Stop(), depth=1)
    if decision.status is not None:
        queue.status = QueueStatus(decision.status)
    for task_id in decision.start:
        apply(queue, int(task_id), Start(), depth=1)


def cancel_queue(queue: Queue) -> None:
    """Engine.cancel_queue: refused once final; Cancel to every open task, then the rule."""
    if queue.status != QueueStatus.ACTIVE:
        return
    queue.cancel_requested = True
    for task in queue.by_position():
        if queue.tasks[task].status not in TERMINAL:
            apply(queue, task, Cancel("ops", "user asked"), depth=1)
    run_queue_rule(queue)


def run_job(queue: Queue, index: int, outcome: int) -> str:
    """One step of jobs.run_activity: first the token check, then the result."""
    job = queue.jobs[index]
    if not job.running:
        if queue.tokens[job.task] != job.token:
            del queue.jobs[index]
            return "stale"
        job.running = True  # the call is made from here on
        job.sends = queue.tasks[job.task].order_submitted
        return "started"
    if job.activity in LEDGER_FACTS:
        event, strict = LEDGER_FACTS[job.activity], False  # a fact: always applied
    elif job.activity == "create_order" and not job.sends:
        event, strict = OrderSubmitting(), True
    else:
        results = ATTEMPT_RESULTS[job.activity]
        event, strict = results[outcome % len(results)], True
    applied = apply(queue, job.task, event, result_of=(job.token, strict))
    del queue.jobs[index]
    return "applied" if applied else "stale"


def finish_next_job(queue: Queue, outcome: int = 0) -> str:
    """Run the oldest job to its end."""
    job = queue.jobs[0]
    step = run_job(queue, 0, outcome)
    if step == "started":
        assert queue.jobs[0] is job
        step = run_job(queue, 0, outcome)
    return step


def deadline(state: TaskState, kind: Timer) -> datetime | None:
    return {
        Timer.WEBHOOK_TIMEOUT: state.webhook_deadline,
        Timer.STATUS_TIMEOUT: state.status_deadline,
        Timer.STATUS_POLL: state.next_check_at,
        Timer.RECHECK: state.next_check_at,
    }[kind]


def has_way_forward(queue: Queue, task: int) -> bool:
    """Some job or timer still outstanding can move the task without outside help."""
    state = queue.tasks[task]
    for job in queue.jobs:
        if job.task == task and (
            job.token == queue.tokens[task] or (job.running and job.activity in LEDGER_FACTS)
        ):
            return True
    return state.target is None and any(
        t.task == task and t.due_at == deadline(state, t.kind) for t in queue.timers
    )


def settle(queue: Queue, limit: int = 60) -> None:
    """Let every outstanding job and timer run with its first outcome, earliest first."""
    for _ in range(limit):
        if queue.jobs:
            finish_next_job(queue)
        elif queue.timers:
            timer = min(queue.timers, key=lambda t: t.due_at)
            queue.timers.remove(timer)
            queue.now = max(queue.now, timer.due_at)
            apply(queue, timer.task, TimerFired(timer.kind, timer.due_at))
        else:
            return


def live(queue: Queue) -> list[int]:
    return [
        i for i, t in enumerate(queue.tasks) if t.status != S.PENDING and t.status not in TERMINAL
    ]


# The state machine -------------------------------------------------------------------------
@settings(
    derandomize=True,  # the same runs every time
    database=None,
    max_examples=300,
    stateful_step_count=100,
    deadline=None,
)
class WithdrawalQueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.queue = Queue([TaskState(S.PENDING)] * 3, [1, 2, 3])
        self.started = False
        self.final: Queue | None = None
        self.last_now = T0

    @initialize(
        positions=st.permutations([1, 2, 3]),
        timings=st.lists(st.sampled_from(TIMINGS), min_size=3, max_size=3),
    )
    def activate(self, positions: list[int], timings: list[Timing]) -> None:
        self.queue = new_queue(list(positions), timings)
        self.started = True
        first = self.queue.by_position()[0]
        assert [t.status for t in self.queue.tasks].count(S.CREATING) == 1
        assert self.queue.tasks[first].status == S.CREATING

    def transaction(self, action: Callable[[Queue], object]) -> bool:
        """Run an action; an IllegalTransition must leave everything as it was."""
        before = copy.deepcopy(self.queue)
        try:
            action(self.queue)
        except IllegalTransition:
            assert self.queue == before, "an illegal event left changes behind"
            return False
        return True

    # Jobs -----------------------------------------------------------------------------------
    @precondition(lambda self: self.queue.jobs)
    @rule(steps=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 11)), min_size=1, max_size=3))
    def run_jobs(self, steps: list[tuple[int, int]]) -> None:
        for pick, outcome in steps:
            if self.queue.jobs:
                self.run_one_job(pick % len(self.queue.jobs), outcome)

    def run_one_job(self, index: int, outcome: int) -> None:
        job = self.queue.jobs[index]
        if not self.transaction(lambda q: run_job(q, index, outcome)):
            # Only a ledger fact may not fit (a redelivered job whose twin already
            # settled the task). The job fails, is not retried, and changed nothing.
            assert job.running and job.activity in LEDGER_FACTS, f"{job} did not fit"
            del self.queue.jobs[index]

    @precondition(lambda self: self.queue.jobs)
    @rule(pick=st.integers(0, 20))
    def redeliver_a_job(self, pick: int) -> None:
        job = self.queue.jobs[pick % len(self.queue.jobs)]
        self.queue.jobs.append(Job(job.task, job.activity, job.token))

    # Timers ---------------------------------------------------------------------------------
    @precondition(lambda self: self.queue.timers)
    @rule(pick=st.integers(0, 20), shift=st.sampled_from([0, 0, 0, -1, 1]), again=st.booleans())
    def fire_a_timer(self, pick: int, shift: int, again: bool) -> None:
        timer = self.queue.timers[pick % len(self.queue.timers)]
        if shift == 0 and not again:
            self.queue.timers.remove(timer)
        due = timer.due_at + shift * SECOND
        self.queue.now = max(self.queue.now, due)
        state = self.queue.tasks[timer.task]
        stale = due != deadline(state, timer.kind)
        counts = self.outstanding()
        applied = self.transaction(lambda q: apply(q, timer.task, TimerFired(timer.kind, due)))
        if stale and applied:
            assert self.queue.tasks[timer.task] == state, "a stale timer moved the task"
            assert self.outstanding() == counts, "a stale timer produced commands"

    @rule(seconds=st.integers(1, 900))
    def let_time_pass(self, seconds: int) -> None:
        self.queue.now += seconds * SECOND

    # Outside world --------------------------------------------------------------------------
    @rule(task=st.integers(0, 2), observation=st.sampled_from(OBSERVATIONS))
    def provider_webhook(self, task: int, observation: Event) -> None:
        self.transaction(lambda q: apply(q, task, observation))

    @precondition(lambda self: any(t.status == S.MANUAL_CHECK for t in self.queue.tasks))
    @rule(pick=st.integers(0, 2), positive=st.booleans())
    def operator_resolves(self, pick: int, positive: bool) -> None:
        manual = [i for i, t in enumerate(self.queue.tasks) if t.status == S.MANUAL_CHECK]
        task = manual[pick % len(manual)]
        event = ManualResolved(positive, "alice", "bank statement")
        self.transaction(lambda q: apply(q, task, event))

    # Cancellation ends most of the story, so it only happens on one roll in RARE.
    @rule(roll=st.integers(0, RARE - 1))
    def cancel_the_withdrawal(self, roll: int) -> None:
        if roll == 0:
            cancel_queue(self.queue)  # Cancel fits every open task: nothing to catch

    @rule(task=st.integers(0, 2), roll=st.integers(0, RARE - 1))
    def cancel_one_task(self, task: int, roll: int) -> None:
        if roll == 0:
            self.transaction(lambda q: apply(q, task, Cancel("ops", "skip provider")))

    # Invariants -----------------------------------------------------------------------------
    def outstanding(self) -> tuple[int, int, int]:
        return len(self.queue.jobs), len(self.queue.timers), len(self.queue.alerts)

    @invariant()
    def time_only_moves_forward(self) -> None:
        assert self.queue.now >= self.last_now
        self.last_now = self.queue.now

    @invariant()
    def only_provider_conflicts_are_alerted(self) -> None:
        assert all(alert.kind == "provider_conflict" for _, alert in self.queue.alerts)

    @invariant()
    def at_most_one_live_task(self) -> None:
        assert len(live(self.queue)) <= 1, self.queue.tasks

    @invariant()
    def an_active_queue_has_exactly_one_live_task(self) -> None:
        if self.started and self.queue.status == QueueStatus.ACTIVE:
            assert len(live(self.queue)) == 1, self.queue.tasks

    @invariant()
    def at_most_one_hold_frozen_or_committed(self) -> None:
        held = [t for t in self.queue.tasks if t.funds in (Funds.FROZEN, Funds.COMMITTED)]
        assert len(held) <= 1, self.queue.tasks

    @invariant()
    def at_most_one_success(self) -> None:
        assert [t.status for t in self.queue.tasks].count(S.SUCCEEDED) <= 1

    @invariant()
    def funds_match_status(self) -> None:
        for task in self.queue.tasks:
            if task.status == S.SUCCEEDED:
                assert task.funds == Funds.COMMITTED, task
            elif task.status in TERMINAL:
                assert task.funds in (Funds.NONE, Funds.RELEASED), task
            elif task.status == S.PENDING:
                assert task.funds == Funds.NONE and task.target is None, task

    @invariant()
    def a_task_whose_order_may_exist_is_never_cancelled(self) -> None:
        # Releasing it blindly could pay twice; it must run to its own end.
        for task in self.queue.tasks:
            if task.order_submitted:
                assert task.status != S.CANCELLED and task.target != S.CANCELLED, task

    @invariant()
    def commit_requested_at_most_once(self) -> None:
        assert len(self.queue.commits) <= 1, self.queue.commits

    @invariant()
    def queue_status_matches_tasks(self) -> None:
        statuses = [t.status for t in self.queue.tasks]
        if self.queue.status == QueueStatus.COMPLETED:
            assert S.SUCCEEDED in statuses
        if self.queue.status in FINAL_QUEUE:
            assert all(s in TERMINAL for s in statuses), statuses
        if self.queue.status in (QueueStatus.FAILED, QueueStatus.CANCELLED):
            assert S.SUCCEEDED not in statuses
        if self.queue.status == QueueStatus.CANCELLED:
            assert self.queue.cancel_requested

    @invariant()
    def final_queue_never_changes(self) -> None:
        if self.final is not None:
            assert self.queue.status == self.final.status
            assert self.queue.tasks == self.final.tasks
            assert self.queue.versions == self.final.versions
        elif self.queue.status in FINAL_QUEUE:
            self.final = copy.deepcopy(self.queue)

    @invariant()
    def live_task_can_move_on_its_own(self) -> None:
        # Exempt: a MANUAL_CHECK task with nothing asked for waits for a person.
        for task in live(self.queue):
            state = self.queue.tasks[task]
            if state.status == S.MANUAL_CHECK and state.target is None:
                continue
            assert has_way_forward(self.queue, task), (state, self.queue.jobs, self.queue.timers)


def test_withdrawal_queue_machine() -> None:
    assert WithdrawalQueueMachine.TestCase.settings.derandomize
    run_state_machine_as_test(WithdrawalQueueMachine)  # with the class's own settings


# Scripted runs of the same model ---------------------------------------------------------------
def test_happy_path_completes_and_stops_the_rest() -> None:
    queue = new_queue()
    settle(queue)
    assert queue.status == QueueStatus.COMPLETED
    assert [t.status for t in queue.tasks] == [S.SUCCEEDED, S.CANCELLED, S.CANCELLED]
    assert [t.funds for t in queue.tasks] == [Funds.COMMITTED, Funds.NONE, Funds.NONE]
    assert queue.commits == [0]


def test_declines_cascade_to_the_next_provider_by_position() -> None:
    queue = new_queue(positions=[3, 1, 2])
    assert queue.tasks[1].status == S.CREATING
    for outcome in (0, 2, 0):  # frozen (submitting in its transaction), declined, released
        assert finish_next_job(queue, outcome) == "applied"
    assert queue.tasks[1].status == S.SKIPPED  # type: ignore[comparison-overlap]  # mutated
    assert queue.tasks[2].status == S.CREATING  # position 2 is next
    settle(queue)
    assert queue.status == QueueStatus.COMPLETED
    assert [t.status for t in queue.tasks] == [S.CANCELLED, S.SKIPPED, S.SUCCEEDED]


def test_cancel_before_any_order_cancels_the_queue() -> None:
    queue = new_queue()
    cancel_queue(queue)  # the freeze is still queued: superseded by the release
    settle(queue)
    assert queue.status == QueueStatus.CANCELLED
    assert [t.status for t in queue.tasks] == [S.CANCELLED] * 3
    assert queue.tasks[0].funds == Funds.RELEASED
    assert queue.commits == []


def test_result_of_a_superseded_attempt_is_dropped() -> None:
    queue = new_queue()
    run_job(queue, 0, 0)  # the freeze call is made
    cancel_queue(queue)  # before order_submitted: release instead
    assert finish_next_job(queue, 0) == "stale"  # FundsFrozen is no longer awaited
    assert queue.tasks[0].funds == Funds.NONE


def test_redelivered_ledger_job_fails_without_changing_anything() -> None:
    queue = new_queue()
    _commit_queued(queue)
    twin = Job(0, "commit", queue.jobs[0].token)
    run_job(queue, 0, 0)
    queue.jobs.append(twin)
    run_job(queue, 1, 0)  # both calls made before either result is applied
    assert finish_next_job(queue) == "applied"
    before = copy.deepcopy(queue)
    with pytest.raises(IllegalTransition):
        run_job(queue, 0, 0)  # FundsCommitted again, on a SUCCEEDED task
    assert queue == before
    assert queue.commits == [0]


def _declined_release_queued(queue: Queue) -> None:
    for outcome in (0, 2):  # frozen (submitting in its transaction), declined
        finish_next_job(queue, outcome)


def _commit_queued(queue: Queue) -> None:
    for outcome in (0, 0):  # frozen (submitting in its transaction), accepted
        finish_next_job(queue, outcome)
    apply(queue, 0, ProviderSucceeded(REF))


def _create_in_flight(queue: Queue) -> None:
    finish_next_job(queue)  # frozen, and order_submitting recorded with it
    run_job(queue, 0, 0)  # the create call is on its way


def _fire_the_only_timer(queue: Queue) -> None:
    [timer] = queue.timers
    queue.timers.clear()
    queue.now = timer.due_at
    apply(queue, 0, TimerFired(timer.kind, timer.due_at))


def _recheck_in_flight(queue: Queue) -> None:
    for outcome in (0, 3):  # frozen (submitting in its transaction), ambiguous
        finish_next_job(queue, outcome)
    _fire_the_only_timer(queue)  # check_status issued
    run_job(queue, 0, 0)  # and called


def _status_check_after_sla_queued(queue: Queue) -> None:
    for outcome in (0, 0):  # frozen (submitting in its transaction), accepted
        finish_next_job(queue, outcome)
    _fire_the_only_timer(queue)  # webhook SLA: check_status issued


def _manual_commit_queued(queue: Queue) -> None:
    _status_check_after_sla_queued(queue)
    finish_next_job(queue, 3)  # check_status: still pending after the SLA
    assert queue.tasks[0].status == S.MANUAL_CHECK
    apply(queue, 0, ManualResolved(True, "alice", "bank statement"))


def _cancel_task(queue: Queue) -> None:
    apply(queue, 0, Cancel("ops", "skip provider"))


@pytest.mark.parametrize(
    ("prepare", "cancel"),
    [
        pytest.param(_declined_release_queued, cancel_queue, id="release-after-decline"),
        pytest.param(_commit_queued, cancel_queue, id="commit-after-success"),
        pytest.param(_manual_commit_queued, _cancel_task, id="commit-after-manual-positive"),
        pytest.param(_create_in_flight, cancel_queue, id="create-call"),
        pytest.param(_recheck_in_flight, cancel_queue, id="recheck-status-check"),
        pytest.param(_status_check_after_sla_queued, _cancel_task, id="sla-status-check"),
    ],
)
def test_cancel_never_strands_a_task_with_an_order(
    prepare: Callable[[Queue], None], cancel: Callable[[Queue], None]
) -> None:
    # Regression: with version guards, the cancel_requested write made the awaited
    # job stale, leaving the task non-terminal with funds FROZEN and the queue ACTIVE.
    queue = new_queue()
    prepare(queue)
    assert has_way_forward(queue, 0)
    cancel(queue)
    assert queue.tasks[0].cancel_requested
    assert has_way_forward(queue, 0)
    settle(queue)
    waiting_for_operator = any(t.status == S.MANUAL_CHECK and t.target is None for t in queue.tasks)
    assert queue.status != QueueStatus.ACTIVE or waiting_for_operator, (
        queue.tasks[0],
        queue.jobs,
        queue.timers,
    )
    assert all(t.funds != Funds.FROZEN for t in queue.tasks if t.status in TERMINAL)
