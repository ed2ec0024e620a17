"""The cheapest real run: tiny CNN, 200 Fashion-MNIST images, 2 clients, 1 step a round, 2 rounds."""

import hashlib
from pathlib import Path

from secure_ffm.run.cli import main

TINY = """\
[data]
dataset = "fashion_mnist"
max_train_examples = 200
max_test_examples = 100
num_clients = 2
[model]
arch = "cnn"
finetune = "full"
[client]
local_steps = 1
[server]
rounds = 2
"""


def train(config: Path, out: Path, *extra: str) -> int:
    """``secure-ffm train CONFIG --out OUT --quiet EXTRA...`` in this process."""
    return main(["train", str(config), "--out", str(out), "--quiet", *extra])


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> content hash (``dir`` for folders)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}
