"""A whole local stack in subprocesses: the OpenID issuer, sandbox, API server and
N workers.

Used by the tests and `make demo`. Everything talks real HTTP and a real
PostgreSQL; nothing is mocked. Each process logs to a file under `workdir`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from activities.standard_webhooks import new_secret
from devstack.embedded import PROJECT_ROOT, free_port
from sandbox import issuer

ROOT = PROJECT_ROOT
API_TOKEN = "dev-api-token"  # noqa: S105 - sandbox credential
LEDGER_TOKEN = "dev-ledger-token"  # noqa: S105 - sandbox credential


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    behaviour: str = "instant"
    balance: str = "1000000.00"
    webhook_delay_ms: int = 100
    timing: dict[str, float] = field(default_factory=dict)
    market: dict[str, Any] | None = None  # behaviour "market": see sandbox/market.py
    health: dict[str, Any] | None = None  # payment-service's [providers.X.health]
    limits: dict[str, Any] | None = None  # payment-service's [providers.X.limits]


@dataclass
class Stack:
    database_url: str
    workdir: Path
    providers: Iterable[ProviderSpec]
    workers: int = 2
    currency: str = "EUR"
    extra_env: dict[str, str] = field(default_factory=dict)
    nats_url: str | None = None
    market_seed: int = 1
    worker_concurrency: int = 4
    api_port: int = field(default_factory=free_port)
    sandbox_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    stopped: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_metrics_ports: dict[int, int] = field(default_factory=dict)
    ledger_database_url: str | None = None  # the sandbox's own database (default: ours)
    # The tree whose server.py and worker.py run: an upgrade test runs a release's.
    service_root: Path = ROOT
    # People sign in at a local issuer (sandbox/issuer.py) that signs with this key,
    # which the tests may use too (tokens the issuer could have made: expired, ...).
    issuer_port: int = field(default_factory=free_port)
    issuer_key: dict[str, Any] = field(default_factory=issuer.new_private_jwk)
    console_secret: str = field(default_factory=lambda: os.urandom(16).hex())

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def issuer_url(self) -> str:
        return f"http://127.0.0.1:{self.issuer_port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "PROVIDERS_FILE": str(self.workdir / "providers.toml"),
            # Stacks may share a database (the tests'): each keeps its own live
            # configuration, seeded from its own files (service/live_config.py).
            "CONFIG_SCOPE": self.config_scope,
            "API_TOKENS": API_TOKEN,
            "OIDC_ISSUER": self.issuer_url,
            "OIDC_CLIENT_ID": issuer.CLIENT_ID,
            "OIDC_CLIENT_SECRET": issuer.CLIENT_SECRET,
            "OIDC_GROUP_ROLES": issuer.GROUP_ROLES,
            "CONSOLE_SECRET": self.console_secret,
            "LEDGER_URL": f"{self.sandbox_url}/ledger",
            "LEDGER_TOKEN": LEDGER_TOKEN,
            "CORE_CALLBACK_URL": f"{self.sandbox_url}/core",
            "CORE_CALLBACK_TOKEN": LEDGER_TOKEN,
            "WORKER_FETCH_INTERVAL_S": "0.2",
            "WORKER_HEARTBEAT_S": "1",
            "WORKER_STALLED_AFTER_S": "3",
            "MAINTENANCE_EVERY_S": "2",
            "HEALTH_EVERY_S": "1",
            "ACTIVITY_MAX_RETRIES": "4",
            "ACTIVITY_RETRY_BASE_S": "0.25",
            "ACTIVITY_RETRY_CAP_S": "2",
            "TIMER_PUMP_INTERVAL_S": "0.1",
            # a step lost with its process is resumed after this (its calls time out sooner)
            "SWEEP_GRACE_S": "8",
            "PYTHONUNBUFFERED": "1",
            **({"NATS_URL": self.nats_url} if self.nats_url else {}),
            **self.extra_env,
        }

    @property
    def config_scope(self) -> str:
        return "stack-" + hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:16]

    def write_configs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        sandbox = [
            f'webhook_url = "{self.api_url}"',
            f'ledger_token = "{LEDGER_TOKEN}"',
            f"market_seed = {self.market_seed}",
        ]
        service: list[str] = []
        for spec in self.providers:
            secret = self.secrets.setdefault(spec.name, new_secret())
            sandbox += [
                f"[providers.{spec.name}]",
                f'api_key = "sk_test_{spec.name}"',
                f'webhook_secret = "{secret}"',
                f'behaviour = "{spec.behaviour}"',
                f"webhook_delay_ms = {spec.webhook_delay_ms}",
                "hang_ms = 3000",
                f'balances = {{ {self.currency} = "{spec.balance}" }}',
                *_toml_table(f"providers.{spec.name}.market", spec.market),
            ]
            service += [
                f"[providers.{spec.name}]",
                f'base_url = "{self.sandbox_url}/providers/{spec.name}"',
                f'api_key = "sk_test_{spec.name}"',
                f'webhook_secrets = ["{secret}"]',
                "timeout_s = 1.5",
                f"[providers.{spec.name}.timing]",
                *(f"{k} = {v}" for k, v in spec.timing.items()),
                *_toml_table(f"providers.{spec.name}.health", spec.health),
                *_toml_table(f"providers.{spec.name}.limits", spec.limits),
            ]
        (self.workdir / "sandbox.toml").write_text("\n".join(sandbox) + "\n")
        (self.workdir / "providers.toml").write_text("\n".join(service) + "\n")

    def _spawn(self, name: str, *args: str, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(  # noqa: S603 - our own entry points
            [sys.executable, *args], cwd=cwd, env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def start(self) -> Stack:
        self.write_configs()
        self.start_issuer()
        self._spawn(
            "sandbox",
            "-m",
            "sandbox",
            "--config",
            str(self.workdir / "sandbox.toml"),
            "--port",
            str(self.sandbox_port),
            "--database-url",
            self.ledger_database_url or self.database_url,
        )
        wait_until(functools.partial(_healthy, self.sandbox_url), 30, "the sandbox")
        self.start_services()
        return self

    def start_issuer(self) -> None:
        key_file = self.workdir / "issuer-key.json"
        key_file.write_text(json.dumps(self.issuer_key))
        key_file.chmod(0o600)
        args = ["serve", "--port", str(self.issuer_port), "--key", str(key_file)]
        self._spawn("issuer", "-m", "sandbox.issuer", *args)
        discovery = "/.well-known/openid-configuration"
        wait_until(functools.partial(_healthy, self.issuer_url, discovery), 30, "the issuer")

    def start_services(self) -> None:
        """The API and the workers (of `service_root`)."""
        self._start_api()
        for _ in range(self.workers):
            self.start_worker()

    def stop_services(self, sig: int = signal.SIGTERM) -> None:
        """Stop the API and the workers (a deploy, or a crash with SIGKILL); the
        sandbox (ledger and providers) keeps running."""
        for proc in self.procs:
            if _is_service(proc) and proc.poll() is None:
                self.stopped.append(proc)
                proc.send_signal(sig)
        for proc in self.procs:
            if _is_service(proc):
                proc.wait(timeout=40)
        self.worker_procs.clear()

    def _start_api(self) -> None:
        self._spawn("api", "server.py", "--port", str(self.api_port), cwd=self.service_root)
        wait_until(functools.partial(_healthy, self.api_url), 30, f"{self.api_url}/healthz")

    def start_worker(self, wait: bool = True) -> subprocess.Popen[bytes]:
        """`wait`: until it serves /metrics (it waits for an unreachable database first)."""
        port = free_port()
        proc = self._spawn(
            f"worker-{len(self.worker_procs)}",
            "worker.py",
            "--concurrency",
            str(self.worker_concurrency),
            "--metrics-port",
            str(port),
            cwd=self.service_root,
        )
        self.worker_procs.append(proc)
        self.worker_metrics_ports[proc.pid] = port
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_until(lambda: _healthy(url, "/metrics") or proc.poll() is not None, 30, "a worker")
        return proc

    def metrics_urls(self) -> list[str]:
        """/metrics of the API and of every live worker."""
        live = [self.worker_metrics_ports[p.pid] for p in self.worker_procs if p.poll() is None]
        return [f"{self.api_url}/metrics", *(f"http://127.0.0.1:{port}/metrics" for port in live)]

    def assert_running(self) -> None:
        """Fail fast (with the log's tail) when a process of the stack died on its own."""
        for proc in self.procs:
            if proc.poll() is not None and proc not in self.stopped:
                raise RuntimeError(f"stack process {proc.args!r} exited with {proc.returncode}")

    def restart_api(self, sig: int = signal.SIGKILL) -> None:
        """Kill the API process (with the steps it was running) and start a new one."""
        for proc in self.procs:
            if "server.py" in proc.args and proc.poll() is None:  # type: ignore[operator]
                self.stopped.append(proc)
                proc.send_signal(sig)
                proc.wait(timeout=30)
        self._start_api()

    def kill_workers(self, sig: int = signal.SIGKILL) -> None:
        for proc in self.worker_procs:
            if proc.poll() is None:
                self.stopped.append(proc)
                proc.send_signal(sig)
                proc.wait(timeout=30)
        self.worker_procs.clear()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _toml_table(name: str, values: dict[str, Any] | None) -> list[str]:
    if values is None:
        return []
    return [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]


def _is_service(proc: subprocess.Popen[bytes]) -> bool:
    return any(entry in proc.args for entry in ("server.py", "worker.py"))  # type: ignore[operator]


def _healthy(url: str, path: str = "/healthz") -> bool:
    try:
        return httpx.get(f"{url}{path}", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
