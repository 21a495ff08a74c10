"""The baselines as bench/throughput.py drives them.

`BaselineIO`, the equal-I/O one (baseline_io.py): its own database, its own
sandbox (ledger in a database of its own, the instant provider with its
webhooks sent to the baseline's API), its API process and N workers; the load
comes from the same submitter as the service's. `Baseline`, the one without
I/O (baseline.py): submitted in this process, which stands for its API.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import procrastinate
import psycopg
from procrastinate.schema import SchemaManager
from psycopg_pool import AsyncConnectionPool

from benchlib import baseline, load, sql
from benchlib.baseline_io import SCHEMA, TOKEN
from benchlib.servicestack import fresh
from devstack.embedded import PROJECT_ROOT
from sandbox.stack import ProviderSpec, Stack, _healthy, wait_until

SCRIPT = Path(__file__).resolve().parent / "baseline_io.py"


class BaselineIO:
    name, database = "base-io", "bench_baseline_io"
    done_query = "SELECT count(*) FROM io_tasks WHERE done_at IS NOT NULL"
    latency_query = (
        "SELECT extract(epoch FROM done_at - created_at) FROM io_tasks"
        " WHERE done_at IS NOT NULL AND order_id LIKE '{prefix}-%'"
    )

    def start(self, workers: int) -> None:
        self.url = fresh(self.database, schema=False)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(SchemaManager.get_schema())
            conn.execute(SCHEMA)
        work = Path(tempfile.mkdtemp(prefix="bench-io-"))
        # The service's own sandbox configuration, its webhooks sent to our API.
        spec = ProviderSpec("instant", behaviour="instant", webhook_delay_ms=0)
        stack = Stack(self.url, work, [spec])
        stack.write_configs()
        self.api_url = stack.api_url
        ledger = fresh("bench_ledger", schema=False)
        self.procs = [
            self._spawn(
                work,
                "sandbox",
                "-m",
                "sandbox",
                "--config",
                str(work / "sandbox.toml"),
                "--port",
                str(stack.sandbox_port),
                "--database-url",
                ledger,
                "--log-level",
                "warning",
            ),
        ]
        wait_until(functools.partial(_healthy, stack.sandbox_url), 30, "the sandbox")
        secret = stack.secrets["instant"]
        port = str(stack.api_port)
        self.procs.append(self._spawn(work, "api", str(SCRIPT), "api", self.url, port, secret))
        wait_until(self._answers, 30, "the baseline's API")
        self.workers = [
            self._spawn(
                work, f"worker-{i}", str(SCRIPT), "worker", self.url, stack.sandbox_url, "8"
            )
            for i in range(workers)
        ]
        self.procs += self.workers

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/", timeout=1).status_code == 404
        except httpx.HTTPError:  # not listening yet
            return False

    @staticmethod
    def _spawn(work: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (work / f"{name}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, *args], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _submit(self, prefix: str) -> load.Submit:
        return load.submitter(self.api_url, TOKEN, prefix, "instant")

    def burst(self, prefix: str, count: int) -> None:
        load.burst(self._submit(prefix), count)

    def steady(self, prefix: str, rate: float, seconds: float) -> int:
        return load.steady(self._submit(prefix), rate, seconds)

    def pids(self) -> tuple[list[int], list[int]]:
        return [self.procs[1].pid], [p.pid for p in self.workers]


class Baseline:
    name, database = "base-noio", "bench_baseline"
    done_query = "SELECT count(*) FROM base_tasks WHERE state = 'SUCCEEDED'"
    latency_query = (
        "SELECT extract(epoch FROM done_at - created_at) FROM base_tasks"
        " WHERE done_at IS NOT NULL AND created_at >= (SELECT at FROM base_marks"
        " WHERE name = '{prefix}')"
    )

    def start(self, workers: int) -> None:
        self.url = fresh(self.database, schema=False)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(procrastinate.schema.SchemaManager.get_schema())
            conn.execute(baseline.SCHEMA)
            conn.execute("CREATE TABLE base_marks (name text, at timestamptz)")
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve().parent / "baseline.py"),
                    self.url,
                    "8",
                ]
            )
            for _ in range(workers)
        ]

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=30)

    async def _send(self, count: int, rate: float | None) -> None:
        app = baseline.build_app(self.url)
        pool: baseline.Pool = AsyncConnectionPool(self.url, open=False, max_size=16)
        await pool.open()
        async with app.open_async():
            slots, begin = asyncio.Semaphore(16), time.monotonic()

            async def one(i: int) -> None:
                if rate:
                    await asyncio.sleep(max(0.0, begin + i / rate - time.monotonic()))
                async with slots:
                    await baseline.submit(pool, app)

            await asyncio.gather(*(one(i) for i in range(count)))
        await pool.close()

    def burst(self, prefix: str, count: int) -> None:
        asyncio.run(self._send(count, None))

    def steady(self, prefix: str, rate: float, seconds: float) -> int:
        sql(self.url, "INSERT INTO base_marks VALUES (%s, now())", params=(prefix,))
        asyncio.run(self._send(int(rate * seconds), rate))
        return int(rate * seconds)

    def pids(self) -> tuple[list[int], list[int]]:
        return [os.getpid()], [p.pid for p in self.procs]  # the submitter stands for the API
