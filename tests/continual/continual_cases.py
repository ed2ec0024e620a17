"""Tiny continual runs (helpers of tests/continual): the CNN on scikit-learn's digits (1,797 images), 4 clients, 2 stages of 2 rounds."""

from pathlib import Path

from secure_ffm.run.cli import main

BASE = """\
[run]
seed = 3
threads = 1
[data]
dataset = "digits"
num_clients = 4
partition = "iid"
[model]
arch = "cnn"
finetune = "full"
[client]
batch_size = 16
lr = 0.05
local_steps = 3
"""

TWO_CLASS_STAGES = """\
[[continual.stages]]
name = "zeros and ones"
rounds = 2
classes = [0, 1]
[[continual.stages]]
name = "twos and threes"
rounds = 2
classes = ["2", "3"]
"""


def continual_toml(method: str = "naive", *, extra: str = "", stages: str = TWO_CLASS_STAGES, replay_buffer: int = 30) -> str:
    """A config: BASE, then ``extra`` sections, then ``[continual]`` with ``stages``."""
    return f'{BASE}{extra}\n[continual]\nmethod = "{method}"\nreplay_buffer = {replay_buffer}\n{stages}'


def train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", str(config), "--out", str(out), "--quiet", *extra])
