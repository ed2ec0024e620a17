"""``secure-ffm report RUN_DIR``: the report of one run, continual or not, from hand-written run files (no training)."""

import json
import re

import pytest

from eval.report import write_report
from secure_ffm.run.cli import main

STAGES = ("classes 0-1", "classes 2-3", "classes 4-5")
PNG = "data:image/png;base64,"


def continual_document(budget_exhausted=()):
    return {
        "method": "replay",
        "stages": [
            {
                "name": name,
                "index": i,
                "rounds": 2,
                "first_round": 2 * i + 1,
                "last_round": 2 * i + 2,
                "dataset": "fashion_mnist",
                "classes": [f"c{2 * i}", f"c{2 * i + 1}"],
                "release": 0.0,
                "train_examples": 1200,
                "test_examples": 200,
            }
            for i, name in enumerate(STAGES)
        ],  # fmt: skip
        "accuracy_matrix": [[0.91, None, None], [0.40, 0.88, None], [0.20, 0.35, 0.90]],
        "average_accuracy": 0.483,
        "forgetting": 0.615,
        "backward_transfer": -0.615,
        "budget_exhausted": list(budget_exhausted),
    }


def write_run(directory, *, continual=None, ledger=None):
    """A run directory as `secure-ffm train` leaves it (config.toml, metrics.jsonl, summary.json; privacy.json with DP)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in range(1, 7):
        row = {"round": r, "test_accuracy": 0.5 + 0.02 * r, "test_macro_f1": 0.45 + 0.02 * r, "test_loss": 1.5 - 0.1 * r, "train_loss": 1.6}
        if continual is not None:
            current = (r - 1) // 2
            row.update(
                stage=STAGES[current],
                stage_index=current,
                stage_accuracy={STAGES[j]: 0.9 - 0.1 * (r - 2 * j - 1) for j in range(current + 1)},
            )
        rows.append(row)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (directory / "config.toml").write_text('[run]\nname = "tiny-run"\n\n[data]\ndataset = "fashion_mnist"\n')
    summary = {
        "name": "tiny-run", "dataset": "fashion_mnist", "num_clients": 4, "partition": "iid", "strategy": "fedavg", "rounds": 6,
        "model": {"arch": "cnn", "finetune": "full", "objective": "classification"},
        "final": {"round": 6, "test_accuracy": 0.62, "test_macro_f1": 0.57, "test_loss": 0.9, "train_loss": 1.6},
        "best_test_accuracy": 0.62, "update_parameters": 1000, "bytes_up_total": 24000, "bytes_down_total": 24000, "seconds_total": 3.5,
        "privacy": {"mechanism": "dp-sgd" if ledger else "none"},
    }  # fmt: skip
    if continual is not None:
        summary["continual"] = continual
    (directory / "summary.json").write_text(json.dumps(summary))
    if ledger is not None:
        (directory / "privacy.json").write_text(json.dumps(ledger))
    return directory


LEDGER = {
    "mechanism": "dp-sgd", "level": "sample", "accountant": "prv", "target_epsilon": 8.0, "max_grad_norm": 1.0,
    "epsilon": {"max": 7.93, "median": 7.9, "min": 7.8}, "delta": "1/(10 n) per client",
    "clients": [
        {"client": c, "delta": 0.001, "epsilon": 7.9 - 0.05 * c, "noise_multiplier": 0.47, "sample_rate": 0.16, "steps": 12, "rounds": 6}
        for c in range(3)
    ],
}  # fmt: skip


def tables(text):
    return re.findall(r"<table>.*?</table>", text, flags=re.S)


def test_continual_run_report_embeds_the_heatmap_and_the_stage_plot(tmp_path):
    run = write_run(tmp_path / "run", continual=continual_document())
    text = write_report(run).read_text()
    for figure in ("accuracy_matrix", "stage_accuracy", "training_curves"):
        assert re.search(rf"<figure id='{figure}'><img alt=\"{figure}\" src=\"{PNG}", text), figure
        assert (run / "plots" / f"{figure}.png").stat().st_size > 5000 and (run / "plots" / f"{figure}.svg").is_file()
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text)


def test_continual_run_report_has_the_matrix_as_a_table_blank_above_the_diagonal(tmp_path):
    text = write_report(write_run(tmp_path / "run", continual=continual_document())).read_text()
    matrix = re.search(r"<div id='accuracy-matrix'>(.*?)</div>", text, flags=re.S).group(1)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(<td.*?)</tr>", matrix)]
    assert cells == [
        ["0: classes 0-1", "91.0%", "", ""],
        ["1: classes 2-3", "40.0%", "88.0%", ""],
        ["2: classes 4-5", "20.0%", "35.0%", "90.0%"],
    ]


def test_continual_run_report_states_average_accuracy_forgetting_and_backward_transfer(tmp_path):
    text = write_report(write_run(tmp_path / "run", continual=continual_document())).read_text()
    assert "replay: average accuracy 48.3%, forgetting +61.5 pp, backward transfer -61.5 pp" in text


def test_continual_run_report_says_when_each_client_stopped_for_its_budget(tmp_path):
    spent = [{"client": 3, "round": 5, "stage": "classes 4-5"}, {"client": 1, "round": 3, "stage": "classes 2-3"}]
    text = write_report(write_run(tmp_path / "run", continual=continual_document(spent), ledger=LEDGER)).read_text()
    first = text.index("client 1 stopped contributing at round 3 (stage classes 2-3): privacy budget spent")
    assert first < text.index("client 3 stopped contributing at round 5 (stage classes 4-5): privacy budget spent")


def test_continual_run_report_without_spent_budgets_says_every_client_contributed(tmp_path):
    text = write_report(write_run(tmp_path / "run", continual=continual_document())).read_text()
    assert "No client's privacy budget ran out" in text and "stopped contributing at round" not in text


def test_plain_run_report_has_final_metrics_and_no_continual_part(tmp_path):
    run = write_run(tmp_path / "run")
    text = write_report(run).read_text()
    assert "<h1>Run: tiny-run</h1>" in text and "Final metrics" in text
    assert '<td>test accuracy</td><td class="n">0.62</td>' in text
    assert text.count(PNG) == 1  # the training curves only
    assert "Continual learning" not in text and "accuracy-matrix" not in text
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["training_curves.png", "training_curves.svg"]


def test_run_report_shows_the_privacy_ledger_per_client(tmp_path):
    text = write_report(write_run(tmp_path / "run", ledger=LEDGER)).read_text()
    ledger = next(t for t in tables(text) if "<th>run</th><th>mechanism</th>" in t)
    assert "<td>dp-sgd</td>" in ledger and "7.93" in ledger and "prv" in ledger
    per_client = next(t for t in tables(text) if "<th>client</th><th>ε spent</th>" in t)
    assert per_client.count("<tr><td>") == 3


def test_run_report_without_privacy_json_says_there_is_no_differential_privacy(tmp_path):
    text = write_report(write_run(tmp_path / "run")).read_text()
    assert "No privacy.json" in text and "ε = ∞" in text


def test_cli_report_of_a_run_dir_prints_the_report_path(tmp_path, capsys):
    run = write_run(tmp_path / "run", continual=continual_document())
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")


def listing(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("make", ["empty", "missing", "unfinished run"])
def test_cli_refuses_a_directory_that_is_neither_a_sweep_nor_a_run_with_one_line_and_exit_2(tmp_path, capsys, make):
    target = tmp_path / "dir"
    if make != "missing":
        target.mkdir()
    if make == "unfinished run":  # summary.json is written last
        (target / "config.toml").write_text("[run]\n")
        (target / "metrics.jsonl").write_text("")
    before = listing(tmp_path)

    assert main(["report", str(target)]) == 2

    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a sweep directory" in err
    assert ("lacks summary.json" in err) == (make == "unfinished run")
    assert listing(tmp_path) == before


def test_cli_refuses_a_malformed_continual_summary_naming_the_field_and_writes_nothing(tmp_path, capsys):
    bad = {**continual_document(), "accuracy_matrix": [[0.9, None], [0.4, 0.8]]}
    run = write_run(tmp_path / "run", continual=bad)
    before = listing(run)

    assert main(["report", str(run)]) == 2

    assert "continual.accuracy_matrix: expected 3 rows of 3 values" in capsys.readouterr().err
    assert listing(run) == before


# --------------------------------------------------------------------------- sweeps with continual points


def sweep_with_points(tmp_path, points):
    rows = []
    for point_id, continual in points.items():
        write_run(tmp_path / "points" / point_id / "run", continual=continual)
        rows.append({"point_id": point_id, "settings": {"method": point_id}, "seed": 0, "protection": "no protection",
                     "mechanism": "none", "accuracy": 0.6, "status": "ok", "run_dir": f"points/{point_id}/run"})  # fmt: skip
    (tmp_path / "sweep.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path


def test_sweep_report_draws_the_heatmap_of_each_continual_point(tmp_path):
    sweep = sweep_with_points(tmp_path, {"replay": continual_document(), "plain": None})
    text = write_report(sweep).read_text()
    assert f'<figure id=\'accuracy_matrix__replay\'><img alt="accuracy_matrix__replay" src="{PNG}' in text
    assert "accuracy_matrix__plain" not in text
    assert (sweep / "plots" / "accuracy_matrix__replay.png").stat().st_size > 5000
    summary_row = next(t for t in tables(text) if "<th>backward transfer</th>" in t)
    assert "<td>replay</td>" in summary_row and "48.3%" in summary_row


def test_sweep_report_without_continual_points_has_no_continual_section(tmp_path):
    text = write_report(sweep_with_points(tmp_path, {"plain": None})).read_text()
    assert "Continual learning" not in text and "accuracy_matrix__" not in text
