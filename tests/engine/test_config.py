import pytest

from secure_ffm.config import Config, config_from_dict, load_config
from secure_ffm.errors import ConfigError


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"client\.lrr: unknown key \(did you mean client\.lr\?\)"):
        config_from_dict({"client": {"lrr": 0.1}})


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"client": {"lrr": 0.1}})
    assert info.value.key == "client.lrr"
    assert "client.lr" in str(info.value)


def test_unknown_section_suggests_nearest():
    with pytest.raises(ConfigError, match=r"\[sever\]: unknown section \(did you mean \[server\]\?\)"):
        config_from_dict({"sever": {"rounds": 2}})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"client": {"lr": 0}}, "client.lr"),
        ({"client": {"lr": -0.1}}, "client.lr"),
        ({"data": {"alpha": 0.0}}, "data.alpha"),
        ({"server": {"rounds": 0}}, "server.rounds"),
        ({"client": {"lr": "fast"}}, "client.lr"),
        ({"server": {"rounds": 2.5}}, "server.rounds"),
        ({"server": {"evaluate_clients": 1}}, "server.evaluate_clients"),
        ({"model": {"finetune": "lorra"}}, "model.finetune"),
        ({"data": {"num_clients": 4}, "server": {"clients_per_round": 5}}, "server.clients_per_round"),
    ],
)
def test_bad_values_name_their_key(raw, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert info.value.key == key


def test_overrides_parse_toml_literals_and_strings():
    config = config_from_dict({}, overrides=["client.lr=0.5", "data.dataset=trec", "model.lora_target_modules=['query']"])
    assert config.client.lr == 0.5
    assert config.data.dataset == "trec"
    assert config.model.lora_target_modules == ("query",)


def test_int_is_accepted_for_float():
    assert config_from_dict({"client": {"lr": 1}}).client.lr == 1.0


def test_toml_round_trip(tmp_path):
    config = config_from_dict({"data": {"dataset": "sms_spam", "alpha": 0.1}, "server": {"strategy": "fedadam"}})
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.toml"))
    assert configs, "configs/ holds no TOML file"
    training = [p for p in configs if not p.name.startswith(("attack_", "sweep_", "pipeline_"))]  # those are checked by their own tests
    assert training
    for path in training:
        assert isinstance(load_config(path), Config)


def test_config_and_sweep_files_refuse_unknown_names_with_the_one_shared_suggestion():
    from eval.spec import sweep_from_dict
    from secure_ffm.registry import did_you_mean

    assert did_you_mean("lrr", ["lr", "momentum"]) == "did you mean 'lr'?"
    assert did_you_mean("zzz", ["lr", "momentum"], listing="valid keys") == "valid keys: lr, momentum"
    assert did_you_mean("sever", ["server"], show=lambda hint: f"[{hint}]") == "did you mean [server]?"
    with pytest.raises(ConfigError, match=r"client\.zzz: unknown key \(valid keys: local_epochs, ") as config_error:
        config_from_dict({"client": {"zzz": 1}})
    with pytest.raises(ConfigError, match=r"sweep\.nmae: unknown key \(did you mean sweep\.name\?\)") as sweep_error:
        sweep_from_dict({"sweep": {"nmae": "x"}})
    assert config_error.value.key == "client.zzz" and sweep_error.value.key == "sweep.nmae"


@pytest.fixture
def beside_the_config(tmp_path, monkeypatch):
    """configs/run.toml names hf:./reviews, a dataset folder beside it; the current directory is another folder."""
    configs = tmp_path / "configs"
    (configs / "reviews").mkdir(parents=True)
    (configs / "reviews" / "train.csv").write_text("text,label\nhello,0\n", encoding="utf-8")
    (configs / "run.toml").write_text('[data]\ndataset = "hf:./reviews"\n\n[model]\narch = "cnn"\nfinetune = "full"\n', encoding="utf-8")
    (configs / "sweep.toml").write_text('[sweep]\nbase = "run.toml"\nseeds = [0]\n', encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return configs, elsewhere


@pytest.mark.parametrize(
    "command",
    [
        ["train", "configs/run.toml", "--out", "out"],
        ["privacy", "configs/run.toml"],
        ["attack", "configs/run.toml", "--out", "out"],
        ["sweep", "configs/sweep.toml", "--out", "out", "--quiet"],
    ],
    ids=lambda command: command[0],
)
def test_a_relative_hf_folder_resolves_from_the_current_directory_in_every_command(command, beside_the_config, capsys):
    from secure_ffm.run.cli import main

    configs, elsewhere = beside_the_config
    args = [str(configs.parent / a) if a.startswith("configs/") else str(elsewhere / a) if a == "out" else a for a in command]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "data.dataset" in line and "'hf:./reviews' does not exist" in line
    assert f"relative paths resolve from the current directory {elsewhere}" in line
    assert f"it exists at {configs / 'reviews'}: write 'hf:{configs / 'reviews'}'" in line
    assert not (elsewhere / "out").exists()


def test_local_paths_resolve_from_the_current_directory(beside_the_config, monkeypatch):
    from secure_ffm.config import check_local_paths, local_paths

    configs, elsewhere = beside_the_config
    config = load_config(configs / "run.toml")
    assert ("data.dataset", "hf:./reviews", "./reviews", True) in local_paths(config)
    monkeypatch.chdir(configs)
    check_local_paths(config, beside=configs)  # ./reviews is there
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError, match=r"data\.dataset: 'hf:\./reviews' does not exist") as info:
        check_local_paths(config, beside=configs)
    assert str(configs / "reviews") in str(info.value)
    # a name that may be a Hub dataset or model is left to the loaders unless it exists only beside the config
    check_local_paths(config.replace(**{"data.dataset": "hf:someone/reviews:plain", "model.name_or_path": "someone/model"}), beside=configs)
    with pytest.raises(ConfigError, match=r"'hf:reviews:plain' does not exist.*write 'hf:.*reviews:plain'"):
        check_local_paths(config.replace(**{"data.dataset": "hf:reviews:plain"}), beside=configs)
    (configs / "encoder").mkdir()
    with pytest.raises(ConfigError, match=r"model\.name_or_path: '\./encoder' does not exist"):
        check_local_paths(config.replace(**{"data.dataset": "fashion_mnist", "model.name_or_path": "./encoder"}), beside=configs)
    with pytest.raises(ConfigError, match=r"'hf:\./missing' does not exist.*write an absolute path, or one relative to"):
        check_local_paths(config.replace(**{"data.dataset": "hf:./missing"}))
