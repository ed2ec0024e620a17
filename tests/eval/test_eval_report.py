"""Plots and report.html from result files alone (hand-written sweep.jsonl rows: no training)."""

import csv
import io
import json
import math
import re

import pytest

from eval.plots import group_settings, write_plots
from eval.report import write_report
from eval.results import csv_columns, csv_text, latest_rows, mechanism_label, read_results, spends_budget
from secure_ffm.errors import ConfigError
from secure_ffm.privacy.mechanisms import NoPrivacy
from secure_ffm.variants import MECHANISMS as MECHANISM_REGISTRY

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MECHANISMS = {
    "none": ("none", None),
    "dp-sgd eps=1": ("dp-sgd", 1.0),
    "dp-sgd eps=8": ("dp-sgd", 8.0),
    "dp-fedavg eps=3": ("dp-fedavg", 3.0),
}
DEFENSES = {"none": ("none", 0.0, 0.0), "prune 90%": ("prune 90%", -0.03, -4.0)}


def make_rows(seeds=(0, 1)):
    rows = []
    for privacy, (mechanism, epsilon) in MECHANISMS.items():
        for defense, (label, d_acc, d_psnr) in DEFENSES.items():
            for seed in seeds:
                accuracy = 0.85 - (0.2 / epsilon if epsilon else 0.0) + d_acc + 0.01 * seed
                psnr = 28.0 + d_psnr - (6.0 / epsilon if epsilon else 0.0) - 0.5 * seed
                protection = " + ".join(
                    p for p in (f"{mechanism.upper()} ε={epsilon:g}" if epsilon else "", label if defense != "none" else "") if p
                )
                rows.append(
                    {
                        "point_id": f"privacy-{privacy}__defense-{defense}__seed-{seed}".replace(" ", "-"),
                        "settings": {"privacy": privacy, "defense": defense},
                        "seed": seed,
                        "privacy_axes": ["privacy"],
                        "config": {"privacy.mode": mechanism, "defense.names": ["prune"] if defense != "none" else []},
                        "protection": protection or "no protection",
                        "mechanism": mechanism,
                        "target_epsilon": epsilon,
                        "epsilon": None if epsilon is None else epsilon * 0.97,
                        "delta": None if epsilon is None else 1e-5,
                        "accountant": None if epsilon is None else "prv",
                        "noise_multiplier": None if epsilon is None else 4.0 / epsilon,
                        "privacy": {"mechanism": mechanism, "level": "sample", "target_epsilon": epsilon},
                        "accuracy": accuracy,
                        "macro_f1": accuracy - 0.02,
                        "attack": "inverting-gradients",
                        "attack_metric": "psnr",
                        "attack_value": psnr,
                        "attack_metrics": {"psnr": psnr, "ssim": 0.4},
                        "status": "ok",
                        "error": None,
                        "seconds": 3.0,
                    }
                )
    rows.append({"point_id": "privacy-dp-sgd-eps-0p001__defense-none__seed-0",
                 "settings": {"privacy": "dp-sgd eps=0.001", "defense": "none"}, "seed": 0,
                 "status": "failed", "error": "training: privacy.target_epsilon: cannot be met"})  # fmt: skip
    return rows


@pytest.fixture
def sweep_dir(tmp_path):
    rows = make_rows()
    # an earlier, failed attempt of the first point: the latest row wins
    lines = [json.dumps({**rows[0], "status": "failed", "error": "interrupted"})] + [json.dumps(r) for r in rows]
    (tmp_path / "sweep.jsonl").write_text("\n".join(lines) + "\n" + '{"point_id": "trunc')  # a torn last line is ignored
    return tmp_path


def assert_png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))


def test_latest_row_per_point_wins_and_torn_lines_are_ignored(sweep_dir):
    rows = read_results(sweep_dir)
    assert len(rows) == 4 * 2 * 2 + 1
    assert rows[0]["status"] == "ok"
    assert [r["point_id"] for r in latest_rows(rows, ["privacy-none__defense-none__seed-1"])] == ["privacy-none__defense-none__seed-1"]


def test_settings_group_seeds_and_get_unique_labels(sweep_dir):
    settings = group_settings(read_results(sweep_dir))
    assert len(settings) == 8  # the failed point is left out
    assert all(len(s.rows) == 2 for s in settings)
    assert len({s.label for s in settings}) == 8
    none = next(s for s in settings if s.settings == (("privacy", "none"), ("defense", "none")))
    assert math.isinf(none.epsilon)
    mean, low, high = none.stats("accuracy", 100.0)
    assert low < mean < high


def test_every_plot_is_written_as_png_and_svg(sweep_dir):
    plots = write_plots(sweep_dir)
    assert set(plots) == {"accuracy_vs_epsilon", "attack_vs_epsilon", "privacy_utility_frontier", "reconstructions", "loss_curves"}
    for png, svg in plots.values():
        assert png.parent == sweep_dir / "plots"
        assert_png(png)
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    svg = plots["accuracy_vs_epsilon"][1].read_text()
    assert "∞" in svg or "221e" in svg.lower()  # the ∞ tick (as text or as a glyph reference)


def test_plots_of_an_empty_sweep_say_so(tmp_path):
    (tmp_path / "sweep.jsonl").write_text("")
    for png, _ in write_plots(tmp_path).values():
        assert_png(png, min_bytes=1000)


def test_report_is_self_contained_and_lists_every_point(sweep_dir):
    path = write_report(sweep_dir)
    assert path == sweep_dir / "report.html"
    text = path.read_text()
    for row in make_rows():
        assert row["point_id"] in text
    assert "cannot be met" in text  # the failed point's error
    assert text.count("data:image/png;base64,") == 5  # every plot, loss curves included
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text)  # nothing fetched from elsewhere
    assert "<script" not in text and "<link" not in text
    assert "Privacy ledger" in text and "prv" in text
    assert "∞" in text  # ε of the runs without DP


def test_report_of_a_directory_that_is_not_a_sweep_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a sweep directory"):
        write_report(tmp_path)


def test_csv_has_a_column_per_axis_override_and_metric():
    rows = make_rows(seeds=(0,))
    columns = csv_columns(rows)
    assert columns[:3] == ["point_id", "grid.privacy", "grid.defense"]
    for column in ("seed", "privacy.mode", "defense.names", "accuracy", "macro_f1", "epsilon", "delta", "mechanism", "defense",
                   "secure_aggregation", "attack_psnr", "attack_ssim", "seconds", "status", "error"):  # fmt: skip
        assert column in columns
    text = csv_text(rows)
    first = text.splitlines()[1]
    assert first.startswith("privacy-none__defense-none__seed-0,none,none,0,none,[],")
    assert ",inf," in first  # ε without DP


def test_report_marks_reproducible_noise_as_no_protection(tmp_path):
    rows = make_rows(seeds=(0,))
    seeded = {
        "source": "seed",
        "secure_sampler": True,
        "warning": "reproducible from run.seed: no protection against anyone who knows the seed",
    }
    secret = {"source": "os-csprng", "secure_sampler": True}
    dp_rows = [r for r in rows if r.get("mechanism") == "dp-sgd"]
    dp_rows[0]["privacy"]["noise"] = seeded
    dp_rows[1]["privacy"] = {**dp_rows[1]["privacy"], "noise": secret}
    (tmp_path / "sweep.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = write_report(tmp_path).read_text()
    assert text.count("<td class='warning'>run.seed: no protection against anyone who knows the seed") == 1  # the seeded point's cell
    assert "Reproducible noise" in text and dp_rows[0]["point_id"] in text.split("Reproducible noise")[1].split("</p>")[0]
    assert "secret per party (OS CSPRNG" in text


def test_report_without_reproducible_noise_has_no_warning(sweep_dir):
    assert "Reproducible noise" not in write_report(sweep_dir).read_text()


class UnaccountedMechanism(NoPrivacy):
    """A mechanism without a formal guarantee under another name: ε = ∞ follows its class, not the name "none"."""

    name = "test-unaccounted"
    label = "test unaccounted"


def test_epsilon_is_infinite_where_the_registered_class_spends_no_budget(tmp_path):
    rows = [dict(r, mechanism="test-unaccounted") if r.get("mechanism") == "none" else r for r in make_rows(seeds=(0,))]
    (tmp_path / "sweep.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with MECHANISM_REGISTRY.registered("test-unaccounted", UnaccountedMechanism):
        first = csv_text(rows).splitlines()[1]
        assert first.startswith("privacy-none__defense-none__seed-0,") and ",inf," in first
        unaccounted = next(s for s in group_settings(rows) if s.mechanism == "test-unaccounted")
        assert math.isinf(unaccounted.epsilon) and not unaccounted.spends_budget
        assert mechanism_label("test-unaccounted") == "test unaccounted" and mechanism_label("dp-sgd") == "DP-SGD"
        write_plots(tmp_path)  # the unaccounted setting is drawn at ε = ∞
    # a mechanism this installation does not know: the ε its rows recorded is kept
    assert spends_budget({"mechanism": "test-not-installed"}) and not spends_budget({"mechanism": "none"})


def test_sweep_rows_say_how_the_attack_budget_ended(tmp_path):
    rows = make_rows(seeds=(0,))
    ok = [r for r in rows if r["status"] == "ok"]
    for row in ok:
        row.update(attack_iterations=20, attack_stopped_by="iterations")
    ok[1].update(attack_iterations=7, attack_stopped_by="time")
    columns = csv_columns(rows)
    assert {"attack_iterations", "attack_stopped_by"} <= set(columns)
    parsed = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert [(r["attack_iterations"], r["attack_stopped_by"]) for r in parsed[:2]] == [("20", "iterations"), ("7", "time")]
    assert parsed[-1]["attack_stopped_by"] == ""  # the failed point was not audited
    (tmp_path / "sweep.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = write_report(tmp_path).read_text()
    assert text.count("stopped by its time budget") == 1
    assert "attack stopped by its time budget after 7 iterations" in text


def test_an_attack_metric_named_like_a_result_column_does_not_repeat_the_column():
    rows = make_rows(seeds=(0,))
    rows[0]["attack_metrics"] = {**rows[0]["attack_metrics"], "iterations": 3.0}
    rows[0]["attack_iterations"] = 20
    columns = csv_columns(rows)
    assert columns.count("attack_iterations") == 1
    assert next(csv.DictReader(io.StringIO(csv_text(rows))))["attack_iterations"] == "20"


def test_a_config_key_that_only_some_points_set_is_an_empty_cell_in_the_others():
    rows = make_rows(seeds=(0,))
    for row in rows:
        row["config"] = {**(row.get("config") or {}), "public_data.dataset": None, "ffm.public_steps": 0}
    rows[0]["config"].update({"public_data.dataset": "product_reviews", "ffm.public_steps": 60})
    parsed = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert (parsed[0]["public_data.dataset"], parsed[0]["ffm.public_steps"]) == ("product_reviews", "60")
    assert (parsed[1]["public_data.dataset"], parsed[1]["ffm.public_steps"]) == ("", "0")


def test_sweep_csv_writes_a_formula_as_text():
    """A sweep label such as =HYPERLINK(...) ran as a formula when sweep.csv was opened in a spreadsheet."""
    rows = make_rows(seeds=(0,))
    rows[0]["settings"] = {**rows[0]["settings"], "privacy": '=HYPERLINK("http://evil.example/","click me")'}
    rows[0]["accuracy"] = -0.5  # a number keeps its sign
    parsed = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert parsed[0]["grid.privacy"] == '\'=HYPERLINK("http://evil.example/","click me")'
    assert parsed[0]["accuracy"] == "-0.5"
