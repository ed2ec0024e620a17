"""FFM export: a run writes RUN_DIR/model/ with save_pretrained, LoRA merged, and the next run fine-tunes from it."""

import numpy as np
import pytest
import torch

from secure_ffm.config import config_from_dict
from secure_ffm.run.simulation import Simulation, prepare_run


def minilm(**model):
    return config_from_dict(
        {
            "data": {"dataset": "movie_reviews", "max_train_examples": 40, "max_test_examples": 20, "num_clients": 2, "max_length": 16},
            "model": {"arch": "hf-text", **model},
            "client": {"local_steps": 1, "batch_size": 8, "lr": 0.05},
            "server": {"rounds": 1},
            "ffm": {"export": True},
        }
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    simulation = Simulation(prepare_run(minilm(finetune="lora", lora_rank=4)), out_dir=out)
    simulation.run()
    return out, simulation


def test_the_export_is_a_plain_encoder_with_the_lora_update_merged(exported):
    from transformers import AutoModel, AutoTokenizer

    out, simulation = exported
    folder = out / "model"
    assert (folder / "config.json").is_file() and not (out / "model.partial").exists()
    encoder = AutoModel.from_pretrained(folder, dtype=torch.float32)
    AutoTokenizer.from_pretrained(folder)
    assert not any("lora_" in name for name, _ in encoder.named_parameters())
    # the merged query weight of layer 0 is the base weight plus the trained low-rank update
    live = simulation.prepared.model.module.encoder.encoder.layer[0].attention.self.query
    expected = live.base_layer.weight.detach() + live.get_delta_weight("default").detach()
    exported_weight = encoder.encoder.layer[0].attention.self.query.weight.detach()
    assert torch.allclose(exported_weight, expected, atol=1e-6)
    assert not torch.allclose(exported_weight, live.base_layer.weight.detach())  # training moved it


def test_the_next_run_fine_tunes_from_the_export(exported, tmp_path):
    out, _ = exported
    config = minilm(finetune="head").replace(**{"model.name_or_path": f'"{out / "model"}"', "ffm.export": "false"})
    summary = Simulation(prepare_run(config)).run()
    assert np.isfinite(summary["final"]["test_loss"])
