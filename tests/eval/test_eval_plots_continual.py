"""Plots of a continual run, drawn from a synthetic summary and metrics rows (no training)."""

import matplotlib
import pytest

from eval.continual import parse_continual, stage_accuracy_series
from eval.plots import BUDGET_COLOR, STAGE_LINE_COLOR, accuracy_matrix_heatmap, stage_accuracy_over_rounds
from secure_ffm.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAGES = ("classes 0-1", "classes 2-3", "classes 4-5")


def continual(budget_exhausted=(), matrix=None):
    return {
        "method": "replay",
        "stages": [
            {"name": name, "index": i, "rounds": 3, "first_round": 3 * i + 1, "last_round": 3 * i + 3, "dataset": "fashion_mnist"}
            for i, name in enumerate(STAGES)
        ],
        "accuracy_matrix": matrix or [[0.91, None, None], [0.40, 0.88, None], [0.20, 0.35, 0.90]],
        "average_accuracy": 0.483,
        "forgetting": 0.615,
        "backward_transfer": -0.615,
        "budget_exhausted": list(budget_exhausted),
    }


def metrics_rows():
    rows = []
    for r in range(1, 10):
        current = (r - 1) // 3
        seen = {STAGES[j]: round(0.9 - 0.08 * (r - 3 * j - 1), 3) for j in range(current + 1)}
        rows.append({"round": r, "stage": STAGES[current], "stage_index": current, "test_accuracy": 0.5, "stage_accuracy": seen})
    return rows


def svg_with_text(path_stem, draw):
    """Draw with text kept as <text> elements (not glyph outlines), so the SVG can be searched for it."""
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        png, svg = draw(path_stem)
    return png, svg.read_text()


def test_heatmap_is_written_as_png_and_svg(tmp_path):
    png, svg = accuracy_matrix_heatmap(continual(), tmp_path / "plots" / "accuracy_matrix")
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 5000
    assert svg.suffix == ".svg" and "<svg" in svg.read_text()


def test_heatmap_annotates_every_cell_on_and_below_the_diagonal_in_percent(tmp_path):
    _, text = svg_with_text(tmp_path / "heat", lambda stem: accuracy_matrix_heatmap(continual(), stem))
    for value in ("91.0", "40.0", "88.0", "20.0", "35.0", "90.0"):
        assert f">{value}<" in text


def test_heatmap_leaves_cells_above_the_diagonal_blank_even_when_the_matrix_holds_a_value(tmp_path):
    matrix = [[0.91, 0.55, None], [0.40, 0.88, 0.12], [0.20, 0.35, 0.90]]  # 0.55 and 0.12: stages not trained yet
    _, text = svg_with_text(tmp_path / "heat", lambda stem: accuracy_matrix_heatmap(continual(matrix=matrix), stem))
    assert ">55.0<" not in text and ">12.0<" not in text
    assert ">91.0<" in text


def test_heatmap_title_names_the_method_and_its_metrics_and_stage_names_label_the_axes(tmp_path):
    _, text = svg_with_text(tmp_path / "heat", lambda stem: accuracy_matrix_heatmap(continual(), stem))
    assert "replay: average accuracy 48.3%, forgetting +61.5 pp, backward transfer -61.5 pp" in text
    assert ">after classes 4-5<" in text and ">classes 2-3<" in text


def test_a_matrix_that_does_not_match_the_stages_is_refused_naming_the_field(tmp_path):
    bad = continual(matrix=[[0.9, None], [0.4, 0.8]])
    with pytest.raises(ConfigError, match=r"continual\.accuracy_matrix: expected 3 rows of 3 values"):
        accuracy_matrix_heatmap(bad, tmp_path / "heat")
    assert not list(tmp_path.iterdir())


def test_each_stage_is_drawn_from_the_round_it_is_first_seen():
    series = stage_accuracy_series(metrics_rows(), STAGES)
    assert [points[0][0] for points in series.values()] == [1, 4, 7]
    assert [len(points) for points in series.values()] == [9, 6, 3]


def test_stage_plot_is_written_as_png_and_svg(tmp_path):
    png, svg = stage_accuracy_over_rounds(metrics_rows(), continual(), tmp_path / "plots" / "stage_accuracy")
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 5000
    assert "<svg" in svg.read_text()


def test_stage_plot_draws_a_boundary_before_each_later_stage(tmp_path):
    _, text = svg_with_text(tmp_path / "s", lambda stem: stage_accuracy_over_rounds(metrics_rows(), continual(), stem))
    gray = matplotlib.colors.to_hex(STAGE_LINE_COLOR)
    assert text.count(f"stroke: {gray}") == 2  # between stages 0|1 and 1|2


def test_stage_plot_marks_the_rounds_where_a_client_budget_ran_out(tmp_path):
    spent = [{"client": 3, "round": 7, "stage": "classes 4-5"}, {"client": 1, "round": 7, "stage": "classes 4-5"}]
    _, marked = svg_with_text(tmp_path / "a", lambda stem: stage_accuracy_over_rounds(metrics_rows(), continual(spent), stem))
    _, plain = svg_with_text(tmp_path / "b", lambda stem: stage_accuracy_over_rounds(metrics_rows(), continual(), stem))
    assert ">clients 1, 3<" in marked and BUDGET_COLOR in marked
    assert BUDGET_COLOR not in plain


def test_stage_plot_without_stage_accuracies_says_so_instead_of_failing(tmp_path):
    png, _ = stage_accuracy_over_rounds([{"round": 1, "test_accuracy": 0.5}], continual(), tmp_path / "s")
    assert png.is_file() and png.stat().st_size > 1000


def test_budget_entries_without_a_stage_take_it_from_the_round_ranges():
    summary = parse_continual(continual([{"client": 2, "round": 5}]))
    assert summary.budget_exhausted[0].line == "client 2 stopped contributing at round 5 (stage classes 2-3): privacy budget spent"
