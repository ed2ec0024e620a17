"""ffm.export_lora = "adapter": peft adapter files that PeftModel.from_pretrained loads, and that the next run starts from."""

import json
import logging

import pytest
import torch
from tiny_encoder import save_tiny_bert, tiny_text_sections  # tests/engine/tiny_encoder.py (on sys.path under pytest)

from secure_ffm.config import config_from_dict
from secure_ffm.errors import ConfigError
from secure_ffm.run.simulation import Simulation, prepare_run


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "run"
    config = config_from_dict(tiny_text_sections(encoder, client={"lr": 0.5}, ffm={"export": True, "export_lora": "adapter"}))
    simulation = Simulation(prepare_run(config), out_dir=out)
    simulation.run()
    return out / "model", simulation


def test_the_adapter_export_loads_with_peft_onto_its_base_model(encoder, exported):
    from peft import PeftModel
    from transformers import AutoModel

    folder, simulation = exported
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "model.safetensors").exists()  # the base model is referenced, not copied
    base_reference = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_reference == str(encoder.resolve())
    adapted = PeftModel.from_pretrained(AutoModel.from_pretrained(base_reference), folder).eval()
    live = simulation.prepared.model.module.encoder.eval()
    ids = torch.tensor([[101, 2023, 3185, 2003, 2307, 102]])
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=ids)[0], live(input_ids=ids)[0], atol=1e-5)
        base_only = AutoModel.from_pretrained(base_reference).eval()(input_ids=ids)[0]
    assert not torch.allclose(base_only, live(input_ids=ids)[0], atol=1e-4)  # the adapter carries the training


def test_the_next_run_starts_from_base_plus_adapter_merged(encoder, exported):
    folder, simulation = exported
    config = config_from_dict(tiny_text_sections(encoder, model={"name_or_path": str(folder), "finetune": "full"}))
    prepared = prepare_run(config)
    query = prepared.model.module.encoder.encoder.layer[0].attention.self.query
    live = simulation.prepared.model.module.encoder.encoder.layer[0].attention.self.query
    expected = live.base_layer.weight.detach() + live.get_delta_weight("default").detach()
    assert not hasattr(query, "base_layer")  # a plain encoder: the adapter is merged into its weights
    assert torch.allclose(query.weight.detach(), expected, atol=1e-6)
    assert Simulation(prepared).run()["final"]["test_loss"] is not None


def test_an_adapter_export_without_lora_is_refused(encoder):
    with pytest.raises(ConfigError, match="ffm.export_lora.*finetune"):
        config_from_dict(tiny_text_sections(encoder, model={"finetune": "full"}, ffm={"export": True, "export_lora": "adapter"}))


def test_export_lora_without_an_export_is_refused(encoder):
    with pytest.raises(ConfigError, match="ffm.export_lora"):
        config_from_dict(tiny_text_sections(encoder, ffm={"export_lora": "adapter"}))


def test_an_adapter_folder_whose_base_is_gone_is_one_config_error(encoder, exported, tmp_path):
    import shutil

    folder, _ = exported
    copy = shutil.copytree(folder, tmp_path / "adapter")
    info = json.loads((copy / "secure_ffm_export.json").read_text())
    (copy / "secure_ffm_export.json").write_text(json.dumps({**info, "base_model": str(tmp_path / "no-such-base")}))
    config = config_from_dict(tiny_text_sections(encoder, model={"name_or_path": str(copy), "finetune": "head"}))
    with pytest.raises(ConfigError, match="model.name_or_path.*base model"):
        prepare_run(config)


def test_loading_an_export_without_the_pooler_is_quiet_but_a_missing_weight_is_warned(encoder, tmp_path, caplog, capfd):
    from transformers import AutoModel

    from secure_ffm.models.text import load_encoder

    full = AutoModel.from_pretrained(encoder)
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("pooler.")}
    full.save_pretrained(tmp_path / "no-pooler", state_dict=state)
    del state["encoder.layer.0.output.dense.bias"]
    full.save_pretrained(tmp_path / "gap", state_dict=state)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="secure_ffm"):
        load_encoder(str(tmp_path / "no-pooler"))
        assert not caplog.records and "LOAD REPORT" not in capfd.readouterr().err
        load_encoder(str(tmp_path / "gap"))
    assert "1 encoder weights are not in the checkpoint" in caplog.text and "output.dense.bias" in caplog.text
