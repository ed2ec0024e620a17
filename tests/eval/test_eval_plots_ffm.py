"""The report's loss curves shade the FFM public units of each point."""

import json

from eval.plots import loss_curves


def point(sweep, point_id, phases):
    run = sweep / "points" / point_id / "run"
    run.mkdir(parents=True)
    rows = [
        {"round": r, "phase": phase, "test_loss": 2.0 - 0.1 * r, "public_loss": 2.1 - 0.05 * r if phase else None}
        for r, phase in enumerate(phases, 1)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"point_id": point_id, "status": "ok"}


def test_each_public_unit_is_shaded_once(tmp_path):
    rows = [
        point(tmp_path, "alternating", ["public", "federated", "public", "federated"]),
        point(tmp_path, "fl-only", ["federated", "federated", "federated", "federated"]),
    ]
    png, svg = loss_curves(rows, tmp_path, tmp_path / "plots" / "loss_curves")
    assert png.stat().st_size > 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert svg.read_text().count("#f2d7a6") == 2  # the two public units of the alternating point


def test_no_finished_point_gives_an_empty_plot_not_an_error(tmp_path):
    png, _ = loss_curves([{"point_id": "x", "status": "failed"}], tmp_path, tmp_path / "loss_curves")
    assert png.is_file()
