"""Distributed noise under secure aggregation: the zcdp accountant, discrete shares, and distributed DP-SGD."""

import json
import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from secure_ffm.config import config_from_dict
from secure_ffm.data import load_federated_data
from secure_ffm.engine.aggregation import Aggregate, EncodingDeclined
from secure_ffm.engine.transforms import TransformContext
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.errors import ConfigError
from secure_ffm.privacy import accounting
from secure_ffm.privacy.accounting import GaussianSteps, PrivacyLedger
from secure_ffm.privacy.discrete_gaussian import ddg_rdp
from secure_ffm.privacy.distributed import HALF_RING, DiscreteGaussianShare, DiscreteGaussianSum
from secure_ffm.privacy.distributed_dp_sgd import STATE_KEY, GradientSumToStep, clip_rows, clipped_gradient_sum
from secure_ffm.privacy.mechanisms import build_mechanism
from secure_ffm.privacy.noise import DP_SGD_SAMPLING, PrivateRandomness, new_secret
from secure_ffm.run.simulation import Simulation, prepare_run


def tiny(privacy, protocol="masking", **sections):
    raw = {
        "run": {"seed": 3, "name": "tiny-distributed"},
        "data": {"dataset": "fashion_mnist", "max_train_examples": 400, "max_test_examples": 200, "num_clients": 4, "partition": "iid"},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"batch_size": 20, "lr": 1.0, "momentum": 0.0},
        "server": {"rounds": 2},
        "privacy": {"target_epsilon": 3.0, **privacy},
        "secure_aggregation": {"protocol": protocol},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


# --------------------------------------------------------------------------- the zcdp accountant


def epsilon(accountant, z, q, steps, delta=1e-5):
    return accounting.compute_epsilon([GaussianSteps(z, q, steps)], accountant=accountant, delta=delta)


@pytest.mark.parametrize(("z", "steps"), [(1.0, 100), (3.0, 10), (0.8, 1)])
def test_zcdp_equals_the_gaussian_rdp_bound_without_subsampling(z, steps):
    assert epsilon("zcdp", z, 1.0, steps) == pytest.approx(epsilon("rdp", z, 1.0, steps), rel=1e-9)


@pytest.mark.parametrize("q", [0.3, 0.05, 0.005])
def test_zcdp_with_subsampling_is_never_below_the_exact_sampled_gaussian(q):
    # Zhu & Wang's bound holds for any mechanism with the Gaussian's RDP curve: it cannot beat the Gaussian's own analysis
    zcdp, rdp = epsilon("zcdp", 1.2, q, 200), epsilon("rdp", 1.2, q, 200)
    assert rdp <= zcdp <= 1.6 * rdp


def test_noise_calibrated_with_zcdp_reaches_but_never_exceeds_the_target():
    z = accounting.calibrate_noise_multiplier(target_epsilon=3.0, delta=1e-5, sample_rate=0.02, steps=300, accountant="zcdp")
    assert 0.97 * 3.0 <= epsilon("zcdp", z, 0.02, 300) <= 3.0
    assert z > accounting.calibrate_noise_multiplier(target_epsilon=3.0, delta=1e-5, sample_rate=0.02, steps=300, accountant="rdp")


def test_a_zcdp_ledger_round_trips_through_json():
    ledger = PrivacyLedger(accountant="zcdp", delta=1e-5)
    ledger.record(noise_multiplier=1.1, sample_rate=0.1, steps=7)
    assert PrivacyLedger.from_json(json.loads(json.dumps(ledger.to_json()))).epsilon() == ledger.epsilon()


# --------------------------------------------------------------------------- the discrete geometry


@pytest.mark.parametrize(("contributions", "dim", "z"), [(10, 1000, 1.0), (20_000, 206_922, 0.7), (8, 50, 4.0)])
def test_discrete_shares_reach_the_ledgers_noise_multiplier(contributions, dim, z):
    g = DiscreteGaussianSum(clip_norm=1.5, noise_multiplier=z, min_shares=6, max_shares=10, contributions=contributions, dim=dim)
    # any 6 shares make the sum (1/(2 z^2))-zCDP for one contribution rounded to norm <= Δ2 (Kairouz et al. 2021)
    rho = ddg_rdp([2.0], sigma=g.share_sigma, num_clients=6, l2_sensitivity=g.l2_sensitivity, dim=dim)[0] / 2
    assert rho <= 1 / (2 * z * z) * (1 + 1e-9)
    assert 1.0 <= g.rounding_inflation < 1.001
    # even the worst case fits the ring: every contribution at c in one coordinate, plus 6 σ of all 10 shares
    assert contributions * (1.5 / g.granularity + 1) + 6 * g.share_sigma * math.sqrt(10) < HALF_RING


def test_a_client_clips_to_its_own_bound_whatever_clip_norm_the_server_names(monkeypatch):
    g = DiscreteGaussianSum(clip_norm=1.0, noise_multiplier=1.0, min_shares=3, max_shares=4, contributions=4, dim=100)
    monkeypatch.setattr(DiscreteGaussianSum, "share", lambda self, size, *, stream: np.zeros(size))

    class Source:
        def discrete_geometry(self, dim):
            return g

    update = ClientUpdate(0, 1, {"w": np.full(100, 5.0, dtype=np.float32)}, 10)
    randomness = PrivateRandomness(new_secret())
    context = TransformContext(
        round=1, client_id=0, rng=randomness.generator(1), global_parameters={}, config={"clip_norm": 1e6}, randomness=randomness
    )
    sent = DiscreteGaussianShare(Source())(update, context).delta["w"]
    assert np.array_equal(sent, np.round(sent))
    assert np.linalg.norm(sent) <= g.l2_sensitivity
    assert np.linalg.norm(sent * g.granularity) == pytest.approx(1.0, rel=1e-3)


def test_a_diverged_update_is_declined_not_rounded():
    """NaN or infinite values have no integer to stand for them: the client sends nothing (EncodingDeclined, which the
    transports count as declined) instead of ending the whole run with a ValueError."""
    g = DiscreteGaussianSum(clip_norm=1.0, noise_multiplier=1.0, min_shares=3, max_shares=4, contributions=4, dim=4)
    stream = PrivateRandomness(new_secret()).stream(1)
    for bad in (np.nan, np.inf):
        with pytest.raises(EncodingDeclined, match="diverged"):
            g.integers(np.array([[0.1, bad, 0.0, 0.2]]), stream=stream)


# --------------------------------------------------------------------------- DP-FedAvg with discrete shares


def test_dp_fedavg_client_noise_under_masking_uses_discrete_shares(tmp_path):
    cfg = tiny({"mode": "dp-fedavg", "noise_placement": "clients", "clip_norm": 1.0}, client={"local_steps": 2, "lr": 0.05})
    summary = Simulation(prepare_run(cfg), out_dir=tmp_path / "run").run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert ledger["accountant"] == "zcdp" and ledger["discrete_noise"]["min_shares"] == 3
    assert ledger["epsilon"] == pytest.approx(epsilon("zcdp", ledger["noise_multiplier"], 1.0, 2, ledger["delta"]))
    assert summary["privacy"]["epsilon"] <= 3.0


@pytest.mark.parametrize(
    "privacy",
    [{"mode": "dp-fedavg", "noise_placement": "clients", "clip_norm": 1.0}, {"mode": "distributed-dp-sgd"}],
    ids=["dp-fedavg-discrete-shares", "distributed-dp-sgd"],
)
def test_a_clients_diverged_training_is_answered_as_usual_not_declined(privacy):
    """Every client starts from NaN weights. Until 2026-12-07 each declined ("diverged"), but under DP whether a client
    answers must not depend on its examples, and a crafted model can make training diverge on one example only: the
    NaN contributions are zeroed (DP-FedAvg's update, distributed DP-SGD's rows) and every client sends its noise."""
    simulation = Simulation(prepare_run(tiny(privacy, client={"local_steps": 1, "lr": 0.05})))
    good = {k: v.copy() for k, v in simulation.server.parameters.items()}
    simulation.server.parameters = {k: np.full_like(v, np.nan) for k, v in good.items()}
    row = simulation.orchestrator.run_round(1)
    assert row["clients"] == [0, 1, 2, 3] and not row["skipped_clients"]


def test_adaptive_clipping_with_discrete_shares_is_refused():
    cfg = tiny({"mode": "dp-fedavg", "noise_placement": "clients", "adaptive_clipping": True})
    with pytest.raises(ConfigError, match="privacy.adaptive_clipping"):
        build_mechanism(cfg, load_federated_data(cfg.data, cfg.run.seed))


# --------------------------------------------------------------------------- distributed DP-SGD


def test_distributed_dp_sgd_is_refused_without_secure_aggregation():
    cfg = tiny({"mode": "distributed-dp-sgd"}, protocol="none")
    with pytest.raises(ConfigError, match="secure_aggregation.protocol"):
        build_mechanism(cfg, load_federated_data(cfg.data, cfg.run.seed))


@pytest.fixture(scope="module")
def prepared():
    return prepare_run(tiny({"mode": "distributed-dp-sgd", "max_grad_norm": 0.5}))


@settings(max_examples=60, deadline=None)
@given(
    rows=arrays(np.float64, st.tuples(st.integers(1, 6), st.just(7)), elements=st.floats(-50, 50)),
    cut=st.integers(1, 6),
    clip=st.floats(0.01, 10.0),
)
def test_per_layer_clipping_bounds_every_group_and_so_the_whole_row(rows, cut, clip):
    sizes = [cut, 7 - cut]
    before = rows.copy()
    clipped = clip_rows(rows.copy(), clip, sizes=sizes)
    parts = (clipped[:, :cut], clipped[:, cut:])
    assert all((np.linalg.norm(part, axis=1) <= clip / math.sqrt(2) * (1 + 1e-9)).all() for part in parts)
    assert (np.linalg.norm(clipped, axis=1) <= clip * (1 + 1e-9)).all()  # the sensitivity of flat clipping
    for original, part in zip((before[:, :cut], before[:, cut:]), parts, strict=True):  # a group within its bound is kept
        small = np.linalg.norm(original, axis=1) <= clip / math.sqrt(2)
        np.testing.assert_array_equal(part[small], original[small])


def test_per_layer_clipping_keeps_a_small_layers_gradient_that_flat_clipping_scales_down():
    row = np.array([[30.0, 40.0, 0.3, 0.4]])  # a head-like part of norm 50 beside a part of norm 0.5
    flat, per_layer = clip_rows(row.copy(), 1.0), clip_rows(row.copy(), 1.0, sizes=[2, 2])
    np.testing.assert_allclose(flat[0, 2:], [0.006, 0.008], rtol=1e-4)  # scaled by 1 / 50.0025
    np.testing.assert_allclose(per_layer[0, 2:], [0.3, 0.4])
    np.testing.assert_allclose(np.linalg.norm(per_layer[0, :2]), 1 / math.sqrt(2))


def test_per_layer_clipping_is_refused_for_local_dp_sgd_naming_the_key():
    cfg = tiny({"mode": "dp-sgd", "clipping": "per-layer"}, protocol="none")
    with pytest.raises(ConfigError, match="privacy.clipping: 'per-layer' is implemented for privacy.mode"):
        build_mechanism(cfg, load_federated_data(cfg.data, cfg.run.seed))


def test_a_per_layer_run_clips_each_parameter_and_records_it(tmp_path, monkeypatch):
    from secure_ffm.privacy import distributed_dp_sgd

    seen = []
    original = distributed_dp_sgd.clip_rows

    def spy(rows, clip_norm, *, sizes=None):
        seen.append(sizes)
        return original(rows, clip_norm, sizes=sizes)

    monkeypatch.setattr(distributed_dp_sgd, "clip_rows", spy)
    cfg = tiny({"mode": "distributed-dp-sgd", "clipping": "per-layer"}, server={"rounds": 1})
    simulation = Simulation(prepare_run(cfg), out_dir=tmp_path / "run")
    simulation.run()
    sizes = [p.numel() for _, p in simulation.prepared.model.trainable_named_parameters()]
    assert seen and all(s == sizes for s in seen) and len(sizes) > 2
    assert json.loads((tmp_path / "run" / "privacy.json").read_text())["clipping"] == "per-layer"


@pytest.mark.parametrize("source", ["hooks", "bookkeeping", None])
def test_clipped_gradient_sum_equals_a_per_example_loop(prepared, source):
    model, encoded = prepared.model, prepared.encoded_private
    chosen = np.arange(13)
    total = clipped_gradient_sum(
        model,
        encoded,
        chosen,
        clip_norm=0.5,
        generator=torch.Generator().manual_seed(0),
        sink=lambda rows: rows.sum(0),
        physical_batch=5,
        source=source,
    )
    params = [p for _, p in model.trainable_named_parameters()]
    expected = np.zeros_like(total)
    for i in chosen:
        batch = model.make_batch(encoded, np.asarray([i]))
        grads = torch.autograd.grad(model.loss(batch), params)
        flat = torch.cat([g.reshape(-1) for g in grads]).double().numpy()
        expected += flat * min(1.0, 0.5 / np.linalg.norm(flat))
    np.testing.assert_allclose(total, expected, atol=1e-5)


@pytest.mark.parametrize(("arch", "source"), [("cnn", "bookkeeping"), ("tanh-cnn", "bookkeeping"), ("vit", "hooks")])
def test_per_example_gradients_come_from_book_keeping_where_the_model_allows_it(arch, source):
    from secure_ffm.config import ModelConfig
    from secure_ffm.models import build_model
    from secure_ffm.privacy.distributed_dp_sgd import per_example_gradient_source

    model = build_model(ModelConfig(arch=arch, finetune="full"), num_classes=10, data_kind="image", seed=0)
    assert per_example_gradient_source(model) == source  # vit: LayerNorm has no book-keeping rule


def test_book_keeping_and_opacus_hooks_give_the_same_per_example_rows_on_the_tanh_cnn(prepared):
    from secure_ffm.config import ModelConfig
    from secure_ffm.models import build_model

    model = build_model(ModelConfig(arch="tanh-cnn", finetune="full"), num_classes=10, data_kind="image", seed=0)
    rows = {}
    for source in ("hooks", "bookkeeping"):
        seen = []
        clipped_gradient_sum(
            model,
            prepared.encoded_private,
            np.arange(24),
            clip_norm=1e9,  # no clipping: the raw per-example gradients
            generator=torch.Generator(),
            sink=lambda r, seen=seen: seen.append(r.copy()) or r.sum(0),
            source=source,
        )
        rows[source] = np.concatenate(seen)
    assert rows["hooks"].shape == (24, 26010) and np.abs(rows["hooks"]).max() > 1e-3
    np.testing.assert_allclose(rows["bookkeeping"], rows["hooks"], rtol=1e-4, atol=1e-7)
    assert all(not hasattr(p, "grad_sample") and p.grad is None for p in model.module.parameters())  # nothing left behind


def test_a_clients_update_is_its_rounded_clipped_sum_plus_one_discrete_share(prepared):
    mechanism = prepared.privacy
    trainer = mechanism.trainer(None)
    indices = prepared.data.client_indices[0]
    randomness = PrivateRandomness(new_secret())
    result = trainer.train(
        prepared.model,
        prepared.encoded_private,
        indices,
        fit_config={},
        global_parameters=prepared.initial_parameters,
        generator=torch.Generator().manual_seed(0),
        state={},
        randomness=randomness,
    )
    assert math.isnan(result.train_loss) and result.steps == 1
    sent = np.concatenate([result.update[name].reshape(-1) for name, _ in prepared.model.trainable_named_parameters()])
    assert np.array_equal(sent, np.round(sent))  # integers for the masking ring
    # replay the secret sampling: the noiseless sum, in real units
    chosen = indices[randomness.stream(DP_SGD_SAMPLING, 0).random(len(indices)) < mechanism.sample_rate]
    model = prepared.model
    model.set_trainable(prepared.initial_parameters)
    clean = clipped_gradient_sum(
        model, prepared.encoded_private, chosen, clip_norm=0.5, generator=torch.Generator(), sink=lambda r: r.sum(0)
    )
    g = mechanism.discrete
    residual = sent * g.granularity - clean
    share_std = g.share_sigma * g.granularity  # one share: the full noise needs any t = 3 of them
    assert share_std == pytest.approx(mechanism.noise_multiplier * 0.5 / math.sqrt(3), rel=1e-3)
    assert residual.std() == pytest.approx(share_std, rel=0.02)
    assert abs(residual.mean()) < 5 * share_std / math.sqrt(residual.size)


def test_the_server_turns_the_mean_of_sums_into_one_sgd_step(prepared):
    mechanism = prepared.privacy
    mean = {"w": np.full(10, 4.0, dtype=np.float32)}
    mechanism.discrete_geometry(10)
    step = GradientSumToStep(mechanism)(1, Aggregate(mean_delta=mean, total_weight=4.0, num_clients=4))
    # mean of the 4 survivors' integer sums x γ = sum / 4 in real units; the step is -lr · sum / (4 · batch_size)
    expected = -1.0 * 4.0 * mechanism.discrete.granularity / 20
    np.testing.assert_allclose(step.mean_delta["w"], expected, rtol=1e-6)


@pytest.mark.parametrize(("protocol", "accountant"), [("masking", "zcdp"), ("ckks", "prv")])
def test_distributed_dp_sgd_run_spends_exactly_its_ledger(tmp_path, protocol, accountant):
    cfg = tiny({"mode": "distributed-dp-sgd", "max_grad_norm": 1.0}, protocol=protocol)
    simulation = Simulation(prepare_run(cfg), out_dir=tmp_path / "run")
    summary = simulation.run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert ledger["accountant"] == accountant and ledger["level"] == "sample"
    z, q = ledger["noise_multiplier"], ledger["sample_rate"]
    assert q == pytest.approx(20 / 100)
    for client in ledger["clients"]:
        assert client["rounds"] == 2
        assert client["epsilon"] == pytest.approx(epsilon(accountant, z, q, 2, ledger["delta"]))
    assert summary["privacy"]["epsilon"]["max"] <= 3.0
    assert all(row["train_loss"] is None for row in simulation.history)  # no data-dependent loss leaves a client


def test_a_distributed_dp_sgd_client_declines_when_its_budget_is_spent(tmp_path):
    cfg = tiny({"mode": "distributed-dp-sgd", "planned_rounds": 1}, server={"rounds": 2})
    simulation = Simulation(prepare_run(cfg), out_dir=tmp_path / "run")
    simulation.run()
    assert simulation.history[1]["skipped_clients"] == [0, 1, 2, 3]
    assert all(s[STATE_KEY]["rounds"] == 1 for s in simulation.client_states.values())


def test_privacy_command_plans_distributed_dp_sgd_and_refuses_it_in_plaintext(tmp_path, capsys):
    from secure_ffm.run.cli import main

    config = tmp_path / "c.toml"
    config.write_text(tiny({"mode": "distributed-dp-sgd"}).to_toml())
    assert main(["privacy", str(config), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["accountant"] == "zcdp" and plan["min_shares"] == 3 and 0.97 * 3.0 <= plan["epsilon"] <= 3.0
    assert main(["privacy", str(config), "--set", 'secure_aggregation.protocol="none"']) == 2
    assert "secure_aggregation.protocol" in capsys.readouterr().err


def test_lora_per_example_gradients_from_book_keeping_equal_opacus_hooks_under_the_same_dropout(tmp_path):
    # the demo's DP point: a LoRA model's trained layers are LoRA's and the head's Linear layers (LayerNorm and the
    # embeddings frozen), so book-keeping applies; the rows must be the hooks' exactly when dropout draws the same masks
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from tiny_encoder import save_tiny_bert

    from secure_ffm.config import ModelConfig
    from secure_ffm.data import load_dataset_splits
    from secure_ffm.models import build_model
    from secure_ffm.privacy.distributed_dp_sgd import per_example_gradient_source

    encoder = save_tiny_bert(tmp_path / "tiny-bert")
    config = ModelConfig(arch="hf-text", name_or_path=str(encoder), finetune="lora", lora_rank=2, lora_dropout=0.1)
    model = build_model(config, num_classes=2, data_kind="text", seed=0, max_length=16)
    assert per_example_gradient_source(model) == "bookkeeping"
    full = build_model(ModelConfig(arch="hf-text", name_or_path=str(encoder), finetune="full"), num_classes=2, data_kind="text", seed=0)
    assert per_example_gradient_source(full) == "hooks"  # a trained LayerNorm and embedding
    splits = load_dataset_splits(config_from_dict({"data": {"dataset": "movie_reviews", "max_train_examples": 40}}).data, 0)
    encoded = model.encode(splits.train)
    rows = {}
    for source in ("hooks", "bookkeeping"):
        seen = []
        torch.manual_seed(7)  # the same dropout masks in both passes
        clipped_gradient_sum(
            model,
            encoded,
            np.arange(12),
            clip_norm=1e9,
            generator=torch.Generator(),
            sink=lambda r, seen=seen: seen.append(r.copy()) or r.sum(0),
            physical_batch=5,
            source=source,
        )
        rows[source] = np.concatenate(seen)
    assert rows["hooks"].shape == (12, model.trainable_parameter_count()) and np.abs(rows["hooks"]).max() > 1e-4
    np.testing.assert_allclose(rows["bookkeeping"], rows["hooks"], rtol=1e-5, atol=1e-8)
