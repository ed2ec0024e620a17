"""A tiny real sweep end to end: train, audit, record, resume, plot, report; failures recorded, bad input refused."""

import csv
import json
from pathlib import Path

import pytest

from eval.report import write_report
from eval.spec import load_sweep
from eval.sweep import run_sweep
from secure_ffm.run.cli import main

# the unreachable DP-SGD budget makes Opacus' RDP search warn while it gives up
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")]

ROOT = Path(__file__).resolve().parents[2]
TINY = (ROOT / "configs" / "sweep_tiny.toml").read_text()
# configs/sweep_tiny.toml (2 x 2 points) plus a DP-SGD budget no noise can meet: it parses and validates,
# but prepare_run raises when it calibrates the noise, so the point fails at run time
UNREACHABLE = """
"dp-sgd unreachable" = ['privacy.mode="dp-sgd"', "privacy.target_epsilon=1e-6", "privacy.delta=1e-5"]
"""
SWEEP = TINY.replace('"none" = []\n', '"none" = []\n' + UNREACHABLE.lstrip(), 1).replace(
    "seeds = [0]", 'seeds = [0]\nexclude = [{ privacy = "dp-sgd unreachable", defense = "prune 90%" }]'
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    path = root / "sweep.toml"
    path.write_text(SWEEP)
    out = root / "out"
    first = run_sweep(path, out)
    return path, out, first


def read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_point_is_trained_audited_and_recorded(sweep):
    _, out, first = sweep
    assert first.total == 5
    assert len(first.ran) == 4 and first.skipped == []
    rows = read_csv(out / "sweep.csv")
    assert [r["point_id"] for r in rows] == [r["point_id"] for r in first.rows]
    expected = {"point_id", "grid.privacy", "grid.defense", "seed", "privacy.mode", "privacy.target_epsilon", "privacy.delta",
                "defense.names", "defense.prune_fraction", "protection", "mechanism", "epsilon", "delta", "accuracy", "macro_f1",
                "defense", "secure_aggregation", "attack", "attack_metric", "attack_value", "attack_psnr", "attack_ssim", "seconds",
                "status", "error"}  # fmt: skip
    assert expected <= set(rows[0])
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4
    for row in ok:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert float(row["attack_psnr"]) > 0
        assert row["attack_metric"] == "psnr"
        # how the attack's budget ended, as attack.json records it (budget.iterations_reached, budget.stopped_by)
        audit = json.loads((out / "points" / row["point_id"] / "attack" / "attack.json").read_text())
        assert row["attack_stopped_by"] == audit["budget"]["stopped_by"] in ("iterations", "time", "attack")
        assert int(row["attack_iterations"]) == audit["budget"]["iterations_reached"] >= 1
    for row in first.rows:
        if row["status"] == "ok":
            assert row["attack_stopped_by"] in ("iterations", "time", "attack") and row["attack_iterations"] >= 1
    by_setting = {(r["grid.privacy"], r["grid.defense"]): r for r in rows}
    assert by_setting[("none", "none")]["epsilon"] == "inf"
    assert by_setting[("none", "none")]["protection"] == "no protection"
    dp = by_setting[("dp-fedavg eps=3", "prune 90%")]
    assert 0 < float(dp["epsilon"]) <= 3.0 and float(dp["delta"]) > 0
    assert dp["protection"] == "DP-FedAvg ε=3 + prune 90%"
    assert dp["mechanism"] == "dp-fedavg" and dp["defense.names"] == '["prune"]'
    point = out / "points" / dp["point_id"]
    assert (point / "run" / "summary.json").is_file() and (point / "run" / "privacy.json").is_file()
    assert (point / "attack" / "attack.json").is_file()
    assert (out / "sweep.toml").is_file()
    assert len(load_sweep(out / "sweep.toml").points) == 5  # the resolved copy is a valid sweep file


def test_a_point_that_fails_at_run_time_is_recorded_and_the_others_continue(sweep):
    _, out, first = sweep
    assert first.failed == ["privacy-dp-sgd-unreachable__defense-none__seed-0"]
    row = next(r for r in first.rows if r["status"] == "failed")
    assert "privacy.target_epsilon" in row["error"] and "cannot be met" in row["error"]
    assert row["settings"] == {"privacy": "dp-sgd unreachable", "defense": "none"}
    # it failed before anything was trained, and the points after it (the DP-FedAvg ones) still ran
    assert not (out / "points" / row["point_id"] / "run").exists()
    statuses = [r["status"] for r in first.rows]
    assert statuses == ["ok", "ok", "failed", "ok", "ok"]


def test_a_second_run_skips_finished_points_and_retries_failed_ones(sweep):
    path, out, first = sweep
    before = (out / "sweep.jsonl").read_text().splitlines()
    again = run_sweep(path, out)
    assert sorted(again.skipped) == sorted(first.ran)
    assert again.ran == [] and again.failed == first.failed  # retried, and failed again
    after = (out / "sweep.jsonl").read_text().splitlines()
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert json.loads(after[-1])["point_id"] == first.failed[0]
    assert len(read_csv(out / "sweep.csv")) == 5


def test_report_lists_every_point_and_embeds_valid_plots(sweep, capsys):
    _, out, first = sweep
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(out / "report.html")
    text = (out / "report.html").read_text()
    for row in first.rows:
        assert row["point_id"] in text
    for name in ("accuracy_vs_epsilon", "attack_vs_epsilon", "privacy_utility_frontier", "reconstructions"):
        for suffix in (".png", ".svg"):
            assert (out / "plots" / (name + suffix)).stat().st_size > 5000
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_report(out) == out / "report.html"


def test_cli_sweep_with_report_resumes_then_writes_the_report_and_prints_its_path_last(sweep, capsys):
    path, out, first = sweep
    (out / "report.html").unlink(missing_ok=True)
    assert main(["sweep", str(path), "--out", str(out), "--report", "--quiet"]) == 1  # the unreachable point fails again
    captured = capsys.readouterr()
    assert "4 already done" in captured.out and "failed: " in captured.err
    assert captured.out.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    assert first.failed[0] in (out / "report.html").read_text()


def test_cli_refuses_a_bad_setting_before_writing_anything(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(TINY + '\n[grid.lr]\n"fast" = ["client.lr=fast"]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "client.lr (sweep point" in err and "must be a number" in err
    assert not out.exists()


def test_cli_refuses_a_non_sweep_output_directory(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["sweep", str(ROOT / "configs" / "sweep_tiny.toml"), "--out", str(out), "--quiet"]) == 2
    assert "holds no sweep.toml" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_changed_audit_reruns_the_point_but_reuses_its_training(sweep):
    # (runs last: it rewrites the sweep directory's sweep.toml to a one-point sweep)
    path, out, _ = sweep
    changed = path.parent / "changed.toml"
    changed.write_text(
        SWEEP.replace("budget_iterations = 20", "budget_iterations = 5").replace(
            'exclude = [{ privacy = "dp-sgd unreachable", defense = "prune 90%" }]',
            'exclude = [{ privacy = ["dp-sgd unreachable", "dp-fedavg eps=3"] }, { defense = "prune 90%" }]',
        )
    )
    again = run_sweep(changed, out)
    assert again.ran == ["privacy-none__defense-none__seed-0"] and again.skipped == []
    row = again.rows[0]
    assert row["train_reused"] is True and row["attack_iterations"] <= 5
    assert len(read_csv(out / "sweep.csv")) == 1
