"""No round may push a run's ε past its target: resuming with more rounds is refused up front (issue 11).

The audit's reproduction: ``train --set privacy.mode="dp-fedavg" --set privacy.target_epsilon=2
--set server.rounds=2 --out R``, then the same with ``server.rounds=4 --resume``, exited 0 and
privacy.json said target 2.0, spent 2.57.
"""

import json
import re

import pytest

from secure_ffm.run.cli import main

TINY = """
[run]
seed = 3
[data]
dataset = "fashion_mnist"
max_train_examples = 400
max_test_examples = 100
num_clients = 4
partition = "iid"
[model]
arch = "cnn"
finetune = "full"
[client]
local_steps = 2
batch_size = 32
lr = 0.1
"""

MODES = {
    "dp-fedavg": ["privacy.mode=dp-fedavg", "privacy.target_epsilon=2"],
    "dp-sgd": ["privacy.mode=dp-sgd", "privacy.target_epsilon=2"],
    "distributed-dp-sgd": ["privacy.mode=distributed-dp-sgd", "privacy.target_epsilon=2", 'secure_aggregation.protocol="masking"'],
}


def train(config, out, *sets, resume=False):
    argv = ["train", str(config), "--out", str(out), "--quiet"]
    for assignment in sets:
        argv += ["--set", assignment]
    return main([*argv, "--resume"] if resume else argv)


def snapshot(run_dir):
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_resuming_with_more_rounds_than_the_budget_pays_for_is_refused(config_file, tmp_path, capsys, mode):
    out = tmp_path / "run"
    assert train(config_file, out, *MODES[mode], "server.rounds=2") == 0
    before = snapshot(out)
    capsys.readouterr()
    code = train(config_file, out, *MODES[mode], "server.rounds=4", resume=True)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "server.rounds" in err and "target_epsilon=2" in err
    fit = int(re.search(r"server\.rounds=(\d+) at most", err).group(1))
    assert fit == 2  # the budget was planned for exactly 2 rounds: not one more fits
    assert snapshot(out) == before  # nothing written or changed


def test_dp_fedavg_resume_within_the_budget_spends_at_most_the_target(config_file, tmp_path):
    # a budget with room: z calibrated for 2 rounds at ε = 2 is kept; a run planned for 3 rounds stops at 3
    out = tmp_path / "run"
    sets = [*MODES["dp-fedavg"], "privacy.noise_multiplier=3.0", "privacy.accountant=rdp"]
    assert train(config_file, out, *sets, "server.rounds=1") == 0
    ledger = json.loads((out / "privacy.json").read_text())
    assert ledger["epsilon"] <= 2.0
    assert train(config_file, out, *sets, "server.rounds=2", resume=True) == 0
    ledger = json.loads((out / "privacy.json").read_text())
    assert ledger["rounds"] == 2 and ledger["epsilon"] <= 2.0 * (1 + 1e-9)


@pytest.mark.parametrize(
    "change",
    ["client.local_steps=3", "client.batch_size=16", "server.clients_per_round=2", "privacy.planned_rounds=1", "privacy.target_epsilon=3"],
)
def test_resume_refuses_any_change_to_the_planned_steps(config_file, tmp_path, capsys, change):
    out = tmp_path / "run"
    assert train(config_file, out, *MODES["dp-sgd"], "server.rounds=1") == 0
    before = snapshot(out)
    capsys.readouterr()
    code = train(config_file, out, *MODES["dp-sgd"], "server.rounds=1", change, resume=True)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and change.split("=")[0] in err, err
    assert snapshot(out) == before


def most_spent(run_dir):
    epsilon = json.loads((run_dir / "privacy.json").read_text())["epsilon"]
    return epsilon["max"] if isinstance(epsilon, dict) else epsilon  # sample-level modes: a spread over the clients


@pytest.mark.parametrize("mode", MODES)
def test_an_ffm_run_plans_its_noise_for_the_federated_rounds_and_may_add_public_units(config_file, tmp_path, capsys, mode):
    # public, federated, public, federated: the noise is calibrated for the 2 federated rounds, which spend the target
    ffm = ["data.public_fraction=0.3", 'ffm.schedule="alternating"', "ffm.public_steps=2", "privacy.accountant=rdp"]
    out = tmp_path / "run"
    assert train(config_file, out, *MODES[mode], *ffm, "server.rounds=4") == 0
    spent = most_spent(out)
    assert 1.95 <= spent <= 2.0 * (1 + 1e-9)
    assert train(config_file, out, *MODES[mode], *ffm, "server.rounds=5", resume=True) == 0  # round 5 is public: free
    assert most_spent(out) == spent
    before = snapshot(out)
    capsys.readouterr()
    assert train(config_file, out, *MODES[mode], *ffm, "server.rounds=6", resume=True) == 2  # round 6 is federated
    err = capsys.readouterr().err.strip()
    assert re.search(r"server\.rounds=5 at most", err), err
    assert snapshot(out) == before
