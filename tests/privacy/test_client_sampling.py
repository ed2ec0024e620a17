"""Client sampling (``server.client_sampling``): DP-FedAvg's ledger composes the Poisson-subsampled Gaussian mechanism
(q = m / n, add/remove neighbours), which is what the server now runs under its own noise: each client independently
with probability q, the sum divided by the planned m (McMahan et al., ICLR 2018, Alg. 1), and an empty sample releases
the noise alone. Until 2026-12-07 every round drew exactly m clients, which the ledger accounted as Poisson (an
approximation, kept for the clients' noise shares and documented)."""

import json
import os
import stat
from collections import Counter

import numpy as np
import pytest

import secure_ffm.privacy.dp_fedavg as dp_fedavg
from secure_ffm.config import config_from_dict
from secure_ffm.data import load_federated_data
from secure_ffm.engine.aggregation import Aggregate
from secure_ffm.engine.sampling import FixedSizeSampling, PoissonSampling
from secure_ffm.errors import ConfigError
from secure_ffm.privacy.mechanisms import build_mechanism
from secure_ffm.run.simulation import Simulation, prepare_run
from secure_ffm.run.writer import PARTICIPATION_FIELDS, PARTICIPATION_FILE


def settings(*, clients=20, per_round=10, rounds=3, sampling="auto", privacy=None, seed=0):
    return config_from_dict(
        {
            "run": {"seed": seed},
            "data": {"dataset": "digits", "max_train_examples": 400, "max_test_examples": 50, "num_clients": clients, "partition": "iid"},
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"local_steps": 1, "batch_size": 8, "lr": 0.05},
            "server": {"rounds": rounds, "clients_per_round": per_round, "client_sampling": sampling},
            "privacy": privacy if privacy is not None else {"mode": "dp-fedavg", "target_epsilon": 3.0, "accountant": "rdp"},
        }
    )


def mechanism(cfg):
    return build_mechanism(cfg, load_federated_data(cfg.data, cfg.run.seed))


def test_poisson_sampling_includes_each_client_with_probability_q():
    rng = np.random.default_rng(7)
    draws = [PoissonSampling().sample(rng, num_clients=50, clients_per_round=10) for _ in range(4000)]
    counts = Counter(c for draw in draws for c in draw)
    q, trials = 0.2, len(draws)
    bound = 5 * np.sqrt(q * (1 - q) / trials)  # five standard errors of a frequency
    assert all(abs(counts[c] / trials - q) < bound for c in range(50))
    sizes = np.asarray([len(d) for d in draws])
    assert abs(sizes.mean() - 10) < 5 * np.sqrt(50 * q * (1 - q) / trials)
    assert sizes.min() < 10 < sizes.max()  # the round's size varies
    assert all(d == sorted(set(d)) for d in draws)


def test_poisson_sampling_can_draw_an_empty_round():
    rng = np.random.default_rng(0)
    sizes = [len(PoissonSampling().sample(rng, num_clients=20, clients_per_round=1)) for _ in range(200)]
    assert 0 in sizes  # P(empty) = 0.95^20 = 0.36 a round


def test_fixed_size_sampling_is_the_uniform_draw_without_replacement_of_before():
    for round in range(5):
        old = sorted(int(c) for c in np.random.default_rng(round).choice(30, size=7, replace=False))
        assert FixedSizeSampling().sample(np.random.default_rng(round), num_clients=30, clients_per_round=7) == old


@pytest.mark.parametrize(
    ("sampling", "placement", "expected"),
    [("auto", "server", "poisson"), ("auto", "clients", "fixed"), ("fixed", "server", "fixed"), ("poisson", "server", "poisson")],
)
def test_dp_fedavg_samples_as_its_ledger_accounts(sampling, placement, expected):
    mech = mechanism(settings(sampling=sampling, privacy={"mode": "dp-fedavg", "target_epsilon": 3.0, "noise_placement": placement}))
    assert mech.client_sampling() == expected
    ledger = mech.ledger({})
    assert ledger["client_sampling"] == expected
    assert ("approximation" in ledger["client_sampling_note"]) is (expected == "fixed")
    plan = mech.plan()
    if expected == "fixed":  # the bound that holds for fixed-size rounds is reported beside the approximation
        assert plan["epsilon_fixed_size_replace_one"] > plan["epsilon"]
        assert "replace-one neighbours: ε = " in mech.format_plan(plan)
    else:
        assert plan["epsilon_fixed_size_replace_one"] is None and ledger["epsilon_fixed_size_replace_one"] is None


def test_a_fixed_size_runs_privacy_json_bounds_its_rounds_without_replacement(tmp_path):
    from secure_ffm.privacy.without_replacement import fixed_size_epsilon

    cfg = settings(rounds=2, sampling="fixed", privacy={"mode": "dp-fedavg", "target_epsilon": 3.0, "accountant": "rdp"})
    Simulation(prepare_run(cfg), out_dir=tmp_path / "run").run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    expected = fixed_size_epsilon(entries=[(ledger["noise_multiplier"], 0.5, 2)], delta=ledger["delta"])
    assert ledger["epsilon_fixed_size_replace_one"] == pytest.approx(expected, rel=1e-12)
    assert ledger["epsilon_fixed_size_replace_one"] > ledger["epsilon"]


def test_dp_fedavg_refuses_poisson_sampling_with_the_clients_noise_shares():
    with pytest.raises(ConfigError) as raised:
        mechanism(settings(sampling="poisson", privacy={"mode": "dp-fedavg", "target_epsilon": 3.0, "noise_placement": "clients"}))
    assert raised.value.key == "server.client_sampling"


def test_other_mechanisms_keep_fixed_size_rounds_unless_asked():
    assert mechanism(settings(privacy={"mode": "none"})).client_sampling() == "fixed"
    assert mechanism(settings(sampling="poisson", privacy={"mode": "none"})).client_sampling() == "poisson"


def test_an_unknown_sampling_names_the_key():
    with pytest.raises(ConfigError) as raised:
        settings(sampling="stratified")
    assert raised.value.key == "server.client_sampling"


def test_under_poisson_the_central_noise_divides_the_sum_by_the_planned_round(monkeypatch):
    """The fixed-denominator estimator: the released mean is (sum + N(0, (zC)^2)) / m for the planned m, whoever came."""
    mech = mechanism(settings(sampling="poisson"))
    calls = []

    def recording(arrays, std, stream):
        calls.append((dict(arrays), std))
        return dict(arrays)

    monkeypatch.setattr(dp_fedavg, "add_gaussian_noise", recording)
    arrived = 7  # of a planned 10: the mean over them is 0.5, so their sum is 3.5
    out = dp_fedavg.CentralGaussianNoise(mech)(1, Aggregate({"w": np.full(3, 0.5, dtype=np.float32)}, arrived, arrived))
    ((arrays, std),) = calls
    np.testing.assert_allclose(arrays["w"], 3.5 / 10)
    assert std == pytest.approx(mech.update_noise_multiplier * mech.clip_norm / 10)
    assert out.mean_delta["w"].dtype == np.float32


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_rows(cfg, tmp_path, name):
    """The run's rows as it held them: metrics.jsonl's, with the participation a DP-FedAvg run keeps in checkpoints/."""
    Simulation(prepare_run(cfg), out_dir=tmp_path / name).run()
    rows = read_jsonl(tmp_path / name / "metrics.jsonl")
    private = tmp_path / name / "checkpoints" / PARTICIPATION_FILE
    for row, withheld in zip(rows, read_jsonl(private) if private.exists() else [{}] * len(rows), strict=True):
        row.update(withheld)
    return rows


def test_an_empty_poisson_round_releases_the_noise_alone(tmp_path):
    """A round nobody was sampled for still moves the model by the noise: leaving it unchanged would tell an outsider
    that the sample was empty, an event the subsampled Gaussian's accounting does not cover."""
    privacy = {"mode": "dp-fedavg", "target_epsilon": 8.0, "accountant": "rdp", "reproducible_noise": True}
    rows = run_rows(settings(per_round=1, rounds=6, seed=1, privacy=privacy), tmp_path, "dp")
    empty = [i for i, r in enumerate(rows) if not r["clients"]]
    assert empty and empty[0] > 0, [r["clients"] for r in rows]  # seed 1 samples nobody in some round after the first
    for i in empty:
        assert rows[i]["test_loss"] != rows[i - 1]["test_loss"]
        assert rows[i]["aborted"] is None


def test_an_empty_round_without_dp_leaves_the_model_unchanged(tmp_path):
    rows = run_rows(settings(per_round=1, rounds=6, seed=1, sampling="poisson", privacy={"mode": "none"}), tmp_path, "plain")
    sizes = [len(r["clients"]) for r in rows]
    empty = [i for i, r in enumerate(rows) if not r["clients"] and i > 0]
    assert empty, sizes
    for i in empty:
        assert rows[i]["test_loss"] == rows[i - 1]["test_loss"]


def test_who_took_part_stays_out_of_the_published_metrics_when_the_accounting_needs_it_secret(tmp_path):
    """DP-FedAvg's ε amplifies by subsampling: against a reader of metrics.jsonl who knows who took part each round it
    is the plain Gaussian mechanism over a client's rounds (an audit: 7.98 reported, 14.3 against such a reader)."""
    out = tmp_path / "dp"
    Simulation(prepare_run(settings(rounds=2)), out_dir=out).run()
    published = read_jsonl(out / "metrics.jsonl")
    assert all(field not in row for row in published for field in PARTICIPATION_FIELDS)
    private = out / "checkpoints" / PARTICIPATION_FILE
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and stat.S_IMODE(os.stat(out / "checkpoints").st_mode) == 0o700
    assert [row["round"] for row in read_jsonl(private)] == [1, 2] and all("clients" in row for row in read_jsonl(private))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bytes_up_total"] is None and summary["bytes_down_total"] is None
    for name in ("metrics.jsonl", "summary.json", "privacy.json"):
        assert '"clients": [' not in (out / name).read_text()


def test_timings_and_aborts_stay_out_of_the_published_metrics_when_the_sample_is_secret(tmp_path):
    """An audit read a Poisson round's number of participants off fit_seconds (exactly in 64% of rounds) and rounds too
    small to unmask off ``aborted``: every timing and the abort go to checkpoints/ with the participation."""
    out = tmp_path / "dp"
    Simulation(prepare_run(settings(rounds=2)), out_dir=out).run()
    for row in read_jsonl(out / "metrics.jsonl"):
        assert not [k for k in row if k == "seconds" or k.endswith("_seconds") or k == "aborted"], sorted(row)
    private = read_jsonl(out / "checkpoints" / PARTICIPATION_FILE)
    assert all({"fit_seconds", "seconds", "aborted", "setup_seconds"} <= set(row) for row in private)
    assert json.loads((out / "summary.json").read_text())["seconds_total"] is None


def test_a_poisson_round_whose_sampled_clients_all_drop_releases_the_noise_alone(tmp_path):
    """The audit: with every sampled client dropped the round aborted and the model did not move, telling a reader of the
    released models that the round failed. The noise is applied as for an empty round."""
    privacy = {"mode": "dp-fedavg", "target_epsilon": 8.0, "accountant": "rdp", "reproducible_noise": True}
    cfg = settings(per_round=4, rounds=3, seed=2, privacy=privacy)
    cfg = config_from_dict({**cfg.to_dict(), "secure_aggregation": {"dropout_rate": 0.99}})  # every sampled client drops
    rows = run_rows(cfg, tmp_path, "dropped")
    aborted = [i for i, r in enumerate(rows) if r["aborted"] is not None]
    assert aborted and all(r["clients"] == [] for r in rows)
    losses = [r["test_loss"] for r in rows]
    assert len(set(losses)) == len(losses)  # every round moved the model, by noise alone


def test_an_empty_rounds_noise_lands_on_the_arrays_in_the_layouts_order(monkeypatch):
    """After a resume the parameters come back in another order; the empty round's noise must land as in the
    uninterrupted run (the audit saw 0.72 of difference), so the zero aggregate is built in sorted order."""
    privacy = {"mode": "dp-fedavg", "target_epsilon": 8.0, "accountant": "rdp"}
    server = Simulation(prepare_run(settings(rounds=1, privacy=privacy))).server
    server.parameters = dict(reversed(list(server.parameters.items())))
    seen = []
    monkeypatch.setattr(server, "apply", lambda round, aggregate: seen.append(list(aggregate.mean_delta)))
    assert server.apply_empty(1, {})
    assert seen == [sorted(server.parameters)]


def test_a_run_whose_sample_is_not_secret_publishes_its_participants(tmp_path):
    out = tmp_path / "plain"
    Simulation(prepare_run(settings(rounds=1, privacy={"mode": "none"})), out_dir=out).run()
    (row,) = read_jsonl(out / "metrics.jsonl")
    assert len(row["clients"]) == 10 and not (out / "checkpoints" / PARTICIPATION_FILE).exists()


def test_a_resumed_dp_fedavg_run_reads_its_participation_back(tmp_path):
    out = tmp_path / "resumed"
    privacy = {"mode": "dp-fedavg", "target_epsilon": 3.0, "accountant": "rdp", "noise_multiplier": 3.0}  # room for a third round
    Simulation(prepare_run(settings(rounds=2, privacy=privacy)), out_dir=out).run()
    before = run_rows_of(out)
    Simulation(prepare_run(settings(rounds=3, privacy=privacy)), out_dir=out).run(resume=True)
    after = run_rows_of(out)
    assert [r["clients"] for r in after[:2]] == [r["clients"] for r in before] and len(after) == 3
    assert all(field not in row for row in read_jsonl(out / "metrics.jsonl") for field in PARTICIPATION_FIELDS)


def run_rows_of(out):
    rows = read_jsonl(out / "metrics.jsonl")
    for row, withheld in zip(rows, read_jsonl(out / "checkpoints" / PARTICIPATION_FILE), strict=True):
        row.update(withheld)
    return rows


def test_the_small_sample_delta_is_the_chance_of_a_round_between_one_and_the_fewest_aggregatable():
    from scipy.stats import binom

    extra = dp_fedavg.small_sample_delta(num_clients=20, sample_rate=0.5, fewest=6, rounds=3, epsilon=2.0)
    p = max(sum(binom.pmf(k, n, 0.5) for k in range(1, 6)) for n in (19, 20))
    assert extra == pytest.approx((1 + np.exp(2.0)) * 3 * p, rel=1e-9)
    assert dp_fedavg.small_sample_delta(num_clients=20, sample_rate=0.5, fewest=1, rounds=3, epsilon=2.0) == 0.0


MASKED = {"mode": "dp-fedavg", "target_epsilon": 3.0, "accountant": "rdp"}


def masked(**kwargs):
    cfg = settings(privacy=MASKED, **kwargs)
    return config_from_dict({**cfg.to_dict(), "secure_aggregation": {"protocol": "masking"}})


def test_auto_samples_fixed_size_rounds_where_poisson_rounds_could_be_too_small_to_unmask():
    """10 of 20 clients under masking: a Poisson round below the strict majority (6) of the planned 10 aborts with
    probability about 2% a round, far above 1% of δ: the mechanism would not be the one the ledger accounts."""
    assert mechanism(masked()).client_sampling() == "fixed"
    with pytest.raises(ConfigError) as raised:
        mechanism(masked(sampling="poisson"))
    assert raised.value.key == "server.client_sampling"


def test_poisson_rounds_under_masking_stay_where_a_too_small_round_is_negligible():
    mech = mechanism(masked(clients=200, per_round=100))  # fewer than 51 of a Binomial(199, 1/2): about 1e-12
    assert mech.client_sampling() == "poisson"
    assert 0 < mech.small_sample_delta < 0.01 * mech.delta
    assert mech.ledger({})["small_sample_delta"] == mech.small_sample_delta


def test_a_resume_that_would_switch_the_sampling_of_the_rounds_to_come_is_refused():
    """auto decides from the run's rounds: a checkpoint of Poisson rounds resumed where auto now picks fixed-size ones
    (a reviewer's run: 100 clients, 1 round Poisson, resumed with 2 rounds as fixed-size) is refused naming the rounds."""
    fixed = mechanism(masked())
    state = fixed.state_dict()
    assert state["client_sampling"] == "fixed"
    fixed.load_state_dict(state)  # the same sampling resumes
    with pytest.raises(ConfigError) as raised:
        fixed.load_state_dict({**state, "client_sampling": "poisson"})
    assert raised.value.key == "server.rounds" and "poisson samples" in str(raised.value)


def test_the_plan_claims_no_smallest_sum_without_secure_aggregation():
    plain = mechanism(settings(privacy={"mode": "dp-fedavg", "target_epsilon": 3.0, "noise_placement": "clients"}))
    text = plain.format_plan(plain.plan())
    assert "no sum of fewer is released" not in text and "adds the shares of clients whose update is missing" in text
