"""Sweep files: grid expansion (axes x seeds, stable ids, exclude) and validation before anything runs."""

import tomllib
from pathlib import Path

import pytest

from eval.spec import expand_grid, load_sweep, slug, sweep_from_dict
from secure_ffm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
AXES = {
    "privacy": {"none": [], "dp-sgd eps=1": ['privacy.mode="dp-sgd"', "privacy.target_epsilon=1.0"]},
    "defense": {
        "none": [],
        "prune 90%": ['defense.names=["prune"]', "defense.prune_fraction=0.9"],
        "secure aggregation": ['secure_aggregation.protocol="masking"'],
    },
}
BASE = {
    "data": {"dataset": "fashion_mnist", "max_train_examples": 200, "max_test_examples": 50, "num_clients": 2},
    "model": {"arch": "cnn", "finetune": "full"},
    "client": {"local_steps": 1},
    "server": {"rounds": 1},
}


def sweep_document(**changes):
    document = {"sweep": {"name": "t", "seeds": [0, 1], "overrides": ["server.rounds=1"]}, "base": BASE, "grid": AXES}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            document[section] = {**document[section], name: value}
        else:
            document[section] = value
    return document


def test_grid_is_the_product_of_axes_times_seeds_in_file_order():
    points = expand_grid(AXES, [0, 1], overrides=["server.rounds=1"])
    assert len(points) == 2 * 3 * 2
    assert [(p.setting("privacy"), p.setting("defense"), p.seed) for p in points[:4]] == [
        ("none", "none", 0), ("none", "none", 1), ("none", "prune 90%", 0), ("none", "prune 90%", 1),
    ]  # fmt: skip
    last = points[-1]
    assert last.overrides == (
        "server.rounds=1", 'privacy.mode="dp-sgd"', "privacy.target_epsilon=1.0", 'secure_aggregation.protocol="masking"', "run.seed=1",
    )  # fmt: skip


def test_point_ids_are_stable_unique_and_file_name_safe():
    first = [p.id for p in expand_grid(AXES, [0, 1])]
    again = [p.id for p in expand_grid(AXES, [0, 1])]
    assert first == again
    assert len(set(first)) == len(first)
    assert first[0] == "privacy-none__defense-none__seed-0"
    assert "privacy-dp-sgd-eps-1__defense-prune-90pct__seed-1" in first
    assert all(set(i) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_") for i in first)
    # an id depends only on the point's own settings: adding a setting or a seed keeps the others' ids
    more = {**AXES, "defense": {**AXES["defense"], "quantize 8": ['defense.names=["quantize"]']}}
    assert set(first) <= {p.id for p in expand_grid(more, [0, 1, 2])}
    assert slug("DP-SGD ε=0.5") == "dp-sgd-eps-0p5"


def test_exclude_drops_matching_combinations():
    exclude = [{"privacy": ("dp-sgd eps=1",), "defense": ("secure aggregation", "prune 90%")}]
    points = expand_grid(AXES, [0], exclude=exclude)
    assert len(points) == 6 - 2
    assert not any(p.setting("privacy") == "dp-sgd eps=1" and p.setting("defense") != "none" for p in points)
    spec = sweep_from_dict(sweep_document(sweep__exclude=[{"defense": "secure aggregation"}]))
    assert len(spec.points) == 2 * 2 * 2


def test_colliding_ids_are_rejected():
    with pytest.raises(ConfigError, match="same id"):
        expand_grid({"defense": {"prune 90%": [], "prune-90%": []}}, [0])


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sweep__exclude": [{"defence": "none"}]}, "unknown axis 'defence'"),
        ({"sweep__exclude": [{"defense": "prune 9%"}]}, "did you mean 'prune 90%'?"),
        ({"sweep__exclude": [{"defense": ["none", "prune 90%", "secure aggregation"]}]}, "excludes every point"),
        ({"sweep__seeds": [0, 0]}, "lists a seed twice"),
        ({"sweep__seeds": []}, "sweep.seeds"),
        ({"sweep__overrides": ["run.seed=3"]}, "list the seeds in sweep.seeds"),
        ({"sweep__overrides": ["server.rounds"]}, "is not section.key=value"),
        ({"sweep__nmae": "x"}, "sweep.nmae: unknown key (did you mean sweep.name?)"),
        ({"sweep__name": "../../../elsewhere"}, "sweep.name: '../../../elsewhere' is not a plain name"),  # runs/sweep-<name>
        ({"grid": {"privacy": {}}}, "grid.privacy: must be a non-empty table"),
        ({"grid": {"privacy": {"none": "privacy.mode=none"}}}, "grid.privacy.none: must be a list"),
        ({"attack": {"name": "inverting-gradients", "budget_iterations": 0}}, "attack.budget_iterations"),
        ({"attack": {"name": "inverting-gradients", "parameters": "last"}}, "attack.parameters"),
        ({"grdi": {}}, "[grdi]: unknown section (did you mean [grid]?)"),
    ],
)
def test_bad_sweep_files_are_rejected_while_parsing(changes, expected):
    with pytest.raises(ConfigError) as error:
        sweep_from_dict(sweep_document(**changes))
    assert expected in str(error.value)


def write_sweep(tmp_path, text):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_base_path_is_relative_to_the_sweep_file_and_resolved_copy_round_trips(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.toml").write_text(
        '[data]\ndataset = "fashion_mnist"\nnum_clients = 2\n[model]\narch = "cnn"\nfinetune = "full"\n'
    )
    (tmp_path / "sweeps").mkdir()
    path = tmp_path / "sweeps" / "s.toml"
    path.write_text('[sweep]\nbase = "../configs/base.toml"\n[grid.lr]\n"small" = ["client.lr=0.01"]\n"large" = ["client.lr=0.1"]\n')
    spec = load_sweep(path)
    assert spec.name == "s"
    assert spec.seeds == (0,)
    assert [spec.configs[p.id].client.lr for p in spec.points] == [0.01, 0.1]
    again = sweep_from_dict(tomllib.loads(spec.to_toml()))
    assert [p.id for p in again.points] == [p.id for p in spec.points]
    assert again.base == spec.base
    assert spec.privacy_axes() == ()


TINY_SWEEP = (ROOT / "configs" / "sweep_tiny.toml").read_text()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('\n[grid.lr]\n"bad" = ["client.lrr=0.1"]\n', "client.lrr (sweep point"),
        ('\n[grid.lr]\n"bad" = ["client.lr=-1"]\n', "client.lr (sweep point"),
        # passes config parsing, fails when the run's transforms are built: still caught up front
        ('\n[grid.extra]\n"bad" = [\'defense.names=["prunee"]\']\n', "did you mean 'prune'?"),
    ],
)
def test_a_point_with_a_bad_setting_is_rejected_up_front(tmp_path, extra, expected):
    path = write_sweep(tmp_path, TINY_SWEEP + extra)
    with pytest.raises(ConfigError) as error:
        load_sweep(path)
    assert expected in str(error.value)


def test_unknown_attack_and_wrong_data_kind_are_rejected_up_front(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'inverting-gradients'"):
        load_sweep(write_sweep(tmp_path, TINY_SWEEP.replace('name = "inverting-gradients"', 'name = "inverting-gradient"')))
    with pytest.raises(ConfigError, match="attack.name"):
        load_sweep(write_sweep(tmp_path, TINY_SWEEP.replace('name = "inverting-gradients"', 'name = "tag"')))
    with pytest.raises(ConfigError, match="audit_case.batchsize"):
        load_sweep(write_sweep(tmp_path, TINY_SWEEP.replace("batch_size = 1\nobserves", "batchsize = 1\nobserves")))


def test_an_audit_of_a_client_that_does_not_exist_is_rejected_before_any_point_trains(tmp_path):
    with pytest.raises(ConfigError, match=r"audit_case.client \(sweep point .*\): client 99 does not exist"):
        load_sweep(write_sweep(tmp_path, TINY_SWEEP.replace("client = 0\n", "client = 99\n")))


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("sweep_*.toml")))
def test_shipped_sweep_files_validate(name):
    spec = load_sweep(ROOT / "configs" / name)
    assert len(spec.points) == len(spec.configs) >= 3
    assert spec.privacy_axes() == ("privacy",)
    assert spec.attack is not None and not spec.audit_skipped  # every point of a shipped sweep is audited


def test_data_that_cannot_be_partitioned_is_rejected_up_front(tmp_path):
    text = TINY_SWEEP.replace('partition = "iid"', 'partition = "dirichlet"\nalpha = 0.5\nmin_partition_size = 400')
    with pytest.raises(ConfigError, match="data.min_partition_size"):
        load_sweep(write_sweep(tmp_path, text))


def test_points_an_attack_cannot_observe_are_marked_to_be_trained_but_not_audited(tmp_path, monkeypatch):
    from attacks.inverting import InvertingGradients

    text = TINY_SWEEP.replace('"prune 90%" = [', '"secure aggregation" = [\'secure_aggregation.protocol="masking"\']\n"prune 90%" = [')
    path = write_sweep(tmp_path, text)
    assert load_sweep(path).audit_skipped == {}  # inverting-gradients attacks aggregates too
    monkeypatch.setattr(InvertingGradients, "observes", ("gradient", "update"))
    spec = load_sweep(path)
    assert sorted(spec.audit_skipped) == sorted(p.id for p in spec.points if p.setting("defense") == "secure aggregation")
    assert "does not attack 'aggregate' observations" in next(iter(spec.audit_skipped.values()))
