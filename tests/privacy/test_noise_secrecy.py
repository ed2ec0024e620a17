"""DP noise the server cannot recompute (issue 11): the audit's attack, replayed against the engine.

The audit regenerated a client's DP noise from the public config (run.seed is written to
config.toml) and subtracted it. The strongest form of that attack replays the very same
client computation from public information: same config, same seed, same data, same code.
If the noise came from the seed, the replay equals the client's message bit for bit, and
subtracting it removes the noise. With each party's secret, the replay only adds noise.
"""

import json

import numpy as np
import pytest

from secure_ffm.config import config_from_dict
from secure_ffm.engine.transforms import TransformContext
from secure_ffm.engine.wire import ClientUpdate
from secure_ffm.privacy.dp_fedavg import ClipUpdate, GaussianNoiseShare
from secure_ffm.privacy.noise import CLIENT_SECRET_KEY, SEED_WARNING, TRANSFORM, NoisePolicy, PrivateRandomness
from secure_ffm.run.simulation import Simulation, prepare_run


def config(privacy, **sections):
    raw = {
        "run": {"seed": 0},
        "data": {"dataset": "fashion_mnist", "max_train_examples": 600, "max_test_examples": 100, "num_clients": 4, "partition": "iid"},
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 1, "batch_size": 32, "lr": 0.5},
        "server": {"rounds": 1},
        "privacy": privacy,
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def first_update(cfg, client_id=0):
    """Client ``client_id``'s update after its pre-send transforms in round 1: what a plaintext server receives."""
    simulation = Simulation(prepare_run(cfg))
    participants = simulation.server.sample_clients(1)
    instructions = simulation.server.fit_instructions(1, participants)
    client = simulation.client(client_id)
    update = client.train(instructions)
    randomness = client.randomness()
    context = TransformContext(
        round=1,
        client_id=client_id,
        rng=randomness.generator(TRANSFORM, 1),
        randomness=randomness,
        global_parameters=instructions.parameters,
        state=client.state,
        config=instructions.config,
    )
    update = simulation.transforms(update, context)
    return np.concatenate([a.ravel().astype(np.float64) for _, a in sorted(update.delta.items())])


DP_MODES = [
    pytest.param({"mode": "dp-sgd", "target_epsilon": 1.0}, id="dp-sgd"),
    pytest.param({"mode": "dp-sgd", "target_epsilon": 1.0, "secure_mode": False}, id="dp-sgd-philox"),
    pytest.param({"mode": "dp-fedavg", "target_epsilon": 1.0, "noise_placement": "clients", "clip_norm": 0.1}, id="dp-fedavg-shares"),
]


@pytest.mark.parametrize("privacy", DP_MODES)
def test_replaying_the_client_from_the_public_config_does_not_remove_its_noise(privacy):
    observed = first_update(config(privacy))
    replayed = first_update(config(privacy))  # everything public: config, seed, data, code
    residual = np.linalg.norm(observed - replayed)
    # independent noise of equal size: the residual is about sqrt(2) times the observed update's norm
    assert residual > 0.5 * np.linalg.norm(observed)


@pytest.mark.parametrize("privacy", DP_MODES)
def test_reproducible_noise_opt_in_is_exactly_what_the_attack_removes(privacy):
    # the research opt-in shows the attack works whenever the noise comes from the seed (as it did before issue 11)
    cfg = config({**privacy, "reproducible_noise": True})
    assert np.array_equal(first_update(cfg), first_update(cfg))


def test_server_central_noise_is_not_reproducible_from_the_config():
    cfg = config({"mode": "dp-fedavg", "target_epsilon": 1.0})
    draws = [prepare_run(cfg).privacy.noise_stream(1).normal((1000,), 1.0) for _ in range(2)]
    assert np.linalg.norm(draws[0] - draws[1]) > 30  # two independent N(0, 1)^1000: about 44.7


def test_dp_fedavg_client_sampling_is_not_reproducible_from_the_config():
    cfg = config(
        {"mode": "dp-fedavg", "target_epsilon": 1.0}, data={"num_clients": 40, "max_train_examples": 1200}, server={"clients_per_round": 5}
    )
    samples = {tuple(Simulation(prepare_run(cfg)).server.sample_clients(1)) for _ in range(4)}
    assert len(samples) > 1  # 4 draws of 5 of 40 clients: all equal with probability < 1e-17


def round_context(fit_config, randomness):
    """A client's transform context for round 1 with the server's ``fit_config``."""
    return TransformContext(
        round=1, client_id=0, rng=np.random.default_rng(0), global_parameters={}, config=fit_config, randomness=randomness
    )


def test_client_shares_do_not_shrink_when_the_server_claims_more_participants():
    cfg = config({"mode": "dp-fedavg", "target_epsilon": 1.0, "noise_placement": "clients", "clip_norm": 0.1, "reproducible_noise": True})
    share = next(t for t in prepare_run(cfg).privacy.client_transforms() if isinstance(t, GaussianNoiseShare))
    assert share.min_shares == 4
    zeros = ClientUpdate(0, 1, {"w": np.zeros(4000, dtype=np.float32)}, 10)
    randomness = PrivateRandomness(b"k" * 32)

    def noise_norm(claimed):
        context = round_context({"participants": claimed, "clip_norm": 0.1}, randomness)
        return float(np.linalg.norm(share(zeros, context).delta["w"]))

    assert noise_norm(1_000_000) == pytest.approx(noise_norm(4), rel=1e-6)  # capped at its own planned round size
    assert noise_norm(2) > 1.3 * noise_norm(4)  # fewer participants than planned: more noise each (safe)


@pytest.mark.parametrize(
    "privacy", [{"mode": "dp-sgd", "target_epsilon": 4.0}, {"mode": "dp-fedavg", "target_epsilon": 4.0, "noise_placement": "clients"}]
)
def test_no_published_file_holds_a_client_or_server_secret(tmp_path, privacy):
    cfg = config(privacy, server={"rounds": 2}, audit={"capture_clients": [0]})
    Simulation(prepare_run(cfg), out_dir=tmp_path / "run").run()
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("round_*/state.json")).read_text())
    secrets = [s[CLIENT_SECRET_KEY] for s in state["client_states"].values()]
    server_secret = state["server_state"].get("privacy", {}).get("noise_secret")
    secrets += [server_secret] if server_secret else []
    assert len(secrets) >= 4 and all(len(s) == 64 for s in secrets)
    published = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and "checkpoints" not in p.parts]
    assert any(p.name == "privacy.json" for p in published) and any("observations" in p.parts for p in published)
    for path in published:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content and bytes.fromhex(secret) not in content, path


@pytest.mark.parametrize("reproducible", [False, True])
def test_privacy_json_and_summary_say_where_the_noise_comes_from(tmp_path, reproducible):
    cfg = config({"mode": "dp-fedavg", "target_epsilon": 4.0, "reproducible_noise": reproducible})
    Simulation(prepare_run(cfg), out_dir=tmp_path / "run").run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for noise in (ledger["noise"], summary["privacy"]["noise"], summary["noise"]):
        assert noise["source"] == ("seed" if reproducible else "os-csprng")
        assert (noise.get("warning") == SEED_WARNING) is reproducible


def test_a_client_keeps_the_secret_it_drew_and_clients_differ():
    policy = NoisePolicy()
    state_a, state_b = {}, {}
    a1, a2, b = policy.client(0, state_a), policy.client(0, state_a), policy.client(1, state_b)
    assert a1.secret == a2.secret != b.secret
    assert a1.secret.hex() not in repr(a1) and str(a1.secret) not in repr(a1)


def test_dp_fedavg_reports_epsilon_against_the_server_without_amplification(tmp_path):
    from secure_ffm.privacy.accounting import GaussianSteps, compute_epsilon

    cfg = config(
        {"mode": "dp-fedavg", "target_epsilon": 8.0, "noise_placement": "clients", "accountant": "rdp"},
        data={"num_clients": 8, "max_train_examples": 800},
        server={"rounds": 3, "clients_per_round": 4},
        # the server sees only the sum (the shares' whole noise); without a protocol that hides updates it is z / sqrt(m)
        # (tests/privacy/test_dp_fedavg_accounting.py)
        secure_aggregation={"protocol": "ckks"},
    )
    Simulation(prepare_run(cfg), out_dir=tmp_path / "run").run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    # who took part stays in checkpoints/ (the published metrics.jsonl withholds it: tests/privacy/test_client_sampling.py)
    rows = [json.loads(line) for line in (tmp_path / "run" / "checkpoints" / "participation.jsonl").read_text().splitlines()]
    most = max(sum(c in r["clients"] for r in rows) for c in range(8))
    # replace-one (the server knows who took part): sensitivity 2C, the noise multiplier z / 2
    expected = compute_epsilon([GaussianSteps(ledger["noise_multiplier"] / 2, 1.0, most)], accountant="rdp", delta=ledger["delta"])
    assert ledger["epsilon_against_server"] == pytest.approx(expected, rel=1e-9)
    assert ledger["epsilon_against_server"] > ledger["epsilon"]  # the server knows whom it sampled


def test_dp_fedavg_with_server_noise_gives_no_epsilon_against_the_server(tmp_path):
    Simulation(prepare_run(config({"mode": "dp-fedavg", "target_epsilon": 8.0})), out_dir=tmp_path / "run").run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert ledger["epsilon_against_server"] is None and "exact sum" in ledger["epsilon_against_server_note"]


def _clip_and_share(*, follows_server, server_clip):
    update = ClientUpdate(0, 1, {"w": np.full(10_000, 0.5, dtype=np.float32)}, 10, {})  # norm 50
    context = round_context({"clip_norm": server_clip, "participants": 4}, PrivateRandomness(b"c" * 32))
    clipped = ClipUpdate(clip_norm=1.0, follows_server=follows_server)(update, context)
    noised = GaussianNoiseShare(noise_multiplier=2.0, clip_norm=1.0, min_shares=4, follows_server=follows_server)(clipped, context)
    return float(np.linalg.norm(clipped.delta["w"])), float(np.std(noised.delta["w"] - clipped.delta["w"]))


def test_without_adaptive_clipping_a_dp_fedavg_client_clips_and_noises_to_its_own_norm():
    """A server sending one client a larger C would raise that client's sensitivity above the others' shares."""
    norm, share_std = _clip_and_share(follows_server=False, server_clip=1000.0)
    assert norm == pytest.approx(1.0, rel=1e-5)
    assert share_std == pytest.approx(2.0 * 1.0 / 2, rel=0.05)  # z C / sqrt(m), m = 4


def test_with_adaptive_clipping_the_round_clip_norm_comes_from_the_server():
    norm, share_std = _clip_and_share(follows_server=True, server_clip=3.0)
    assert norm == pytest.approx(3.0, rel=1e-5)
    assert share_std == pytest.approx(2.0 * 3.0 / 2, rel=0.05)


@pytest.mark.parametrize(
    ("privacy", "secret"),
    [
        ({"mode": "dp-sgd", "target_epsilon": 8.0}, True),
        ({"mode": "dp-sgd", "target_epsilon": 8.0, "reproducible_noise": True}, False),
        ({"mode": "dp-fedavg", "target_epsilon": 8.0}, False),  # user-level: a client's masks depend on its own data only
        ({"mode": "none"}, False),
    ],
)
def test_sample_level_dp_seeds_local_training_from_the_clients_secret(monkeypatch, privacy, secret):
    """Dropout and MLM masks are handed out by position in a batch, so an example joining it moves the masks the others
    get; with the masks known from run.seed (config.toml) an audit measured one example changing a LoRA step by 1.42 C
    where DP-SGD's accounting assumes C, and the next step, where it was not sampled, by 0.90 C."""
    import secure_ffm.engine.client as client_module
    from secure_ffm.seeding import TRAINING, derive_seed

    seeds = []
    monkeypatch.setattr(client_module, "seed_torch", lambda seed: seeds.append((seed)))
    cfg = config(privacy, server={"rounds": 1})
    Simulation(prepare_run(cfg)).run()
    public = {derive_seed(cfg.run.seed, TRAINING, 1, c) for c in range(cfg.data.num_clients)}
    assert seeds and all((seed not in public) is secret for seed in seeds)


def test_a_defense_that_reads_raw_examples_is_flagged_outside_a_dp_guarantee(tmp_path, caplog):
    """Soteria scores features on the client's own examples to choose what to zero: a DP-SGD run accepted it silently
    and privacy.json claimed ε for an update shaped by data no noise covered (an audit of 2026-12-07)."""
    cfg = config(
        {"mode": "dp-sgd", "target_epsilon": 8.0},
        defense={"names": ["soteria"], "soteria_examples": 1},
    )
    Simulation(prepare_run(cfg), out_dir=tmp_path / "run").run()
    ledger = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert ledger["outside_the_guarantee"]["transforms"] == ["soteria"]
    assert "read each client's raw examples" in caplog.text
    plain = config({"mode": "dp-sgd", "target_epsilon": 8.0}, defense={"names": ["prune"]})
    Simulation(prepare_run(plain), out_dir=tmp_path / "pruned").run()
    assert "outside_the_guarantee" not in json.loads((tmp_path / "pruned" / "privacy.json").read_text())
