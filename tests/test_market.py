"""The sandbox's provider market model: seeded, bounded, calibrated by its rates;
and the demo's scenarios, one market file each."""

from __future__ import annotations

import random
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sandbox import demo, scenarios
from sandbox.calibrate import predict
from sandbox.config import ProviderConfig, SandboxConfig
from sandbox.demo import MERCHANTS
from sandbox.market import MarketError, MarketModel, draw, parse_market, parse_market_file
from sandbox.provider_sim import Simulator
from service.rollout import GuardSettings, RolloutConfig


def test_approval_swings_within_bounds() -> None:
    model = MarketModel(approval=0.3, swing=0.2, swing_period_s=10)
    values = [model.approval_at(t / 10, phase=1.0) for t in range(200)]
    assert min(values) == pytest.approx(0.1, abs=0.01)
    assert max(values) == pytest.approx(0.5, abs=0.01)
    assert MarketModel(approval=0.9, swing=0.5).approval_at(15, 0) == 1.0  # clamped


def test_draws_follow_the_configured_rates() -> None:
    model = MarketModel(
        approval=0.4,
        ambiguous_rate=0.1,
        never_answers_rate=0.05,
        accept_then_fail_rate=0.2,
        webhook_median_ms=1000,
        webhook_max_ms=5000,
    )
    rng = random.Random(7)
    draws = [draw(model, rng, 0.0, 0.0) for _ in range(20_000)]
    share = {k: v / len(draws) for k, v in Counter(d.outcome for d in draws).items()}
    assert share["ambiguous_created"] + share["ambiguous_no_order"] == pytest.approx(0.1, abs=0.01)
    assert share["never_answers"] == pytest.approx(0.05, abs=0.01)
    assert share["accepted"] == pytest.approx(0.85 * 0.4, abs=0.015)
    fails = sum(d.final_status == "failed" for d in draws) / len(draws)
    assert fails == pytest.approx(0.2, abs=0.015)
    assert max(d.settle_after_s for d in draws) <= 5.0
    assert sorted(d.settle_after_s for d in draws)[len(draws) // 2] == pytest.approx(1.0, rel=0.1)


def test_draws_are_repeatable_with_a_seed() -> None:
    model = MarketModel(approval=0.5, ambiguous_rate=0.2)
    one, two, other = random.Random(3), random.Random(3), random.Random(4)
    first = [draw(model, one, float(t), 0.5) for t in range(50)]
    assert first == [draw(model, two, float(t), 0.5) for t in range(50)]
    assert first != [draw(model, other, float(t), 0.5) for t in range(50)]


@pytest.mark.parametrize("raw", [{"approval": 1.5}, {"nope": 1}, {"swing_period_s": 0}, []])
def test_bad_market_tables_are_refused(raw: object) -> None:
    with pytest.raises(MarketError):
        parse_market(raw, "providers.x")


async def test_a_never_answers_outage_takes_orders_and_leaves_them_pending() -> None:
    """The regression scenario's fault: accepted, then silence (no webhook is ever
    scheduled, and the order stays pending for a status check)."""
    model = MarketModel(outage_start_s=0, outage_end_s=60, outage_mode="never_answers")
    provider = ProviderConfig("payfast", "k", "s", behaviour="market", market=model)
    sim = Simulator(SandboxConfig("http://127.0.0.1:9/hooks", "t", 1, {"payfast": provider}))
    answer = await sim.create(provider, "ref-1", "10.00", "EUR")
    assert answer.status_code == 201 and answer.body["status"] == "pending"
    assert sim.orders[("payfast", "ref-1")].status == "pending"
    assert not sim.tasks  # nothing will ever answer it


# The demo's scenarios (config/markets/*.toml, sandbox/scenarios.py): each file a
# valid market, found by name, and the default one calibrated to the case study.


@pytest.mark.parametrize("name", scenarios.names())
def test_each_scenario_file_is_a_valid_market(name: str) -> None:
    scenario = scenarios.load(scenarios.resolve(name))
    models = parse_market_file(scenario.market)
    assert scenario.name == name
    assert models and scenario.market["webhook_sla_s"] > 0
    assert tomllib.loads(scenario.rollout_toml(MERCHANTS))["merchants"] == MERCHANTS


def test_the_scenarios_the_demo_documents_are_there() -> None:
    assert {"default", "outage", "regression"} <= set(scenarios.names())
    assert scenarios.DEFAULT_SCENARIO == "default"


def test_scenario_names_resolve_and_the_market_option_takes_a_file(tmp_path: Path) -> None:
    parser = demo.arguments()
    assert demo.scenario_of(parser.parse_args([])).name == "default"
    outage = demo.scenario_of(parser.parse_args(["--scenario", "outage"]))
    assert outage.path == scenarios.MARKETS_DIR / "outage.toml"
    copy = tmp_path / "mine.toml"
    copy.write_text(outage.path.read_text())
    assert demo.scenario_of(parser.parse_args(["--market", str(copy)])).path == copy
    with pytest.raises(scenarios.ScenarioError, match="one of default, "):
        demo.scenario_of(parser.parse_args(["--scenario", "nope"]))
    with pytest.raises(SystemExit):  # one or the other
        parser.parse_args(["--scenario", "outage", "--market", str(copy)])


def test_the_outage_scenario_is_the_default_market_plus_the_outage() -> None:
    """Two files, one calibration: only cheapo's outage and the [demo] table differ."""
    default, outage = (scenarios.load(scenarios.resolve(n)).market for n in ("default", "outage"))
    cheapo = outage["providers"]["cheapo"]["market"]
    outage_keys = {k for k in cheapo if k.startswith("outage_")}
    assert outage_keys >= {"outage_start_s", "outage_end_s"}
    for key in outage_keys:
        del cheapo[key]
    assert {**outage, "demo": None} == {**default, "demo": None}


def test_the_regression_scenario_is_the_default_market_plus_payfasts_silence() -> None:
    """Only payfast's fault (orders taken, never answered, all run long) and the
    [demo] table differ; payfast is one single-shot rarely reaches (not the cheapest)."""
    default, regression = (scenarios.load(scenarios.resolve(n)) for n in ("default", "regression"))
    payfast = regression.market["providers"]["payfast"]["market"]
    fault = {k: payfast.pop(k) for k in list(payfast) if k.startswith("outage_")}
    assert fault == {"outage_start_s": 0, "outage_end_s": 3600, "outage_mode": "never_answers"}
    assert {**regression.market, "demo": None} == {**default.market, "demo": None}
    fees = {n: p["market"]["fee_bps"] for n, p in default.market["providers"].items()}
    assert fees["payfast"] > min(fees.values())
    assert regression.demo.fault and not default.demo.fault


def test_every_scenario_is_guarded_alike() -> None:
    """The cohort guard's settings, and how often it judges, are the default demo's
    in every scenario: a regression is found by the rule a healthy market passes."""
    loaded = [scenarios.load(scenarios.resolve(n)) for n in scenarios.names()]
    guarded = {(s.demo.guard_every_s, str(s.demo.rollout.get("guard"))) for s in loaded}
    assert len(guarded) == 1, guarded
    default = scenarios.load(scenarios.resolve("default"))
    assert default.demo_env() == {"GUARD_EVERY_S": "1"}
    rollout = RolloutConfig.model_validate(tomllib.loads(default.rollout_toml(MERCHANTS)))
    assert (rollout.guard.window_s, rollout.guard.min_sample) == (60, 30)
    assert rollout.guard.z == GuardSettings().z  # the service's own test, scaled in size only


def test_the_default_market_reproduces_the_case_study_at_the_documented_seeds() -> None:
    """The figures the README shows (seeds 7, 42, 101), predicted from the market's
    draws (sandbox/calibrate.py; the demo measures the same), and on average."""
    market = scenarios.load(scenarios.resolve("default")).market
    for seed in (7, 42, 101):
        predicted = predict(market, seed)
        assert predicted.within_case_study(), predicted
    sweep = [predict(market, seed) for seed in range(1, 41)]
    mean = {k: sum(getattr(p, k) for p in sweep) / len(sweep) for k in ("single_shot", "cascade")}
    assert 0.13 <= mean["single_shot"] <= 0.18 and mean["cascade"] >= 0.55, mean
    assert sum(p.within_case_study() for p in sweep) >= 0.6 * len(sweep)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"demo": {"nope": 1}}, r"\[demo\]: unknown keys"),
        ({"demo": {"rollout": {"cascade_percent": 150}}}, "cascade_percent"),
        ({"demo": {"guard_every_s": 0}}, "guard_every_s"),
        ({"health": {"window_s": -1}}, "window_s"),
        ({"colour": "blue"}, "unknown top-level keys"),
        ({"providers": {"x": {"eligibility": 2, "market": {}}}}, "eligibility"),
    ],
)
def test_a_bad_scenario_file_is_refused(tmp_path: Path, change: dict[str, Any], error: str) -> None:
    market = {**scenarios.load(scenarios.resolve("default")).market, **change}
    path = tmp_path / "bad.toml"
    path.write_text(scenarios.to_toml(market))
    with pytest.raises(scenarios.ScenarioError, match=error):
        scenarios.load(path)


def test_a_scenarios_rollout_settings_go_over_the_demos_merchants() -> None:
    rollout = {"cascade_percent": 50, "guard": {"min_sample": 30}, "merchants": {"x": "cascade"}}
    written = tomllib.loads(scenarios.to_toml(scenarios.rollout_document(MERCHANTS, rollout)))
    assert written == {**rollout, "merchants": {**MERCHANTS, "x": "cascade"}}
