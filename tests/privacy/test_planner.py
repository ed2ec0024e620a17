"""DP-SGD planner: expected batch size and local steps of smallest noise-to-progress ratio (secure-ffm privacy --recommend)."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_ffm.config import config_from_dict
from secure_ffm.privacy.accounting import GaussianSteps, compute_epsilon
from secure_ffm.privacy.planner import NOISE_TO_PROGRESS_LIMIT, TIE_TOLERANCE, recommend
from secure_ffm.run.cli import main


def plan(n, *, epsilon=2.0, rounds=5, epochs=1.0):
    return recommend(n, target_epsilon=epsilon, delta=0.0, rounds=rounds, epochs=epochs, accountant="rdp", max_grad_norm=1.0)


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(10, 3000),
    epsilon=st.floats(0.5, 16.0),
    rounds=st.integers(1, 20),
    epochs=st.floats(0.25, 3.0),
)
def test_every_candidate_reaches_but_never_exceeds_the_target(n, epsilon, rounds, epochs):
    advice = plan(n, epsilon=epsilon, rounds=rounds, epochs=epochs)
    assert advice.best in advice.candidates
    for c in advice.candidates:
        spent = compute_epsilon([GaussianSteps(c.noise_multiplier, c.sample_rate, c.total_steps)], accountant="rdp", delta=advice.delta)
        assert 0.95 * epsilon <= spent <= epsilon, c  # calibration to 1%; 5% leaves room for the accountant's resolution
        assert c.total_steps == rounds * c.steps_per_round
        assert 1 <= c.batch_size <= n and c.sample_rate == pytest.approx(c.batch_size / n)
        assert c.noise_to_progress == pytest.approx(c.noise_multiplier / (c.batch_size * math.sqrt(c.total_steps)))
    smallest = min(c.noise_to_progress for c in advice.candidates)
    assert advice.best.noise_to_progress <= smallest * (1 + TIE_TOLERANCE)


def test_candidates_spend_the_compute_budget():
    advice = plan(1000, rounds=5, epochs=2.0)
    # s = 1, 2, 4, ... while rounds·s <= epochs·n (400): 1..256
    assert [c.steps_per_round for c in advice.candidates] == [2**k for k in range(9)]
    for c in advice.candidates:
        assert c.batch_size == round(2.0 * 1000 / c.total_steps)


def test_noise_to_progress_falls_as_the_client_has_more_data():
    ratios = [plan(n).best.noise_to_progress for n in (50, 200, 800, 3200)]
    assert ratios == sorted(ratios, reverse=True) and len(set(ratios)) == 4
    # in the central-limit regime r is about c / (n ε): four times the data, about a quarter of the ratio
    assert ratios[-1] < ratios[-2] / 3


def test_a_tiny_client_is_warned_about_and_a_large_one_is_not():
    tiny, large = plan(10, epsilon=1.0, rounds=10), plan(5000, epsilon=1.0, rounds=10)
    assert tiny.too_little_data and tiny.best.noise_to_progress > NOISE_TO_PROGRESS_LIMIT
    assert not large.too_little_data


def write_config(tmp_path, *, privacy=None, **data):
    raw = {
        "run": {"seed": 1},
        "data": {"dataset": "fashion_mnist", "max_train_examples": 800, "max_test_examples": 100, "num_clients": 4, "alpha": 1.0, **data},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 2, "batch_size": 16, "lr": 0.5},
        "server": {"rounds": 2},
        "privacy": {"mode": "dp-sgd", "target_epsilon": 4.0, "accountant": "rdp", **(privacy or {})},
    }
    path = tmp_path / "c.toml"
    path.write_text(config_from_dict(raw).to_toml())
    return path


def test_recommend_prints_candidates_the_proxy_and_the_overrides(tmp_path, capsys):
    assert main(["privacy", str(write_config(tmp_path)), "--recommend", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "r = z / (B·sqrt(T))" in out
    for role in ("smallest client: n=", "median client: n=", "largest client: n="):
        assert role in out
    assert "apply (the median client's" in out and "--set client.batch_size=" in out and "--set client.local_steps=" in out
    assert "WARNING" not in out


def test_the_recommended_overrides_give_the_recommended_noise(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["privacy", str(config), "--recommend", "--epochs", "1", "--json"]) == 0
    advice = json.loads(capsys.readouterr().out)
    median = next(c for c in advice["clients"] if "median" in c["role"])
    assert median["overrides"] == advice["apply"]
    sets = [arg for o in advice["apply"] for arg in ("--set", o)]
    assert main(["privacy", str(config), "--json", *sets]) == 0
    clients = json.loads(capsys.readouterr().out)["clients"]
    run = next(c for c in clients if c["num_examples"] == median["num_examples"])
    assert run["noise_multiplier"] == median["best"]["noise_multiplier"]
    assert run["planned_epsilon"] <= advice["target_epsilon"]


def test_recommend_warns_about_clients_too_small_for_the_budget_and_exits_0(tmp_path, capsys):
    config = write_config(tmp_path, privacy={"target_epsilon": 1.0}, num_clients=40)
    assert main(["privacy", str(config), "--recommend", "--epochs", "1"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]
    assert warnings and all("too little data for ε=1 to train usefully" in w for w in warnings)
    assert 'share one noise draw across the federation (privacy.mode="distributed-dp-sgd"' in warnings[0]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--recommend", "--epochs", "0"], "--epochs"),
        (["--recommend", "--epochs", "nan"], "--epochs"),
        (["--recommend", "--epochs", "many"], "--epochs"),
        (["--epochs", "2"], "--epochs"),
        (["--recommend", "--set", "privacy.mode=dp-fedavg"], "--recommend"),
    ],
)
def test_bad_planner_options_exit_2_naming_the_option(tmp_path, capsys, args, option):
    assert main(["privacy", str(write_config(tmp_path)), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err
