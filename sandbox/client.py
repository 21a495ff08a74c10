"""A small synchronous client for the stack: used by tests and the demo."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

from sandbox import issuer
from sandbox.stack import API_TOKEN, LEDGER_TOKEN, Stack, wait_until

FINAL_QUEUE = {"COMPLETED", "FAILED", "CANCELLED"}


class StackClient:
    def __init__(
        self, stack: Stack, on_response: Callable[[httpx.Response], None] | None = None
    ) -> None:
        """`on_response` sees every answer of the API (the tests check each against
        the OpenAPI document)."""
        self.stack = stack
        hooks = {"response": [on_response] if on_response else []}
        self._hooks = hooks
        self._people: dict[str, httpx.Client] = {}
        self.api = httpx.Client(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=10,
            event_hooks=hooks,
        )
        self.sandbox = httpx.Client(
            base_url=stack.sandbox_url,
            headers={"Authorization": f"Bearer {LEDGER_TOKEN}"},
            timeout=10,
        )

    @property
    def ops(self) -> httpx.Client:
        """The ops API as ana, a resolver (sandbox/issuer.py's people)."""
        return self.person("ana")

    @property
    def admin(self) -> httpx.Client:
        """The ops API as ada, an admin (circuits)."""
        return self.person("ada")

    def person(self, name: str) -> httpx.Client:
        """The ops API as `name`, signed in at the stack's issuer (once per client)."""
        if name not in self._people:
            token = issuer.access_token(self.stack.issuer_url, name)
            self._people[name] = httpx.Client(
                base_url=self.stack.api_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
                event_hooks=self._hooks,
            )
        return self._people[name]

    def submit(
        self, cascade: list[str], amount: str = "10.00", order_id: str | None = None, **extra: Any
    ) -> httpx.Response:
        body = {
            "order_id": order_id or f"ord-{uuid.uuid4().hex[:12]}",
            "merchant_id": "m-1",
            "amount": amount,
            "currency": self.stack.currency,
            "cascade": cascade,
            **extra,
        }
        return self.api.post("/v1/withdrawals", json=body)

    def withdrawal(self, ident: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/withdrawals/{ident}")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def events(self, ident: str) -> list[dict[str, Any]]:
        response = self.api.get(f"/v1/withdrawals/{ident}/events")
        response.raise_for_status()
        return response.json()["events"]  # type: ignore[no-any-return]

    def wait_final(self, ident: str, timeout: float = 30) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            self.stack.assert_running()
            view = self.withdrawal(ident)
            return view if view["status"] in FINAL_QUEUE else None

        return wait_until(final, timeout, f"withdrawal {ident} to finish", every=0.1)  # type: ignore[no-any-return]

    def wait_task_status(self, ident: str, position: int, status: str, timeout: float = 30) -> None:
        wait_until(
            lambda: self.withdrawal(ident)["tasks"][position]["status"] == status,
            timeout,
            f"task {position} of {ident} to reach {status}",
            every=0.1,
        )

    # sandbox controls ---------------------------------------------------------------
    def set_provider(self, name: str, **settings: Any) -> None:
        self.sandbox.put(f"/providers/_admin/{name}", json=settings).raise_for_status()

    def set_balance(self, provider: str, currency: str, available: str) -> None:
        self.sandbox.put(
            f"/ledger/_admin/balances/{provider}/{currency}", json={"available": available}
        ).raise_for_status()

    def set_ledger_faults(
        self,
        error_rate: float = 0.0,
        latency_ms: int = 0,
        seed: int = 1,
        error_after_rate: float = 0.0,
    ) -> None:
        """`error_rate`: a 503 before applying; `error_after_rate`: a 500 after applying."""
        body = {"error_rate": error_rate, "latency_ms": latency_ms, "seed": seed}
        body["error_after_rate"] = error_after_rate
        self.sandbox.put("/ledger/_admin/faults", json=body).raise_for_status()

    def send_webhook(self, provider: str, reference: str, status: str, **extra: Any) -> None:
        """Make the sandbox provider (re)send a signed webhook now."""
        body = {"reference": reference, "status": status, **extra}
        self.sandbox.post(f"/providers/_admin/{provider}/webhook", json=body).raise_for_status()

    def rename_provider_order(self, provider: str, reference: str, new_id: str) -> None:
        """Make the sandbox provider answer with another order id for this reference."""
        self.sandbox.patch(
            f"/providers/_admin/{provider}/orders/{reference}", json={"id": new_id}
        ).raise_for_status()

    def provider_load(self, provider: str) -> dict[str, int]:
        """Orders open at once and created per second at a sandbox provider."""
        response = self.sandbox.get(f"/providers/_admin/{provider}/load")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def ledger_ops(self) -> dict[str, list[str]]:
        """Money-moving ledger operations per hold key, in order."""
        ops: dict[str, list[str]] = {}
        for op in self.sandbox.get("/ledger/_admin/ops").json()["ops"]:
            ops.setdefault(op["key"], []).append(op["op"])
        return ops

    def provider_orders(self) -> dict[str, dict[str, Any]]:
        orders = self.sandbox.get("/providers/_admin/orders").json()["orders"]
        return {o["reference"]: o for o in orders}


def expected_ledger_ops(task: dict[str, Any], froze: bool) -> list[str]:
    """What the ledger must show for a task, from its final state."""
    funds = task["funds"]
    if funds == "FROZEN":
        return ["freeze"]
    if funds == "COMMITTED":
        return ["freeze", "commit"]
    if funds == "RELEASED":
        return ["freeze", "rollback"] if froze else ["void"]
    return []
