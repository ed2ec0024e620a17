"""DP-FedAvg's noise is what its ledger says it is (an audit of 2026-12-07 found three places where it was not).

- Adaptive clipping's unclipped count: the accounting's ``z = (z_Δ^-2 + (2σ_b)^-2)^-1/2`` (Andrew et al., 2021) counts one
  client as moving the count by 1/2, which holds for the centred ``b - 1/2`` (as TensorFlow Privacy sends it), not for
  ``b`` in {0, 1}, which the clients sent: ε was understated (3.9 actual against 3.0 reported at σ_b = 2).
- The server's count noise was sized from the clients that arrived (σ_b = m/20 of the survivors), not the planned m.
- ``epsilon_against_server`` with client-placed noise and no secure aggregation claimed the whole sum's noise, where the
  server reads each update under its own share: z / √m.
"""

import json
import math

import numpy as np
import pytest
import torch
from dp_step_runner import one_dp_step  # tests/privacy/dp_step_runner.py (on sys.path under pytest)

import secure_ffm.privacy.dp_fedavg as dp_fedavg
from secure_ffm.config import config_from_dict
from secure_ffm.data import load_federated_data
from secure_ffm.engine.aggregation import Aggregate
from secure_ffm.engine.transforms import TransformContext
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.privacy import accounting
from secure_ffm.privacy.accounting import GaussianSteps
from secure_ffm.privacy.mechanisms import build_mechanism
from secure_ffm.privacy.noise import FastStream
from secure_ffm.run.simulation import Simulation, prepare_run

CLIENTS, PER_ROUND = 20, 10


def config(privacy, protocol="none", sampling="auto"):
    return config_from_dict(
        {
            "run": {"seed": 0},
            "data": {"dataset": "digits", "max_train_examples": 400, "max_test_examples": 50, "num_clients": CLIENTS, "partition": "iid"},
            "model": {"arch": "cnn", "finetune": "full"},
            "client": {"local_steps": 1, "batch_size": 8, "lr": 0.05},
            "server": {"rounds": 3, "clients_per_round": PER_ROUND, "client_sampling": sampling},
            "privacy": {"mode": "dp-fedavg", "target_epsilon": 3.0, "accountant": "rdp", **privacy},
            "secure_aggregation": {"protocol": protocol, "clip_range": 1.0},
        }
    )


def mechanism(privacy, protocol="none", sampling="auto"):
    cfg = config(privacy, protocol, sampling)
    return build_mechanism(cfg, load_federated_data(cfg.data, cfg.run.seed))


ADAPTIVE = {"adaptive_clipping": True, "clipped_count_stddev": 2.0, "clip_norm": 1.0}


@pytest.mark.parametrize("scale", [0.1, 10.0])  # an update under C and one over it
def test_a_clients_unclipped_statistic_moves_the_count_by_half(scale):
    mech = mechanism(ADAPTIVE)
    clip = mech.client_transforms()[0]
    update = ClientUpdate(0, 1, {"w": np.full(4, scale, dtype=np.float32)}, 10)
    context = TransformContext(round=1, client_id=0, rng=np.random.default_rng(0), global_parameters={}, config={"clip_norm": 1.0})
    value = float(clip(update, context).statistics[dp_fedavg.UNCLIPPED][0])
    assert abs(value) == 0.5  # b - 1/2: sensitivity 1/2, what the accounting's 2 σ_b stands for
    assert value == (0.5 if scale * 2 <= 1.0 else -0.5)


def test_the_accounted_noise_multiplier_holds_for_the_statistic_the_clients_send():
    """Composing the update (sensitivity C, noise z_Δ C) and the count (sensitivity: the largest change one client makes
    to the sum of the statistics clients actually send, noise σ_b) as one Gaussian mechanism gives at least the z the
    ledger accounts with: (z_Δ^-2 + (σ_b / s)^-2)^-1/2 >= z. With b in {0, 1} (s = 1) it was 1.33 against 1.62."""
    mech = mechanism(ADAPTIVE)
    clip = mech.client_transforms()[0]
    context = TransformContext(round=1, client_id=0, rng=np.random.default_rng(0), global_parameters={}, config={"clip_norm": 1.0})
    sent = [
        float(clip(ClientUpdate(0, 1, {"w": np.full(4, scale, dtype=np.float32)}, 10), context).statistics[dp_fedavg.UNCLIPPED][0])
        for scale in (0.0, 0.1, 0.49, 0.51, 10.0)
    ]
    sensitivity = max(abs(v) for v in sent)  # add or remove one client: its value joins or leaves the sum
    effective = (mech.update_noise_multiplier**-2 + (mech.count_std(PER_ROUND) / sensitivity) ** -2) ** -0.5
    assert effective >= mech.noise_multiplier * (1 - 1e-9)


def test_the_server_adds_the_centre_back_to_the_noised_mean():
    mech = mechanism(ADAPTIVE)
    step = dp_fedavg.AdaptClipNorm(mech)
    step(1, Aggregate({"w": np.zeros(4)}, PER_ROUND, PER_ROUND, mean_statistics={dp_fedavg.UNCLIPPED: np.asarray([0.3])}))
    assert mech.last_unclipped_fraction == pytest.approx(0.8)


@pytest.mark.parametrize(("sampling", "divisor"), [("fixed", PER_ROUND - 4), ("poisson", PER_ROUND)])
def test_the_servers_count_noise_is_sized_for_the_planned_round_not_the_survivors(monkeypatch, sampling, divisor):
    mech = mechanism({**ADAPTIVE, "clipped_count_stddev": 0.0, "target_epsilon": 50.0}, sampling=sampling)  # σ_b = m / 20 of the planned m
    stds = []

    def recording(arrays, std, stream):
        stds.append(std)
        return dict(arrays)

    monkeypatch.setattr(dp_fedavg, "add_gaussian_noise", recording)
    survivors = PER_ROUND - 4
    aggregate = Aggregate({"w": np.zeros(4)}, survivors, survivors, mean_statistics={dp_fedavg.UNCLIPPED: np.zeros(1)})
    dp_fedavg.CentralGaussianNoise(mech)(1, aggregate)
    # on the mean: σ_b of the planned round over the sum's divisor (the survivors under fixed-size rounds, the planned m
    # under Poisson's fixed denominator)
    assert stds[1] == pytest.approx((PER_ROUND / 20) / divisor)


@pytest.mark.parametrize(("protocol", "hides"), [("none", False), ("masking", True)])
def test_epsilon_against_the_server_counts_the_noise_it_sees(protocol, hides, caplog):
    mech = mechanism({"noise_placement": "clients"}, protocol)
    assert ("without secure aggregation" in caplog.text) is not hides
    mech.participations = {0: 3, 1: 2}
    z = mech.noise_multiplier if hides else mech.noise_multiplier / math.sqrt(PER_ROUND)
    # replace-one against the server (it knows who took part): sensitivity 2C, z / 2
    expected = accounting.compute_epsilon([GaussianSteps(z / 2, 1.0, 3)], accountant=mech.accountant, delta=mech.delta)
    assert mech.epsilon_against_server() == pytest.approx(expected, rel=1e-9)
    if not hides:
        assert mech.epsilon_against_server() > 3 * accounting.compute_epsilon(
            [GaussianSteps(mech.noise_multiplier, 1.0, 3)], accountant=mech.accountant, delta=mech.delta
        )
        assert "own noise share only" in mech.ledger({})["epsilon_against_server_note"]


def test_an_empty_poisson_batch_step_applies_what_follows_privatization():
    """FedProx's term and EWC's importance record run after a step's privatization; on an empty batch they were skipped,
    so the trajectory told which of a client's secret Poisson batches were empty."""
    prepared = prepare_run(
        config_from_dict(
            {
                "run": {"seed": 3},
                "data": {"dataset": "digits", "max_train_examples": 100, "max_test_examples": 20, "num_clients": 2},
                "model": {"arch": "cnn", "finetune": "full"},
                "privacy": {"mode": "dp-sgd"},
            }
        )
    )

    def pull(params):  # a data-independent term, as FedProx's mu (w - w_global): here +1 on every coordinate
        for p in params:
            p.grad.add_(1.0)

    def step(extra):
        after, _ = one_dp_step(
            prepared,
            mode="bookkeeping",
            noise_multiplier=1.0,
            max_grad_norm=0.5,
            size=4,
            stream=FastStream(bytes(range(32))),
            noise_only=True,
            extra_gradient=extra,
        )
        return after

    plain, pulled = step(None), step(pull)
    for name in plain:  # SGD at lr 1: the term moved every parameter by -1 on top of the same noise
        torch.testing.assert_close(pulled[name] - plain[name], torch.full_like(plain[name], -1.0), rtol=0, atol=1e-5, msg=name)


def test_the_centred_statistic_survives_a_run_with_client_shares(tmp_path):
    privacy = {**ADAPTIVE, "noise_placement": "clients", "target_epsilon": 1e6, "clip_norm": 1e3, "clipped_count_stddev": 0.01}
    Simulation(prepare_run(config(privacy, "ckks")), out_dir=tmp_path / "run").run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # every update is far under C = 1000: the fraction is 1 up to the (negligible) noise, not 1/2 or 3/2
    assert all(r["unclipped_fraction"] == pytest.approx(1.0, abs=0.05) for r in rows), [r["unclipped_fraction"] for r in rows]


@pytest.mark.parametrize(("claimed", "expected"), [(4, 4), (10, 10), (50, 10), (0, 1), (-1, 1), (float("nan"), 1), ("4", 1), (True, 1)])
def test_a_noise_share_is_sized_for_the_claimed_round_at_most_the_planned_one(claimed, expected):
    # a share is σ / √m: a larger m than planned would shrink it, and 0 or -1 ended the client with ZeroDivisionError or a
    # math domain error; anything that is not a positive count gets the whole noise
    assert dp_fedavg.claimed_participants(claimed, planned=10) == expected


def test_a_diverged_update_is_sent_as_zeros_not_as_nan_or_a_decline():
    """Local training a crafted model made diverge (on one example's values) gave a NaN update: plaintext NaN, or a
    decline under masking, either readable beside the noise. The clipped update is zeros instead (norm 0 <= C)."""
    mech = mechanism(ADAPTIVE)
    clip = mech.client_transforms()[0]
    update = ClientUpdate(0, 1, {"w": np.asarray([1.0, np.nan, 2.0], dtype=np.float32), "b": np.ones(2, dtype=np.float32)}, 10)
    context = TransformContext(round=1, client_id=0, rng=np.random.default_rng(0), global_parameters={}, config={"clip_norm": 1.0})
    out = clip(update, context)
    assert all(np.array_equal(v, np.zeros_like(v)) for v in out.delta.values())
    assert float(out.statistics[dp_fedavg.UNCLIPPED][0]) == -0.5  # counted as clipped


def test_distributed_dp_sgd_rows_with_non_finite_values_contribute_nothing():
    from secure_ffm.privacy.distributed_dp_sgd import clip_rows

    rows = np.asarray([[3.0, 4.0], [np.nan, 1.0], [np.inf, 0.0]])
    for sizes in (None, [1, 1]):
        clipped = clip_rows(rows.copy(), 1.0, sizes=sizes)
        assert np.isfinite(clipped).all() and not clipped[1:].any()
        assert np.linalg.norm(clipped[0]) == pytest.approx(1.0)


def test_without_secure_aggregation_the_server_tops_up_the_shares_of_clients_whose_update_is_missing():
    """4 planned participants, 3 updates arrived: the sum lacks one share N(0, σ²/4); the server adds it from its own
    secret, so the mean carries σ/3 in all (until 2026-12-07 it released σ sqrt(3/4)/3)."""
    mech = mechanism({"mode": "dp-fedavg", "target_epsilon": 3.0, "noise_placement": "clients", "clip_norm": 0.5})
    (top_up,) = [step for step in mech.aggregate_steps() if isinstance(step, dp_fedavg.TopUpMissingShares)]
    m = mech.participants
    zeros = Aggregate({"w": np.zeros(200_000)}, m - 1, m - 1)
    noised = top_up(1, zeros).mean_delta["w"]
    expected = mech.update_noise_multiplier * 0.5 * np.sqrt(1 / m) / (m - 1)
    assert np.std(noised) == pytest.approx(expected, rel=0.01)
    complete = Aggregate({"w": np.zeros(10)}, m, m)
    assert np.array_equal(top_up(1, complete).mean_delta["w"], np.zeros(10))


def test_under_ckks_each_client_adds_its_share_of_the_count_noise_to_the_unclipped_statistic():
    """With client-placed noise under CKKS the server decrypts the sum of the statistics, so each client's share must
    carry σ_b / √m of the count's noise: any m of them add up to the σ_b the ledger counts."""
    from secure_ffm.privacy.distributed import minimum_shares
    from secure_ffm.privacy.noise import PrivateRandomness

    privacy = {**ADAPTIVE, "noise_placement": "clients"}
    mech = mechanism(privacy, protocol="ckks")
    m = minimum_shares(config(privacy, protocol="ckks"))
    clip, share = mech.client_transforms()
    assert type(share).__name__ == "GaussianNoiseShare"
    noise = []
    for client in range(400):
        randomness = PrivateRandomness(bytes([client % 256, client // 256]) * 16)
        context = TransformContext(
            round=1,
            client_id=client,
            rng=np.random.default_rng(client),
            global_parameters={},
            config={"clip_norm": 1.0, "participants": PER_ROUND},
            randomness=randomness,
        )
        clipped = clip(ClientUpdate(client, 1, {"w": np.full(4, 0.1, dtype=np.float32)}, 10), context)
        sent = share(clipped, context)
        noise.append(float(sent.statistics[dp_fedavg.UNCLIPPED][0] - clipped.statistics[dp_fedavg.UNCLIPPED][0]))
    expected = mech.count_std(PER_ROUND) / math.sqrt(m)
    # 400 draws: the sample std lies within about 3.5 / √(2 · 400) = 12% of the true one
    assert np.std(noise) == pytest.approx(expected, rel=0.15)
    assert abs(np.mean(noise)) < 4 * expected / math.sqrt(400)
