"""Hostile inputs to ``secure-ffm train``: each is exit 2, one ``error:`` line naming the problem, and nothing written.

A case builds its files under a fresh folder and returns the command line; the whole folder
(config files, run directories, and ``runs/`` where a default run directory would go) is
snapshot before and after, so "nothing written or changed" covers every path a case touches.
Most cases stop at validation before any data loads; the run-directory cases copy one
finished two-round run and damage it.
"""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny_run import TINY, snapshot  # tests/engine/tiny_run.py (on sys.path under pytest)

from secure_ffm.run.cli import main


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[["Setup"], list[str]]
    expected: str
    """A piece of the one stderr line: the key or path and the problem."""


@dataclass(frozen=True)
class Setup:
    """Where a case builds its inputs: ``root`` (snapshot), the tiny config, a finished run to copy."""

    root: Path
    tiny: Path
    finished: Path

    def config(self, content: str | bytes, name: str = "c.toml") -> str:
        path = self.root / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def train(self, *extra: str, config: str | None = None) -> list[str]:
        return ["train", config or str(self.tiny), "--quiet", *extra]

    def run(self, damage: Callable[[Path], None] | None = None) -> str:
        """A copy of the finished run, damaged by ``damage``."""
        out = self.root / "run"
        shutil.copytree(self.finished, out)
        if damage is not None:
            damage(out)
        return str(out)

    def resume(self, damage: Callable[[Path], None] | None = None, *extra: str) -> list[str]:
        return self.train("--out", self.run(damage), "--resume", *extra)


def _overwrite(relative: str, content: bytes) -> Callable[[Path], None]:
    return lambda run: (run / relative).write_bytes(content)


def _truncate(relative: str, keep: int) -> Callable[[Path], None]:
    return lambda run: (run / relative).write_bytes((run / relative).read_bytes()[:keep])


def _every_checkpoint(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda run: [damage(path) for path in sorted((run / "checkpoints").glob("round_*"))]


def _replace_config_value(old: str, new: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        text = (run / "config.toml").read_text()
        assert old in text
        (run / "config.toml").write_text(text.replace(old, new, 1))

    return damage


def _drop_metrics_row(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:1]))


def _checkpoints_as_a_file(run: Path) -> None:
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("not a folder")


def _state_of_round_nine(path: Path) -> None:
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "round": 9}))


def _foreign_weights(path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"other.weight": np.zeros((3, 3), dtype=np.float32)}, str(path / "global.safetensors"))


CORPUS = "one\ntwo\nthree\n"
"""An unlabeled corpus: one document per line."""
BLANK = "\n  \n"

CASES = [
    # ------------------------------------------------------------ config files
    Case("binary config", lambda s: s.train(config=s.config(b"\xff\xfe\x00\x01bad")), "is not UTF-8 text (byte 0xff at offset 0)"),
    Case(
        "config nested too deeply",  # tomllib raised RecursionError: a traceback
        lambda s: s.train(config=s.config("a = " + "[" * 3000 + "]" * 3000 + "\n")),
        "nests arrays or tables too deeply for a config",
    ),
    Case(
        "latin-1 config", lambda s: s.train(config=s.config('[run]\nname = "caf\xe9"\n'.encode("latin-1"))), "is not UTF-8 text (byte 0xe9"
    ),
    Case("empty config", lambda s: s.train(config=s.config("")), "holds no settings (start from a shipped config"),
    Case("comments-only config", lambda s: s.train(config=s.config("# nothing here\n\n")), "holds no settings"),
    Case("bad TOML syntax", lambda s: s.train(config=s.config("[data\nnum_clients = 2\n")), "is not valid TOML"),
    Case("duplicate key", lambda s: s.train(config=s.config("[client]\nlr = 0.1\nlr = 0.2\n")), "is not valid TOML"),
    Case("directory as CONFIG", lambda s: s.train(config=str(s.root)), "is a directory, not a file"),
    Case("missing CONFIG file", lambda s: s.train(config=str(s.root / "nope.toml")), "does not exist"),
    Case(
        "unknown section",
        lambda s: s.train(config=s.config(TINY + "[sever]\nrounds = 2\n")),
        "[sever]: unknown section (did you mean [server]?)",
    ),
    Case("top-level key", lambda s: s.train(config=s.config("seed = 3\n" + TINY)), "[seed]: unknown section"),
    Case("section given a scalar", lambda s: s.train(config=s.config("run = 3\n" + TINY)), "run: must be a table"),
    Case(
        "nested table for a number",
        lambda s: s.train(config=s.config(TINY + "[client.lr]\nvalue = 0.1\n")),
        "client.lr: must be a number, got dict",
    ),
    Case(
        "list for a scalar",
        lambda s: s.train(config=s.config(TINY.replace("local_steps = 1", "local_steps = [1]"))),
        "client.local_steps: must be an integer, got list",
    ),
    Case(
        "string for an int",
        lambda s: s.train(config=s.config(TINY.replace("rounds = 2", 'rounds = "2"'))),
        "server.rounds: must be an integer, got str",
    ),
    Case(
        "float for an int",
        lambda s: s.train(config=s.config(TINY.replace("rounds = 2", "rounds = 2.5"))),
        "server.rounds: must be an integer, got float",
    ),
    Case(
        "bool for an int",
        lambda s: s.train(config=s.config(TINY.replace("rounds = 2", "rounds = true"))),
        "server.rounds: must be an integer, got bool",
    ),
    Case(
        "scalar for a list",
        lambda s: s.train("--set", "model.lora_target_modules=query"),
        "model.lora_target_modules: must be a list of str",
    ),
    Case(
        "nan learning rate",
        lambda s: s.train(config=s.config(TINY.replace("local_steps = 1", "local_steps = 1\nlr = nan"))),
        "client.lr: must be positive, got nan",
    ),
    Case("inf alpha", lambda s: s.train("--set", "data.alpha=inf"), "data.alpha: must be positive, got inf"),
    Case("-inf momentum", lambda s: s.train("--set", "client.momentum=-inf"), "client.momentum: must be non-negative"),
    Case("negative clients", lambda s: s.train("--set", "data.num_clients=-2"), "data.num_clients: must be positive, got -2"),
    Case("negative seed", lambda s: s.train("--set", "run.seed=-1"), "run.seed: must be non-negative"),
    Case("threads beyond a C int", lambda s: s.train("--set", "run.threads=4294967296"), "run.threads: 4294967296 is more than 1024"),
    Case("lr beyond float32", lambda s: s.train("--set", "client.lr=1e308"), "client.lr: 1e+308 overflows float32"),
    Case(
        "weight decay beyond float32",
        lambda s: s.train("--set", "client.weight_decay=1e39"),
        "client.weight_decay: 1e+39 overflows float32",
    ),
    Case("server lr beyond float32", lambda s: s.train("--set", "server.server_lr=1e39"), "server.server_lr: 1e+39 overflows float32"),
    Case("alpha that overflows Dirichlet", lambda s: s.train("--set", "data.alpha=1e308"), "data.alpha: 1e+308 is more than 1e+06"),
    # found by a fuzz of every key (2026-12-07): each of these ended a run with a traceback (OverflowError, ValueError) after
    # it had written its directory, or (the ε) kept PRV's calibration running past two minutes
    Case(
        "worker timeout the OS cannot wait",
        lambda s: s.train("--set", "run.workers=2", "--set", "run.worker_timeout=1e308"),
        "run.worker_timeout: 1e+308 seconds is more than 1e+06",
    ),
    Case(
        "an ε PRV cannot calibrate for",
        lambda s: s.train("--set", 'privacy.mode="dp-sgd"', "--set", "privacy.target_epsilon=10000"),
        "privacy.target_epsilon: 10000.0 is above 100, where the prv accountant's calibration runs for minutes and fails",
    ),
    Case(
        "noise multiplier beyond the accountant",
        lambda s: s.train("--set", 'privacy.mode="dp-fedavg"', "--set", "privacy.noise_multiplier=1e308"),
        "privacy.noise_multiplier: 1e+308 is above 1000",
    ),
    Case(
        "clip learning rate beyond float32",
        lambda s: s.train("--set", "privacy.clip_learning_rate=1e308"),
        "privacy.clip_learning_rate: 1e+308 overflows float32",
    ),
    Case(
        "DP-FedAvg clip norm beyond float32",
        lambda s: s.train("--set", "privacy.clip_norm=1e39"),
        "privacy.clip_norm: 1e+39 overflows float32",
    ),
    Case(
        "masking clip range beyond float32",
        lambda s: s.train("--set", "secure_aggregation.clip_range=1e308"),
        "secure_aggregation.clip_range: 1e+308 overflows float32",
    ),
    Case(
        "defense noise beyond float32", lambda s: s.train("--set", "defense.noise_std=1e39"), "defense.noise_std: 1e+39 overflows float32"
    ),
    Case(
        "a file dataset's key on a built-in",
        lambda s: s.train("--set", "data.image_size=32"),
        "data.image_size: 32 does not apply to the built-in dataset 'fashion_mnist'",
    ),
    Case(
        "ViT too large to allocate",
        lambda s: s.train("--set", "model.arch=vit", "--set", "model.vit_dim=4294967296", "--set", "model.vit_heads=1"),
        "model.vit_dim: 4294967296 is more than 1024",
    ),
    Case("run name escaping runs/", lambda s: s.train("--set", 'run.name="../../escape"'), "run.name: '../../escape' is not a plain name"),
    Case("empty run name", lambda s: s.train("--set", 'run.name=""'), "run.name: '' is not a plain name"),
    Case("NUL in a dataset path", lambda s: s.train("--set", 'data.dataset="data\\u0000.csv"'), "data.dataset: holds a control character"),
    Case("unknown key", lambda s: s.train("--set", "client.lrr=0.1"), "client.lrr: unknown key (did you mean client.lr?)"),
    Case("int for a bool", lambda s: s.train("--set", "server.evaluate_clients=1"), "server.evaluate_clients: must be true or false"),
    Case(
        "per-client evaluation in a masked run",
        lambda s: s.train("--set", "secure_aggregation.protocol=masking", "--set", "server.evaluate_clients=true"),
        "server.evaluate_clients: asks every client for its accuracy on its own examples",
    ),
    Case(
        "DP-FedAvg planned for fewer rounds than it runs",
        lambda s: s.train("--set", 'privacy.mode="dp-fedavg"', "--set", "privacy.planned_rounds=1"),
        "privacy.planned_rounds: 1 is fewer than the run's 2 federated rounds",
    ),
    Case(
        "unknown client-metrics policy",
        lambda s: s.train("--set", 'privacy.client_metrics="some"'),
        "privacy.client_metrics: unknown value",
    ),
    Case(
        "more clients per round than clients",
        lambda s: s.train("--set", "server.clients_per_round=3"),
        "server.clients_per_round: 3 is more than data.num_clients=2",
    ),
    Case(
        "capture of a client that does not exist",
        lambda s: s.train("--set", "audit.capture_clients=[7]"),
        "audit.capture_clients: client 7 does not exist",
    ),
    Case(
        "CKKS scale with no headroom",
        lambda s: s.train(
            "--set",
            "secure_aggregation.protocol=ckks",
            "--set",
            "secure_aggregation.ckks_coeff_mod_bit_sizes=[60, 60]",
            "--set",
            "secure_aggregation.ckks_scale_bits=57",
        ),
        "secure_aggregation.ckks_scale_bits: scale 2^57 leaves 2^1 of headroom",
    ),
    Case(
        "masking threshold above the participants",
        lambda s: s.train("--set", "secure_aggregation.protocol=masking", "--set", "secure_aggregation.threshold=5"),
        "secure_aggregation.threshold: t=5 is more than the 2 clients",
    ),
    Case("dataset file that does not exist", lambda s: s.train("--set", f"data.dataset={s.root / 'nope.csv'}"), "data.dataset: file"),
    # ------------------------------------------------------------ unlabeled corpora and public data
    Case(
        "classification on an unlabeled corpus",
        lambda s: s.train("--set", f"data.dataset={s.config(CORPUS, name='corpus.txt')}"),
        "data.dataset: holds unlabeled text",
    ),
    Case(
        "empty corpus",
        lambda s: s.train("--set", f"data.dataset={s.config(BLANK, name='blank.txt')}"),
        "blank.txt' holds no text (every line is blank)",
    ),
    Case(
        "corpus folder without .txt files",
        lambda s: (s.root / "texts").mkdir() or s.train("--set", f"data.dataset={s.root / 'texts'}"),
        "texts' holds no .txt files",
    ),
    Case(
        "public_fraction and [public_data] both",
        lambda s: s.train("--set", "public_data.dataset=trec", "--set", "data.public_fraction=0.1"),
        "data.public_fraction: 0.1 and [public_data] both give the server public data",
    ),
    Case(
        "schedule without public data",
        lambda s: s.train("--set", "ffm.schedule=adaptive"),
        'ffm.schedule: "adaptive" trains on the server\'s public data, but data.public_fraction is 0 and there is no [public_data]',
    ),
    Case(
        "public data of another kind",
        lambda s: s.train("--set", f"public_data.dataset={s.config(CORPUS, name='corpus.txt')}"),
        "corpus.txt' holds text data but data.dataset 'fashion_mnist' holds image data",
    ),
    Case(
        "public data with other classes",
        lambda s: s.train("--set", "public_data.dataset=digits"),
        "public_data.dataset: 'digits' has classes '0', '1'",
    ),
    Case(
        "partition key in [public_data]",
        lambda s: s.train("--set", "public_data.dataset=digits", "--set", "public_data.num_clients=3"),
        "public_data.num_clients: does not apply to the server's public data",
    ),
    # ------------------------------------------------------------ overrides
    Case("--set without =", lambda s: s.train("--set", "client.lr"), "--set: 'client.lr' is not section.key=value"),
    Case(
        "--set on an unknown section",
        lambda s: s.train("--set", "sever.rounds=2"),
        "sever.rounds: unknown section (did you mean server.rounds?)",
    ),
    Case("--set with three parts", lambda s: s.train("--set", "client.lr.x=1"), "--set: 'client.lr.x' is not section.key"),
    Case("--set with an empty key", lambda s: s.train("--set", "client.=1"), "client.: unknown key"),
    Case("--set with a list for a number", lambda s: s.train("--set", "client.lr=[1]"), "client.lr: must be a number, got list"),
    Case("--set with a table for a number", lambda s: s.train("--set", "client.lr={a = 1}"), "client.lr: must be a number, got dict"),
    Case("--set with an empty value", lambda s: s.train("--set", "data.dataset="), "data.dataset: is empty"),
    Case("--set with a word for a number", lambda s: s.train("--set", "client.lr=fast"), "client.lr: must be a number, got str"),
    # ------------------------------------------------------------ command line
    Case("unknown flag", lambda s: s.train("--bogus"), "unrecognized arguments: --bogus"),
    Case("missing CONFIG", lambda s: ["train"], "the following arguments are required: config"),
    Case("unknown command", lambda s: ["trian", str(s.tiny)], "invalid choice: 'trian'"),
    Case("--set without its value", lambda s: s.train("--set"), "argument --set: expected one argument"),
    Case("unknown log level", lambda s: ["--log-level", "loud", *s.train()], "argument --log-level: invalid choice: 'LOUD'"),
    Case("--resume without --out", lambda s: s.train("--resume"), "--resume: needs the run directory"),
    Case("empty --out", lambda s: s.train("--out", ""), "--out: is empty"),
    Case("--out is a file", lambda s: s.train("--out", s.config("x", name="file")), "is a file, not a directory"),
    Case("--out inside a file", lambda s: s.train("--out", s.config("x", name="file") + "/run"), "cannot be created: "),
    Case("--out not empty without --resume", lambda s: s.train("--out", s.run()), "already exists and is not empty"),
    # ------------------------------------------------------------ run directories (--resume)
    Case(
        "--resume on a folder that is not a run",
        lambda s: (s.root / "plain").mkdir() or s.train("--out", str(s.root / "plain"), "--resume"),
        "is not a run directory",
    ),
    Case("--resume on a missing folder", lambda s: s.train("--out", str(s.root / "nowhere"), "--resume"), "is not a run directory"),
    Case(
        "--resume with a binary config.toml",
        lambda s: s.resume(_overwrite("config.toml", b"\x00\xff\xfe")),
        "config.toml cannot be used: is not UTF-8",
    ),
    Case(
        "--resume with a cut config.toml",
        lambda s: s.resume(_overwrite("config.toml", b'[run]\nseed = 0\nname = "ru')),
        "config.toml cannot be used: is not valid TOML",
    ),
    Case("--resume with an empty config.toml", lambda s: s.resume(_overwrite("config.toml", b"")), "config.toml cannot be used: is empty"),
    Case(
        "--resume with an unknown key in config.toml",
        lambda s: s.resume(_replace_config_value("[run]\n", "[run]\nbogus = 1\n")),
        "config.toml cannot be used at run.bogus: unknown key",
    ),
    Case(
        "--resume with different settings",
        lambda s: s.resume(_replace_config_value("lr = 0.05", "lr = 0.5")),
        "the config differs from the run's config.toml in client.lr",
    ),
    Case(
        "--resume with different --set",
        lambda s: s.resume(None, "--set", "client.lr=0.5"),
        "the config differs from the run's config.toml in client.lr",
    ),
    Case(
        "--resume with fewer rounds than done",
        lambda s: s.resume(None, "--set", "server.rounds=1"),
        "server.rounds: 1 is fewer than the 2 rounds",
    ),
    Case(
        "--resume with garbage in metrics.jsonl",
        lambda s: s.resume(_overwrite("metrics.jsonl", b"garbage\n{}\n")),
        "metrics.jsonl line 1 is not a metrics row",
    ),
    Case(
        "--resume with a metrics line nested too deeply",  # json.loads raised RecursionError: a traceback
        lambda s: s.resume(_overwrite("metrics.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n")),
        "metrics.jsonl line 1 is not a metrics row",
    ),
    Case(
        "--resume with every state.json nested too deeply",
        lambda s: s.resume(_every_checkpoint(lambda p: _overwrite("state.json", b"[" * 100_000 + b"]" * 100_000)(p))),
        "no readable checkpoint in",
    ),
    Case(
        "--resume with a metrics row missing",
        lambda s: s.resume(_drop_metrics_row),
        "metrics.jsonl holds rounds [1] but the checkpoint is at round 2",
    ),
    Case(
        "--resume with binary metrics.jsonl", lambda s: s.resume(_overwrite("metrics.jsonl", b"\xff\xfe\n")), "metrics.jsonl cannot be read"
    ),
    Case(
        "--resume with every checkpoint truncated",
        lambda s: s.resume(_every_checkpoint(lambda p: _truncate("global.safetensors", 100)(p))),
        "no readable checkpoint in",
    ),
    Case(
        "--resume with every checkpoint's arrays missing",
        lambda s: s.resume(_every_checkpoint(lambda p: (p / "global.safetensors").unlink())),
        "global.safetensors is missing",
    ),
    Case(
        "--resume with state.json of another format",
        lambda s: s.resume(_every_checkpoint(lambda p: _overwrite("state.json", b'{"format": 2}')(p))),
        "checkpoint format 2 is not 1",
    ),
    Case(
        "--resume with state.json a list",
        lambda s: s.resume(_every_checkpoint(lambda p: _overwrite("state.json", b"[]")(p))),
        "holds a JSON list, not a checkpoint's table",
    ),
    Case(
        "--resume with state.json not JSON",
        lambda s: s.resume(_every_checkpoint(lambda p: _overwrite("state.json", b'{"round": ')(p))),
        "state.json cannot be read",
    ),
    Case(
        "--resume with state.json naming another round",
        lambda s: s.resume(_every_checkpoint(_state_of_round_nine)),
        "does not match the folder",
    ),
    Case("--resume with weights of another model", lambda s: s.resume(_every_checkpoint(_foreign_weights)), "does not fit the model"),
    Case("--resume with checkpoints a file", lambda s: s.resume(_checkpoints_as_a_file), "checkpoints is not a directory"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(case, tiny_config, finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a default run directory (runs/...) would land inside the snapshot
    argv = case.argv(Setup(tmp_path, tiny_config, finished_run))
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "error: " in err and case.expected in err, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_the_table_holds_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(TINY)
    path.chmod(0)
    assert main(["train", str(path), "--quiet", "--out", str(tmp_path / "run")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _console(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "secure_ffm.run.cli", *argv], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_console_script_binary_config_is_exit_2_without_traceback(tmp_path):
    (tmp_path / "c.toml").write_bytes(b"\xff\xfe\x00\x01")
    result = _console("train", "c.toml", "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "secure-ffm train: error: c.toml: is not UTF-8 text (byte 0xff at offset 0) (save it as UTF-8 TOML)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_console_script_resume_of_a_damaged_run_is_exit_2_without_traceback(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.toml").write_bytes(b"\xff")
    before = snapshot(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(TINY)
    result = _console("train", str(config), "--out", str(run), "--resume", "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--resume: the run's" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "c.toml"} == before
    assert json.loads((run / "summary.json").read_text())["rounds"] == 2
