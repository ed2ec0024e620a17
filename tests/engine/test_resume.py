"""--resume finishes every interrupted run: before its first checkpoint, after a damaged checkpoint or a torn metrics line."""

import json
import logging
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file
from tiny_run import train  # tests/engine/tiny_run.py (on sys.path under pytest)

from secure_ffm.config import load_config
from secure_ffm.run.checkpoint import Checkpoint, checkpoint_dirs, save_checkpoint, write_text_atomically
from secure_ffm.run.simulation import RunObserver, Simulation, prepare_run, without_timings


def rows(run):
    return [without_timings(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


class KilledAtRoundOne(RunObserver):
    def round_started(self, round, clients):
        raise KeyboardInterrupt


def test_a_run_killed_before_its_first_checkpoint_resumes_from_round_one(tiny_config, finished_run, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Simulation(prepare_run(load_config(tiny_config)), out_dir=out, observer=KilledAtRoundOne()).run()
    assert (out / "config.toml").is_file() and not (out / "checkpoints").exists()
    assert train(tiny_config, out, "--resume") == 0
    assert rows(out) == rows(finished_run)
    assert same_weights(out, finished_run)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_with_a_warning(tiny_config, finished_run, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    newest = out / "checkpoints" / "round_0002" / "global.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="secure_ffm.run.simulation"):
        assert train(tiny_config, out, "--resume") == 0
    assert "round_0002/global.safetensors cannot be read" in caplog.text
    assert "resuming from the earlier checkpoint round_0001" in caplog.text
    assert rows(out) == rows(finished_run)
    assert same_weights(out, finished_run)


def test_an_unfinished_metrics_line_is_dropped_on_resume(tiny_config, finished_run, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    # killed while appending round 2's row, before round 2's checkpoint (as the old non-atomic writer could be)
    shutil.rmtree(out / "checkpoints" / "round_0002")
    first, second = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text(first + second[:30])
    with caplog.at_level(logging.WARNING, logger="secure_ffm.run.simulation"):
        assert train(tiny_config, out, "--resume") == 0
    assert "dropping its unfinished last line" in caplog.text
    assert rows(out) == rows(finished_run)


def test_resume_with_more_rounds_extends_the_run_and_its_config(tiny_config, finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    assert train(tiny_config, out, "--resume", "--set", "server.rounds=3") == 0
    assert [r["round"] for r in rows(out)] == [1, 2, 3]
    assert rows(out)[:2] == rows(finished_run)
    assert load_config(out / "config.toml").server.rounds == 3
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["round_0003", "round_0002"]


def test_a_run_keeps_its_two_newest_checkpoints(tmp_path):
    for round in (1, 2, 3):
        save_checkpoint(tmp_path, Checkpoint(round, {"w": np.full(2, round, dtype=np.float32)}, {}, {}, {}))
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["round_0003", "round_0002"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")

    class DiskFull(OSError):
        pass

    def write_half(tmp):
        tmp.write_text("ne")
        raise DiskFull(28, "No space left on device")

    from secure_ffm.run.checkpoint import write_atomically

    with pytest.raises(DiskFull):
        write_atomically(path, write_half)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    write_text_atomically(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_an_atomic_write_keeps_the_usual_file_mode(tmp_path):
    write_text_atomically(tmp_path / "atomic.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_a_run_directory_holds_no_temporary_files(finished_run):
    assert not [p for p in finished_run.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_a_fresh_start_ignores_the_temporary_file_of_a_process_killed_mid_write(tiny_config, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.toml.0a1b2c3d.tmp").write_text("[run]\nseed =")  # SIGKILL between create and rename
    assert train(tiny_config, out) == 0
    assert (out / "summary.json").is_file()
