"""A tiny real run shared by the transport tests: the CNN on scikit-learn's digits, IID clients, 2 local steps."""

import numpy as np


def digits_cnn_toml(*, clients: int = 3, rounds: int = 2, workers: int | None = None) -> str:
    """The config's TOML (``workers``: a ``run.workers`` line, absent by default)."""
    workers_line = f"workers = {workers}\n" if workers is not None else ""
    return f"""\
[run]
seed = 5
threads = 1
{workers_line}[data]
dataset = "digits"
num_clients = {clients}
partition = "iid"
[model]
arch = "cnn"
finetune = "full"
[client]
batch_size = 16
local_steps = 2
[server]
rounds = {rounds}
"""


def write_partitions(prepared, folder):
    """Each client's examples as a .npz file of its own (``{client: path}``), as a node holding its data would have them:
    the last example as the file's test split (a node trains on both, in file order), labels as class names."""
    folder.mkdir()
    data, names = prepared.data, np.asarray(prepared.data.dataset.class_names)
    paths = {}
    for k, indices in enumerate(data.client_indices):
        part = data.private.subset(indices)
        images, labels = np.asarray(part.inputs), names[part.labels]
        paths[k] = str(folder / f"client{k}.npz")
        np.savez(paths[k], x_train=images[:-1], y_train=labels[:-1], x_test=images[-1:], y_test=labels[-1:])
    return paths


def two_stage_continual(method: str = "replay", *, replay_buffer: int = 20) -> str:
    """A ``[continual]`` section of two one-round stages over the digits (0 and 1, then 2 and 3)."""
    stages = "".join(
        f'[[continual.stages]]\nname = "{name}"\nrounds = 1\nclasses = {classes}\n'
        for name, classes in (("zeros and ones", [0, 1]), ("twos and threes", [2, 3]))
    )
    return f'[continual]\nmethod = "{method}"\nreplay_buffer = {replay_buffer}\n{stages}'
