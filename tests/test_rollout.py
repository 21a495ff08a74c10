"""The rollout gate: per merchant or by percentage, recorded on the withdrawal."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.client import StackClient
from service.rollout import Policy, RolloutConfig, RolloutGate


def test_merchant_override_wins() -> None:
    gate = RolloutGate(RolloutConfig(merchants={"legacy": Policy.SINGLE_SHOT}))
    assert gate.decide("legacy", "o-1").policy == Policy.SINGLE_SHOT
    assert gate.decide("legacy", "o-1").reason == "merchant:legacy"
    assert gate.decide("other", "o-1").policy == Policy.HEALTH_CASCADE  # the default


def test_health_routing_has_a_global_switch_and_a_merchant_override(tmp_path: Path) -> None:
    path = tmp_path / "rollout.toml"
    path.write_text('health_routing = false\n[merchants]\nbold = "health_cascade"\n')
    gate = RolloutGate(RolloutConfig.from_file(path))
    assert gate.decide("m", "o-1").policy == Policy.CASCADE
    assert gate.decide("bold", "o-1").policy == Policy.HEALTH_CASCADE
    assert RolloutGate(RolloutConfig.from_file(path, health_routing=True)).decide(
        "m", "o-1"
    ).policy == (Policy.HEALTH_CASCADE)


@pytest.mark.parametrize("percent", [0, 10, 50, 90, 100])
def test_percentage_is_stable_and_proportional(percent: int) -> None:
    gate = RolloutGate(RolloutConfig(cascade_percent=percent))
    decisions = [gate.decide("m", f"order-{i}") for i in range(4000)]
    share = sum(d.policy.cascades for d in decisions) / len(decisions)
    assert abs(share - percent / 100) < 0.03
    assert [gate.decide("m", f"order-{i}") for i in range(50)] == decisions[:50]  # stable


def test_gate_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rollout.toml"
    path.write_text('cascade_percent = 25\n[merchants]\nbig = "cascade"\n')
    config = RolloutConfig.from_file(path)
    assert (config.cascade_percent, config.merchants["big"]) == (25, Policy.CASCADE)
    assert RolloutConfig.from_file(path, 70).cascade_percent == 70
    with pytest.raises(ValueError):
        RolloutConfig(cascade_percent=101)


def test_single_shot_withdrawal_tries_only_the_first_provider(client: StackClient) -> None:
    client.set_provider("alpha", behaviour="decline")
    response = client.api.post(
        "/v1/withdrawals",
        json={
            "order_id": "legacy-1",
            "merchant_id": "legacy",
            "amount": "3.00",
            "currency": "EUR",
            "cascade": ["alpha", "beta"],
        },
    )
    assert response.status_code == 201, response.text
    view = client.wait_final(response.json()["id"])
    assert (view["policy"], view["policy_reason"]) == ("single_shot", "merchant:legacy")
    assert view["requested_cascade"] == ["alpha", "beta"]
    assert view["status"] == "FAILED"
    assert [t["provider"] for t in view["tasks"]] == ["alpha"]
    cascade = client.wait_final(client.submit(["alpha", "beta"]).json()["id"])
    assert (cascade["policy"], cascade["status"]) == ("cascade", "COMPLETED")
