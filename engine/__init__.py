"""The imperative shell: runs workflow definitions durably on PostgreSQL.

It knows no withdrawal: it runs any `workflows.core.WorkflowDefinition`, in the
tables the definition's `Storage` names, and reaches the shell only through the
hooks it is lent (tests/test_layers.py, tests/test_toy_workflow.py).

The kernel:
- `engine.engine`: `Engine` (`apply`, `apply_timer`, `cancel_queue`,
  `activate`), `EngineHooks` (context, clock, admission, listeners);
- `engine.journal`: the audit and outbox rows of each transition;
- `engine.queue_rule`: the definition's queue rule, carried out;
- `engine.contracts`: errors (`StaleEvent`, `UnknownTask`, `QueueFinished`,
  `Transient`), `Origin`, `Applied`, and what the shell provides (`Scheduler`,
  `Admission`, `TransitionListener`, `FinishListener`, `OutcomeNotice`, `ShellJob`);
- `engine.commit_hooks`: work that waits for the commit; `engine.rows`: typed rows.

The runtime:
- `engine.steps`: `Runtime`, one per process (activities, timers, outcomes);
- `engine.scheduler`, `engine.inline`: where the next step runs;
- `engine.jobs` (`build_app`), `engine.timers`, `engine.wakeups`, `engine.retry`,
  `engine.sweep`, `engine.deadletters`;
- `engine.db`, `engine.migrations`, `engine.startup`, `engine.logs`,
  `engine.metrics`, `engine.tracing`: the process's database, schema, start-up
  checks and observability.
"""
