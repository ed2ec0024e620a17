"""The tiny Fashion-MNIST CNN run that the secure-aggregation run tests share."""

from secure_ffm.config import Config, config_from_dict


def cnn_config(**sections: dict) -> Config:
    """4 clients (Dirichlet 0.5) on 800 examples, 2 rounds of 5 local SGD steps; ``sections`` update the raw config."""
    raw = {
        "run": {"seed": 3, "name": "tiny-cnn"},
        "data": {
            "dataset": "fashion_mnist",
            "max_train_examples": 800,
            "max_test_examples": 400,
            "num_clients": 4,
            "partition": "dirichlet",
            "alpha": 0.5,
        },
        "model": {"arch": "cnn", "finetune": "full"},
        "client": {"local_steps": 5, "batch_size": 32, "lr": 0.05, "momentum": 0.9},
        "server": {"rounds": 2},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)
