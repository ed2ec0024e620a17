"""`secure-ffm pipeline`: stages run in order, a later one from an earlier one's export; validated whole; resumable."""

import json
import shutil

import pytest
import torch
from tiny_encoder import save_tiny_bert, tiny_text_sections  # tests/engine/tiny_encoder.py (on sys.path under pytest)

from secure_ffm.config import dumps_toml
from secure_ffm.engine.orchestrator import RunObserver
from secure_ffm.errors import ConfigError
from secure_ffm.run.cli import main
from secure_ffm.run.pipeline import LoggingObserver, load_pipeline, run_pipeline
from secure_ffm.run.simulation import prepare_run


def stage_toml(name, sections, extra=""):
    """One [[stage]] of a pipeline file: the config sections as [stage.SECTION] tables."""
    body = dumps_toml(sections).replace("\n[", "\n[stage.").replace("[", "[stage.", 1) if sections else ""
    return f'[[stage]]\nname = "{name}"\n{extra}\n{body}\n'


def write_pipeline(tmp_path, encoder, *, pretrain=None, finetune=None):
    pretrain = pretrain or tiny_text_sections(
        encoder,
        data={"public_fraction": 0.3},
        server={"rounds": 2},
        ffm={"schedule": "alternating", "public_steps": 2, "export": True},
    )
    finetune = finetune or {"model": {"name_or_path": "{stages.pretrain.model}", "finetune": "head"}, "server": {"rounds": 2}}
    if "data" not in finetune:
        finetune = {**tiny_text_sections(encoder), **finetune}
    path = tmp_path / "pipeline.toml"
    text = '[pipeline]\nname = "chain"\n\n' + stage_toml("pretrain", pretrain) + stage_toml("finetune", finetune)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def chained(encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    path = write_pipeline(root, encoder)
    out = root / "out"
    result = run_pipeline(load_pipeline(path, out))
    return path, out, result


def test_two_stages_run_in_order_and_the_second_starts_from_the_first_ones_export(chained, encoder):
    from transformers import AutoModel

    path, out, result = chained
    assert result.ran == ["pretrain", "finetune"]
    document = json.loads((out / "pipeline.json").read_text())
    assert [(s["name"], s["status"]) for s in document["stages"]] == [("pretrain", "complete"), ("finetune", "complete")]
    assert document["stages"][1]["starts_from"] == ["pretrain"] and document["final"]["test_accuracy"] is not None
    assert json.loads((out / "pretrain" / "summary.json").read_text())["ffm"]["public_units"] == 1
    export = out.resolve() / "pretrain" / "model"
    stage = load_pipeline(path, out).stages[1]
    assert stage.config.model.name_or_path == str(export)
    exported = AutoModel.from_pretrained(export).encoder.layer[0].attention.self.query.weight
    started = prepare_run(stage.config).model.module.encoder.encoder.layer[0].attention.self.query.weight
    assert torch.equal(started, exported)
    base = AutoModel.from_pretrained(encoder).encoder.layer[0].attention.self.query.weight
    assert not torch.equal(exported, base)  # pre-training moved it: the second stage did not start from the base model


def test_running_it_again_skips_the_complete_stages(chained, capsys):
    path, out, _ = chained
    before = (out / "finetune" / "summary.json").stat().st_mtime_ns
    assert main(["pipeline", str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "stage 1/2 pretrain: already complete, skipped" in printed and "2 stages: 0 ran, 2 already complete" in printed
    assert (out / "finetune" / "summary.json").stat().st_mtime_ns == before


class KillFinetuneAtRound2(LoggingObserver):
    def rounds(self, stage):
        observer = RunObserver()
        if stage.name == "finetune":

            def round_started(round, clients):
                if round == 2:
                    raise KeyboardInterrupt

            observer.round_started = round_started
        return observer


def test_an_interrupted_stage_resumes_and_the_complete_one_is_skipped(chained, tmp_path):
    path, out, _ = chained
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "finetune")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_pipeline(path, copy), KillFinetuneAtRound2())
    assert json.loads((copy / "pipeline.json").read_text())["stages"][1]["status"] == "interrupted"
    result = run_pipeline(load_pipeline(path, copy))
    assert result.skipped == ["pretrain"] and result.ran == ["finetune"]
    rows = [json.loads(line) for line in (copy / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]


def test_a_reference_to_an_unknown_stage_is_refused_before_anything_is_written(encoder, tmp_path, capsys):
    path = write_pipeline(tmp_path, encoder, finetune={"model": {"name_or_path": "{stages.pretrian.model}"}})
    out = tmp_path / "out"
    assert main(["pipeline", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model.name_or_path (stage finetune)" in err and "did you mean 'pretrain'" in err
    assert not out.exists()


def test_a_reference_to_a_stage_that_exports_nothing_is_refused(encoder, tmp_path):
    pretrain = tiny_text_sections(encoder)  # no ffm.export
    path = write_pipeline(tmp_path, encoder, pretrain=pretrain)
    with pytest.raises(ConfigError, match=r"model.name_or_path \(stage finetune\).*ffm.export = true"):
        load_pipeline(path, tmp_path / "out")


def test_a_bad_setting_in_a_later_stage_is_refused_before_the_first_runs(encoder, tmp_path):
    finetune = {"model": {"name_or_path": "{stages.pretrain.model}"}, "client": {"lr": -1.0}}
    path = write_pipeline(tmp_path, encoder, finetune=finetune)
    with pytest.raises(ConfigError, match=r"client.lr \(stage finetune\)"):
        load_pipeline(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_stage_directory_run_with_another_config_is_refused(chained, encoder, tmp_path):
    path, out, _ = chained
    changed = write_pipeline(
        tmp_path, encoder, finetune={"model": {"name_or_path": "{stages.pretrain.model}", "finetune": "head"}, "server": {"rounds": 3}}
    )
    with pytest.raises(ConfigError, match=r"\(stage finetune\).*differs in server.rounds"):
        load_pipeline(changed, out)


@pytest.mark.parametrize("damage", [b"[]", b"[" * 100_000 + b"]" * 100_000], ids=["a-list", "nested-too-deeply"])
def test_a_complete_stage_whose_summary_is_damaged_is_refused_in_one_line(chained, capsys, damage):
    """A summary of the wrong shape ended the pipeline with AttributeError, one nested too deeply with RecursionError."""
    path, out, _ = chained
    summary = out / "pretrain" / "summary.json"
    kept = summary.read_bytes()
    summary.write_bytes(damage)
    try:  # the pipeline's stages name their directories: damaged in place, put back after
        assert main(["pipeline", str(path), "--out", str(out), "--quiet"]) == 2
    finally:
        summary.write_bytes(kept)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "summary.json cannot be read" in line and "pretrain" in line


def test_shipped_pipeline_files_are_valid(tmp_path):
    from pathlib import Path

    shipped = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("pipeline_*.toml"))
    assert shipped
    for path in shipped:
        pipeline = load_pipeline(path, tmp_path / path.stem, check_data=False)
        assert pipeline.stages[-1].references and not (tmp_path / path.stem).exists()


def test_pipeline_json_says_the_last_models_guarantee_on_the_clients_data(chained):
    """The chained stages both train on the clients' data without DP: the last model's guarantee on it is unbounded."""
    _, out, _ = chained
    document = json.loads((out / "pipeline.json").read_text())
    assert [s["privacy"]["mechanism"] for s in document["stages"]] == ["none", "none"]
    (record,) = document["privacy"].values()
    assert record["stages"] == ["pretrain", "finetune"] and record["bounded"] is False and "'pretrain'" in record["why"]


def spent(name, dataset="movie_reviews", mechanism="dp-sgd", epsilon=2.0, delta=1e-5, federated_rounds=3):
    return {
        "name": name,
        "privacy": {"dataset": dataset, "mechanism": mechanism, "epsilon": epsilon, "delta": delta, "federated_rounds": federated_rounds},
    }


def test_the_stages_that_trained_on_one_dataset_compose():
    from secure_ffm.run.pipeline import pipeline_privacy

    composed = pipeline_privacy([spent("a"), spent("b", mechanism="dp-fedavg", epsilon=3.0, delta=2e-5)])
    assert composed["movie_reviews"]["stages"] == ["a", "b"] and composed["movie_reviews"]["bounded"]
    assert composed["movie_reviews"]["epsilon"] == pytest.approx(5.0) and composed["movie_reviews"]["delta"] == pytest.approx(3e-5)


def test_a_stage_without_dp_on_the_data_leaves_the_guarantee_unbounded_and_other_data_apart():
    from secure_ffm.run.pipeline import pipeline_privacy

    composed = pipeline_privacy(
        [
            spent("pretrain", mechanism="none", epsilon=None, delta=None),
            spent("public-only", mechanism="none", epsilon=None, delta=None, federated_rounds=0),  # touched no client data
            spent("finetune"),
            spent("other", dataset="sms_spam"),
            {"name": "pending"},  # not run yet
        ]
    )
    assert composed["movie_reviews"]["stages"] == ["pretrain", "finetune"] and composed["movie_reviews"]["bounded"] is False
    assert composed["movie_reviews"]["epsilon"] is None
    assert {k: composed["sms_spam"][k] for k in ("stages", "epsilon", "delta", "deltas", "bounded")} == {
        "stages": ["other"],
        "epsilon": 2.0,
        "delta": 1e-5,
        "deltas": [1e-5],
        "bounded": True,
    }


def test_a_per_client_delta_rule_is_listed_not_summed():
    """DP-SGD's default δ is "1/(10 n) per client", a text: summing it ended the pipeline with ValueError."""
    from secure_ffm.run.pipeline import pipeline_privacy

    composed = pipeline_privacy([spent("a", delta="1/(10 n) per client"), spent("b", delta=1e-5)])["movie_reviews"]
    assert composed["epsilon"] == pytest.approx(4.0) and composed["delta"] is None
    assert composed["deltas"] == ["1/(10 n) per client", 1e-5]


def test_a_continual_stages_other_datasets_are_charged_too():
    """A continual stage federates other datasets over the same clients; only data.dataset was charged, so a stage that
    trained on a second dataset without DP left that dataset reported at a later stage's ε (an audit: ε 1.995 where every
    example had gone through a non-private stage)."""
    from secure_ffm.run.pipeline import pipeline_privacy

    first = spent("continual", dataset="digits", mechanism="none", epsilon=None, delta=None)
    first["privacy"]["datasets"] = ["digits", "digits_b.npz"]
    composed = pipeline_privacy([first, spent("private", dataset="digits_b.npz")])
    assert composed["digits_b.npz"]["bounded"] is False and "'continual'" in composed["digits_b.npz"]["why"]
    with_dp = dict(first, privacy={**first["privacy"], "mechanism": "dp-sgd", "epsilon": 2.0, "delta": 1e-5})
    assert pipeline_privacy([with_dp, spent("private", dataset="digits_b.npz")])["digits_b.npz"]["epsilon"] == pytest.approx(4.0)


@pytest.mark.parametrize(("seed", "fraction", "bounded"), [(5, 0.3, True), (6, 0.3, False), (5, 0.0, False)])
def test_a_public_share_trained_without_dp_is_someone_elses_client_data_under_another_split(seed, fraction, bounded):
    """Stage 1 trains public units on a 30% share of the dataset without DP; a later stage whose split differs (another
    seed, or no public share) gives some of those examples to its clients (an audit: 431 of 1,438, reported at ε 3.99)."""
    from secure_ffm.run.pipeline import pipeline_privacy

    def staged(name, split_seed, public_fraction, public_trained):
        entry = spent(name, dataset="digits")
        entry["privacy"].update(
            split={"seed": split_seed, "public_fraction": public_fraction, "max_train_examples": 0},
            public_share_trained=public_trained,
        )
        return entry

    record = pipeline_privacy([staged("pretrain", 5, 0.3, True), staged("finetune", seed, fraction, False)])["digits"]
    assert record["bounded"] is bounded
    if not bounded:
        assert "'pretrain' trained without DP on a public share" in record["why"]
