"""[continual] is validated before anything runs: one line naming the key, exit 2, nothing written."""

import numpy as np
import pytest
from continual_cases import BASE, TWO_CLASS_STAGES, continual_toml, train

from secure_ffm.config import config_from_dict, load_config
from secure_ffm.data import load_run_data
from secure_ffm.errors import ConfigError
from secure_ffm.run.simulation import prepare_run


def test_server_rounds_is_the_sum_of_the_stages(write_config):
    config = load_config(write_config(continual_toml()))
    assert config.server.rounds == 4 and config.continual.rounds == 4


def test_server_rounds_that_disagree_with_the_stages_are_refused(write_config):
    with pytest.raises(ConfigError, match="server.rounds: 5 is not the 4 rounds"):
        load_config(write_config(continual_toml(extra="[server]\nrounds = 5\n")))


def test_a_config_round_trips_through_its_toml(write_config):
    config = load_config(write_config(continual_toml("replay")))
    again = load_config(write_config(config.to_toml(), "again.toml"))
    assert again == config


def test_an_unknown_method_is_refused_with_the_nearest_name(write_config):
    with pytest.raises(ConfigError, match="continual.method.*replay"):
        load_config(write_config(continual_toml("replya")))


def test_an_unknown_stage_key_is_refused_naming_the_stage(write_config):
    stages = "[[continual.stages]]\nrounds = 1\nclasess = [0]\n"
    with pytest.raises(ConfigError, match=r"continual.stages\[0\]"):
        load_config(write_config(continual_toml(stages=stages)))


def test_no_stages_is_refused():
    with pytest.raises(ConfigError, match="continual.stages: is empty"):
        config_from_dict({"continual": {"method": "naive"}})


def test_two_stages_of_one_name_are_refused(write_config):
    stages = '[[continual.stages]]\nname = "a"\nrounds = 1\n[[continual.stages]]\nname = "a"\nrounds = 1\n'
    with pytest.raises(ConfigError, match="two stages are named 'a'"):
        load_config(write_config(continual_toml(stages=stages)))


def test_a_class_the_head_does_not_have_is_refused_naming_the_stage(write_config):
    stages = "[[continual.stages]]\nrounds = 1\nclasses = [0]\n[[continual.stages]]\nrounds = 1\nclasses = [11]\n"
    with pytest.raises(ConfigError, match=r"continual.stages\[1\].classes: '11' is not a class of 'digits'"):
        load_run_data(load_config(write_config(continual_toml(stages=stages))))


def test_a_stage_dataset_with_other_classes_is_refused(write_config):
    stages = '[[continual.stages]]\nrounds = 1\n[[continual.stages]]\nrounds = 1\ndataset = "fashion_mnist"\n'
    config = load_config(write_config(continual_toml(stages=stages)))
    with pytest.raises(ConfigError, match=r"continual.stages\[1\].dataset: 'fashion_mnist' has classes"):
        load_run_data(config)


def test_releases_of_more_than_all_the_data_are_refused(write_config):
    stages = "[[continual.stages]]\nrounds = 1\nrelease = 0.7\n[[continual.stages]]\nrounds = 1\nrelease = 0.5\n"
    with pytest.raises(ConfigError, match=r"continual.stages\[1\].release"):
        load_run_data(load_config(write_config(continual_toml(stages=stages))))


def test_a_replay_buffer_larger_than_any_clients_earlier_data_is_refused(write_config):
    with pytest.raises(ConfigError, match="continual.replay_buffer: 5000 is more than"):
        prepare_run(load_config(write_config(continual_toml("replay", replay_buffer=5000))))


def test_ewc_is_refused_with_dp_fedavg_whose_statistics_are_not_private(write_config):
    extra = '[privacy]\nmode = "dp-fedavg"\nnoise_multiplier = 1.0\n'
    with pytest.raises(ConfigError, match="continual.method: ewc sends per-client gradient importances"):
        prepare_run(load_config(write_config(continual_toml("ewc", extra=extra))))


def test_continual_with_public_data_is_refused(write_config):
    with pytest.raises(ConfigError, match="continual: continual learning trains on the clients' private data only"):
        load_config(write_config(continual_toml().replace('dataset = "digits"\n', 'dataset = "digits"\npublic_fraction = 0.1\n')))


def test_bad_input_exits_2_and_writes_nothing(write_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(write_config(continual_toml("replay", replay_buffer=5000)), out) == 2
    assert not out.exists()
    assert "continual.replay_buffer" in capsys.readouterr().err


def test_class_incremental_stages_hold_only_their_classes(write_config):
    data = load_run_data(load_config(write_config(continual_toml())))
    first, second = data.stages
    for stage, labels in ((first, {0, 1}), (second, {2, 3})):
        assert set(np.unique(data.test.labels[stage.test_indices])) == labels
        for indices in stage.client_indices:
            assert set(np.unique(data.private.labels[indices])) <= labels
    assert (first.first_round, first.last_round, second.first_round, second.last_round) == (1, 2, 3, 4)
    for k in range(data.num_clients):  # a client's lifetime data is the union of its stages'
        assert np.array_equal(data.client_indices[k], np.union1d(first.client_indices[k], second.client_indices[k]))


def test_released_shares_are_disjoint_and_cover_each_clients_data(write_config):
    stages = "".join(f"[[continual.stages]]\nrounds = 1\nrelease = {share}\n" for share in (0.5, 0.25, 0.25))
    data = load_run_data(load_config(write_config(continual_toml(stages=stages))))
    baseline = load_run_data(load_config(write_config(BASE, "plain.toml")))
    for k in range(data.num_clients):
        parts = [stage.client_indices[k] for stage in data.stages]
        assert sum(len(p) for p in parts) == len(baseline.client_indices[k])
        assert np.array_equal(np.sort(np.concatenate(parts)), np.sort(baseline.client_indices[k]))
        assert abs(len(parts[0]) - len(baseline.client_indices[k]) / 2) <= 1


@pytest.mark.parametrize(
    "stages",
    [
        TWO_CLASS_STAGES,  # disjoint stages: the plan is the union's size exactly
        "[[continual.stages]]\nrounds = 1\nclasses = [0, 1, 2]\n[[continual.stages]]\nrounds = 1\nclasses = [0, 1, 2, 3, 4]\n"
        "[[continual.stages]]\nrounds = 1\nclasses = [2, 3, 4, 5]\n",  # overlapping stages: their examples repeat
    ],
)
def test_replay_plans_no_more_examples_than_a_client_trains_on(write_config, stages):
    """DP-SGD plans each client's sampling rate from the planned size: a plan larger than the union a client trains on
    used a higher rate than planned, and clients declined a round the plan promised (an audit: 266 planned, 246 held)."""
    from secure_ffm.continual.methods import build_method
    from secure_ffm.privacy.noise import PrivateRandomness, new_secret

    config = load_config(write_config(continual_toml("replay", stages=stages, replay_buffer=20)))
    data = load_run_data(config)
    method = build_method(config, data)
    for stage in data.stages:
        for k in range(data.num_clients):
            planned = method.training_size(stage, k)
            for _ in range(3):  # the buffer is a secret draw: the plan must hold for any
                state: dict = {}
                assert planned <= len(method.training_indices(stage, k, state, PrivateRandomness(new_secret())))
            if stages is TWO_CLASS_STAGES:
                earlier = sum(len(s.client_indices[k]) for s in data.stages[: stage.index])
                assert planned == len(stage.client_indices[k]) + min(20, earlier)
