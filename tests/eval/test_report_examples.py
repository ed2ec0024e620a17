"""Whether a sweep report shows the audit's examples: the originals are clients' training records, and a reconstruction
that succeeds is one too. ``auto`` shows them only when every point trains on a public built-in dataset.

Before 2026-12-07 every report embedded them: a sweep on a hospital's own notes put the notes, verbatim, into the
report.html made for a paper or a data-protection officer.
"""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from eval.cli import EXAMPLES
from eval.report import EXAMPLE_POLICIES, write_report
from eval.results import JSONL, SWEEP_TOML
from secure_ffm.errors import ConfigError
from secure_ffm.run.cli import main

ROOT = Path(__file__).resolve().parents[2]
NONE, PRUNE = "privacy-none__defense-none__seed-0", "privacy-none__defense-prune-90pct__seed-0"
SECRET_NOTE = "patient 4411 was readmitted after the second dose of warfarin"


def write_sweep(directory: Path, *, dataset: str | None = "fashion_mnist", point_dataset: str | None = None) -> Path:
    """A sweep folder as `secure-ffm sweep` leaves it: the resolved sweep file (base ``data.dataset`` = ``dataset``; None:
    no sweep file), two finished points whose audits recovered a sentence and images."""
    directory.mkdir()
    if dataset is not None:
        text = (ROOT / "configs" / "sweep_tiny.toml").read_text()
        (directory / SWEEP_TOML).write_text(text.replace('dataset = "fashion_mnist"', f"dataset = {json.dumps(dataset)}"))
    rows = []
    for point_id, defense in ((NONE, "none"), (PRUNE, "prune 90%")):
        attack = directory / "points" / point_id / "attack"
        attack.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for name in ("original_pixels.npy", "reconstructed_pixels.npy"):
            np.save(attack / name, rng.random((2, 1, 28, 28), dtype=np.float32), allow_pickle=False)
        config = {"privacy.mode": "none", "defense.names": ["prune"] if defense != "none" else []}
        if point_dataset is not None:
            config["data.dataset"] = point_dataset
        rows.append(
            {
                "point_id": point_id,
                "sweep": "tiny",
                "settings": {"privacy": "none", "defense": defense},
                "seed": 0,
                "config": config,
                "protection": "no protection",
                "mechanism": "none",
                "accuracy": 0.8,
                "attack": "inverting-gradients",
                "attack_metric": "psnr",
                "attack_value": 25.0,
                "attack_metrics": {"psnr": 25.0},
                "status": "ok",
                "texts": [{"original": SECRET_NOTE, "recovered": SECRET_NOTE, "token_f1": 1.0}],
                "reconstruction_pixels": {
                    "original": f"points/{point_id}/attack/original_pixels.npy",
                    "reconstructed": f"points/{point_id}/attack/reconstructed_pixels.npy",
                },
                "reconstruction_pairs": [{"index": 0, "truth_index": 0, "psnr": 25.0}, {"index": 1, "truth_index": 1, "psnr": 24.0}],
            }
        )
    (directory / JSONL).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def shows_examples(sweep: Path) -> bool:
    """Whether the report holds the recovered sentence and the reconstructions plot draws pictures (not a notice)."""
    text = (sweep / "report.html").read_text()
    pictures = "<image" in (sweep / "plots" / "reconstructions.svg").read_text()
    assert (SECRET_NOTE in text) == pictures, "the sentence and the pictures should be shown or left out together"
    return pictures


def test_a_sweep_on_a_public_built_in_shows_the_examples(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    text = write_report(sweep).read_text()
    assert shows_examples(sweep)
    assert "left out of this report" not in text and "share it only with" not in text


def test_a_sweep_on_the_users_own_data_leaves_the_examples_out(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", dataset="notes.csv")
    text = write_report(sweep).read_text()
    assert not shows_examples(sweep)
    assert "left out of this report" in text and "notes.csv is not a public built-in dataset" in text
    assert "--examples show" in text


def test_one_point_on_private_data_is_enough_to_leave_them_out(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", point_dataset="hf:./ward-notes")
    write_report(sweep)
    assert not shows_examples(sweep)


def test_a_sweep_without_its_sweep_file_leaves_them_out(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", dataset=None)
    text = write_report(sweep).read_text()
    assert not shows_examples(sweep) and "says which data the points trained on" in text


def test_show_includes_private_examples_with_a_warning(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", dataset="notes.csv")
    text = write_report(sweep, examples="show").read_text()
    assert shows_examples(sweep)
    assert "share it only with readers allowed to see that data" in text and "notes.csv" in text


def test_redact_leaves_out_even_a_public_datasets_examples(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    write_report(sweep, examples="redact")
    assert not shows_examples(sweep)


def test_a_redacted_report_replaces_the_pictures_an_earlier_report_drew(tmp_path):
    sweep = write_sweep(tmp_path / "sweep", dataset="notes.csv")
    write_report(sweep, examples="show")
    write_report(sweep)
    assert not shows_examples(sweep)


def test_the_cli_takes_examples_and_refuses_an_unknown_value(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", dataset="notes.csv")
    assert main(["report", str(sweep), "--examples", "show"]) == 0
    assert shows_examples(sweep)
    capsys.readouterr()
    assert main(["report", str(sweep), "--examples", "all"]) == 2
    assert "invalid choice: 'all'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--examples: unknown value 'all'"):
        write_report(sweep, examples="all")


def test_the_clis_choices_are_the_reports_policies():
    assert EXAMPLES == EXAMPLE_POLICIES


def test_a_continual_stages_own_dataset_leaves_them_out(tmp_path):
    """A point whose continual stage federates a private file: only data.dataset was looked at, and the report showed
    that file's examples under --examples auto (an audit of 2026-12-07). Each point's resolved config now says."""
    sweep = write_sweep(tmp_path / "sweep")
    run = sweep / "points" / NONE / "run"
    run.mkdir()
    (run / "config.toml").write_text(
        '[data]\ndataset = "fashion_mnist"\n\n[[continual.stages]]\nrounds = 1\n\n[[continual.stages]]\nrounds = 1\ndataset = "ward.npz"\n'
    )
    text = write_report(sweep).read_text()
    assert not shows_examples(sweep) and "ward.npz is not a public built-in dataset" in text


def test_a_point_whose_resolved_config_cannot_be_read_leaves_them_out(tmp_path):
    sweep = write_sweep(tmp_path / "sweep")
    run = sweep / "points" / NONE / "run"
    run.mkdir()
    (run / "config.toml").write_text("[data\n")
    write_report(sweep)
    assert not shows_examples(sweep)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_reports_pictures_and_page_are_owner_only_when_they_show_examples(tmp_path, umask_022):
    shown = write_sweep(tmp_path / "shown")
    write_report(shown, examples="show")
    assert _mode(shown / "report.html") == 0o600
    assert _mode(shown / "plots" / "reconstructions.png") == 0o600 and _mode(shown / "plots" / "reconstructions.svg") == 0o600
    assert _mode(shown / "plots" / "accuracy_vs_epsilon.png") == 0o644  # no example in it
    redacted = write_sweep(tmp_path / "redacted")
    write_report(redacted, examples="redact")
    assert _mode(redacted / "report.html") == 0o644
