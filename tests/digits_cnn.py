"""A tiny real run shared by the transport tests: the CNN on scikit-learn's digits, IID clients, 2 local steps."""


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
