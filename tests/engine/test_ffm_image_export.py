"""Images end to end: colour cnn/vit runs on an image folder, and the ViT public -> private path through the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tiny_run import train  # tests/engine/tiny_run.py

from secure_ffm.config import config_from_dict
from secure_ffm.run.simulation import Simulation, prepare_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VIT = {"arch": "vit", "finetune": "full", "vit_patch_size": 4, "vit_dim": 16, "vit_heads": 2, "vit_depth": 1}


def image_run(folder: Path, *, model: dict, **sections: dict):
    raw = {
        "data": {"dataset": str(folder), "num_clients": 2, "partition": "iid"},
        "model": model,
        "client": {"local_steps": 1, "batch_size": 4},
        "server": {"rounds": 1},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


@pytest.fixture
def folder(tmp_path: Path, make_image_folder) -> Path:
    return make_image_folder(tmp_path / "images", per_class=10)


@pytest.mark.parametrize("model", [{"arch": "cnn", "finetune": "full"}, VIT], ids=["cnn", "vit"])
def test_a_colour_model_runs_a_round_on_an_image_folder(folder: Path, model: dict) -> None:
    prepared = prepare_run(image_run(folder, model=model))
    assert prepared.encoded_private.tensors["pixels"].shape[1:] == (3, 8, 8)
    summary = Simulation(prepared).run()
    assert np.isfinite(summary["final"]["test_loss"])


def test_a_vit_pretrained_on_public_images_continues_on_private_images_from_its_export(folder: Path, tmp_path: Path) -> None:
    pretrain = image_run(
        folder,
        model=VIT,
        data={"public_fraction": 0.3},
        server={"rounds": 3},
        ffm={"schedule": "alternating", "public_steps": 2, "export": True},
    )
    Simulation(prepare_run(pretrain), out_dir=tmp_path / "pretrain").run()
    export = tmp_path / "pretrain" / "model"
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors"]

    private = image_run(folder, model={**VIT, "name_or_path": str(export)}, server={"rounds": 1})
    prepared = prepare_run(private)
    exported, final = load_file(str(export / "model.safetensors")), load_file(str(tmp_path / "pretrain" / "model.safetensors"))
    assert set(prepared.initial_parameters) == set(exported) == set(final)
    for name, value in prepared.initial_parameters.items():
        assert np.array_equal(value, exported[name]) and np.array_equal(value, final[name]), name
    assert np.isfinite(Simulation(prepared).run()["final"]["test_loss"])


def test_the_cli_trains_on_an_image_folder_and_refuses_a_model_folder_that_does_not_load(folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "images.toml"
    config.write_text(
        f'[data]\ndataset = "{folder}"\nnum_clients = 2\nimage_size = 12\n'
        '[model]\narch = "cnn"\nfinetune = "full"\n[client]\nlocal_steps = 1\nbatch_size = 4\n[server]\nrounds = 1\n'
        "[ffm]\nexport = true\n"
    )
    assert train(config, tmp_path / "run") == 0
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "model" / "config.json").is_file()

    assert train(config, tmp_path / "bad", "--set", f'model.name_or_path="{tmp_path / "nowhere"}"') == 2
    assert not (tmp_path / "bad").exists()
