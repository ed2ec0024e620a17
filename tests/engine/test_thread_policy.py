"""run.threads = 0: one torch thread for a small model, every core for a large one; a set value always wins."""

import os

import torch

from secure_ffm.config import config_from_dict
from secure_ffm.run.simulation import SINGLE_THREAD_MAX_PARAMETERS, auto_threads, load_data_and_model


def test_a_small_model_gets_one_thread_and_a_large_one_every_core():
    assert auto_threads(206_922) == 1
    assert auto_threads(SINGLE_THREAD_MAX_PARAMETERS) == 1
    assert auto_threads(22_000_000) == len(os.sched_getaffinity(0))


def test_the_cnn_trains_single_threaded_unless_run_threads_says_otherwise(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    base = {"data": {"dataset": "digits", "num_clients": 2}, "model": {"arch": "cnn", "finetune": "full"}}
    load_data_and_model(config_from_dict(base))
    load_data_and_model(config_from_dict({**base, "run": {"threads": 2}}))
    assert calls == [1, 2]
