"""bench/volume.py's report: each figure for both databases side by side, and the
verdict against issue 23's targets."""

from __future__ import annotations

from typing import Any

from benchlib import forensics, volume_probe


def report(empty: dict[str, Any], full: dict[str, Any], fill: dict[str, Any]) -> bool:
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, e: Any, f: Any, ratio: str = "") -> None:
        rows.append((label, _fmt(e), _fmt(f), ratio))

    row("withdrawals in the database before the load", 0, fill["withdrawals"])
    row("audit rows in the database before the load", 0, fill["events"])
    for side in (empty, full):
        sent, measured, errors, unfinished = side["load"]
        side["load_text"] = f"{sent} sent, {measured} measured, {errors} refused" + (
            f", {unfinished} not final" if unfinished else ""
        )
    row("steady load", empty["load_text"], full["load_text"])
    for key, label in (("p50", "p50"), ("p95", "p95"), ("p99", "p99")):
        row(
            f"submit -> SUCCEEDED {label}, ms", empty[key], full[key], _ratio(full[key], empty[key])
        )
    for side in (empty, full):
        side["by_round"] = "/".join(f"{r[4]:.0f}" for r in side["rounds"])
        side["avg_text"] = "/".join(f"{a:.1f}" for a in side["loadavg"])
    row("  p95 of each round, ms", empty["by_round"], full["by_round"])
    row("  machine load average after each round", empty["avg_text"], full["avg_text"])
    if "prewarmed" in full:
        mib = [side.get("prewarmed", 0) / 2**20 for side in (empty, full)]
        row("  hot indexes read into the page cache first, MiB", f"{mib[0]:,.0f}", f"{mib[1]:,.0f}")
    for side in (empty, full):
        n = side["counted"]
        top = max(side["seq_rows"].items(), key=lambda kv: kv[1], default=("-", 0))
        side["seq_text"] = f"{sum(side['seq_rows'].values()) / n:,.0f} (most: {top[0]})"
    row(
        "  database blocks read past shared buffers, per withdrawal",
        empty["blks_read"] / empty["counted"],
        full["blks_read"] / full["counted"],
        _ratio(full["blks_read"] / full["counted"], empty["blks_read"] / empty["counted"]),
    )
    row("  rows read by sequential scans, per withdrawal", empty["seq_text"], full["seq_text"])
    row(
        "  WAL per withdrawal, KiB (the whole server's)",
        empty["wal"] / empty["counted"] / 1024,
        full["wal"] / full["counted"] / 1024,
        _ratio(full["wal"] / full["counted"], empty["wal"] / empty["counted"]),
    )
    row(
        "submit (HTTP) p99, ms",
        empty["http99"],
        full["http99"],
        _ratio(full["http99"], empty["http99"]),
    )
    slow: list[forensics.Timing] = []
    for e, f in zip(empty["queries"], full["queries"], strict=True):
        q = f.query
        label = f"ops.md:{q.line} {q.text[:44]}"
        if f.note or e.note:
            row(label, e.note or e.best_ms, f.note or f.best_ms)
            continue
        mark = " (seq scan)" if f.seq_scans else ""
        row(
            label,
            e.best_ms,
            f"{f.best_ms:.1f}{mark}" if f.best_ms is not None else "-",
            _ratio(f.best_ms, e.best_ms),
        )
        if f.seq_scans or (f.best_ms or 0) >= 100:
            slow.append(f)
    for side in (empty, full):
        side["month_text"] = (
            f"{side['month'].removeprefix('order_task_events_')}: {side['month_withdrawals']:,}"
            f" / {side['events_archived']:,}"
        )
        side["runs_text"] = f"{len(side['runs'])} ({len(side['errors'])} failed)"
    row(
        "retention: the month (withdrawals / audit rows archived)",
        empty["month_text"],
        full["month_text"],
    )
    row("retention under load: archiver runs", empty["runs_text"], full["runs_text"])
    row("  a day before due: the archive written ahead, s", empty["ahead_s"], full["ahead_s"])
    for side in (empty, full):
        side["a99"] = f"{side['ahead99']:.0f} (n={side['ahead_n']})"
    row(
        "  writers' p99 while it is written, ms",
        empty["a99"],
        full["a99"],
        _ratio(full["ahead99"], full["before99"]) + " of before",
    )
    row("  CPU of the archiver's process then, s", empty["ahead_cpu_s"], full["ahead_cpu_s"])
    row(
        "  then the writers caught up with the load in, s",
        empty["caught_up_s"],
        full["caught_up_s"],
    )
    row("  due: wall time, every run, s", empty["retention_s"], full["retention_s"])
    row("  the last run, s", empty["last_run_s"], full["last_run_s"])
    row("  detached -> archived (the files), s", empty["files_s"], full["files_s"])
    row(
        "  audit trail held ACCESS EXCLUSIVE (sampled), ms",
        empty["exclusive_s"] * 1000,
        full["exclusive_s"] * 1000,
    )
    row(
        "  CPU: the archiver's process / its PostgreSQL backend, s",
        f"{_fmt(empty['cpu_s'])} / {_fmt(empty['backend_cpu_s'])}",
        f"{_fmt(full['cpu_s'])} / {_fmt(full['backend_cpu_s'])}",
    )
    row(
        "retention with the stack stopped (when under load failed), s",
        empty["quiet_s"],
        full["quiet_s"],
    )
    row("  archive size, MiB", empty["archive_bytes"] / 2**20, full["archive_bytes"] / 2**20)
    for side in (empty, full):
        side["b99"] = f"{side['before99']:.0f} (n={side['before_n']})"
        side["d99"] = f"{side['during99']:.0f} (n={side['during_n']})"
    row("writers' p99 before retention, ms", empty["b99"], full["b99"])
    row(
        "writers' p99 during retention, ms",
        empty["d99"],
        full["d99"],
        _ratio(full["during99"], full["before99"]) + " of before",
    )
    row(
        "submissions refused during retention (not final after 3 min)",
        f"{empty['load_errors']} ({empty['unfinished']})",
        f"{full['load_errors']} ({full['unfinished']})",
    )
    row(
        "longest lock wait during retention, ms",
        empty["lock_wait_s"] * 1000,
        full["lock_wait_s"] * 1000,
    )
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n{'figure':<{width}}{'empty database':>38}{'full database':>38}{'full/empty':>16}")
    for label, e, f, ratio in rows:
        print(f"{label:<{width}}{e:>38}{f:>38}{ratio:>16}")
    for t in slow:
        print(f"\nEXPLAIN ANALYZE, full database, ops.md:{t.query.line} ({t.query.section}):")
        print(f"  {t.sql}")
        print("  sequential scans: " + ("; ".join(t.seq_scans) or "none"))
        for line in t.plan:
            print(f"    {line}")
    for side, name in ((empty, "empty"), (full, "full")):
        if side["lock_what"] != "none seen":
            print(f"\nlongest lock wait during retention ({name}): {side['lock_what']}")
    print("\nthe steady rounds (benchlib/volume_probe.py):")
    print("\n".join(volume_probe.tell(empty, full)))
    for side, name in ((empty, "empty"), (full, "full")):
        print(f"\nwhat the writers waited on, {name} database:")
        print("\n".join(side["stalls"]))
    for side, name in ((empty, "empty"), (full, "full")):
        for error in side["errors"]:
            print(f"retention on the {name} database: an archiver run failed: {error}")
        print(f"retention on the {name} database, each archiver run: {side['runs']}")
        if "quiet_runs" in side:
            print(f"  then with the stack stopped: {side['quiet_runs']}")
        if side["waiting"]:
            print(f"retention on the {name} database: the month waits: {side['waiting']}")
    return verdict(empty, full, slow)


def verdict(empty: dict[str, Any], full: dict[str, Any], slow: list[forensics.Timing]) -> bool:
    over = [t for t in full["queries"] if t.best_ms is not None and t.best_ms >= 100]
    failed = [t for t in full["queries"] if t.note.startswith("failed")]
    checks = [
        (
            f"p95 submit -> SUCCEEDED within 20% of the empty database's:"
            f" {full['p95']:.0f} vs {empty['p95']:.0f} ms",
            full["p95"] <= 1.2 * empty["p95"],
        ),
        (
            f"every runbook query under 100 ms on the full database: {len(over)} over"
            + (f" ({', '.join(f'ops.md:{t.query.line}' for t in over)})" if over else "")
            + (f", {len(failed)} failed" if failed else ""),
            not over and not failed,
        ),
        (
            f"retention of one month under 5 s: {full['retention_s']:.1f} s"
            + (f", {len(full['errors'])} run(s) failed first" if full["errors"] else ""),
            full["retention_s"] < 5 and bool(full["archived"]) and not full["errors"],
        ),
        (
            f"writers' p99 during retention within 2x of before, none refused:"
            f" {full['during99']:.0f} vs {full['before99']:.0f} ms, {full['load_errors']} refused",
            full["during99"] <= 2 * full["before99"] and not full["load_errors"],
        ),
        (
            f"writers' p99 while the archive is written ahead within 2x of before:"
            f" {full['ahead99']:.0f} vs {full['before99']:.0f} ms",
            full["ahead99"] <= 2 * full["before99"],
        ),
        (
            f"no lock wait over 1 s during retention: longest {full['lock_wait_s'] * 1000:.0f} ms",
            full["lock_wait_s"] <= 1.0,
        ),
    ]
    print("\nverdict:")
    for text, ok in checks:
        print(f"  {'OK  ' if ok else 'FAIL'} {text}")
    ok = all(good for _, good in checks)
    print(f"verdict: {'OK' if ok else 'FAIL'}")
    return ok


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.1f}"  # nan: not measured
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b and a == a and b == b else ""
