"""The CLI's bad-input contract: one line naming the key and the fix, exit 2, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import TINY as TINY_TWO_ROUNDS  # tests/engine/tiny_run.py (on sys.path under pytest)

from secure_ffm.run.cli import main

TINY = TINY_TWO_ROUNDS.replace("rounds = 2", "rounds = 1")


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("client.lrr=0.1", "client.lrr: unknown key (did you mean client.lr?)"),
        ("client.lr=fast", "client.lr: must be a number"),
        ("client.lr=0", "client.lr: must be positive"),
        ("data.alpha=-1", "data.alpha: must be positive"),
        ("data.num_clients=500", "data.num_clients"),
        ("data.dataset=fashion_mnst", "did you mean 'fashion_mnist'?"),
        ("model.arch=cnnn", "did you mean 'cnn'?"),
        ("server.strategy=fedadamm", "did you mean 'fedadam'?"),
        ("model.arch=hf-text", "model.arch"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(config_file, tmp_path, capsys, override, expected):
    out = tmp_path / "run"
    code = main(["train", str(config_file), "--set", override, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert not out.exists()


def test_existing_run_directory_is_not_overwritten(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["train", str(config_file), "--out", str(out), "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"


def test_resume_with_changed_config_is_refused(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(out), "--quiet"]) == 0
    code = main(["train", str(config_file), "--out", str(out), "--resume", "--set", "client.lr=0.5", "--quiet"])
    assert code == 2
    assert "client.lr" in capsys.readouterr().err


def test_console_script_trains_and_reports(config_file, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "secure_ffm.run.cli", "train", str(config_file), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "run directory:" in result.stdout
    assert (out / "summary.json").is_file()


def test_console_script_exit_code_on_bad_input(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "secure_ffm.run.cli", "train", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("(pass the path of a .toml config, e.g. configs/quickstart.toml)")
    assert Path(tmp_path).exists()


def test_help_imports_no_torch():
    """`secure-ffm --help` must answer fast: the commands' plugin modules import nothing heavy (attacks register lazily)."""
    import subprocess
    import sys

    code = "import sys; from secure_ffm.run.cli import main; main(['--help']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert "attack" in done.stdout and "deploy" in done.stdout
