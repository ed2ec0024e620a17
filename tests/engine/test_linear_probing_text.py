"""Linear probing on a text encoder (``model.linear_probe_rounds``): the frozen encoder runs without autograd, LoRA waits."""

import numpy as np
from tiny_encoder import save_tiny_bert, tiny_text_sections  # tests/engine/tiny_encoder.py (on sys.path under pytest)

from secure_ffm.config import config_from_dict
from secure_ffm.engine.client import TRAIN_ONLY, held_fixed
from secure_ffm.run.simulation import Simulation, prepare_run


def test_a_text_encoder_with_nothing_to_train_runs_without_autograd(tmp_path):
    raw = tiny_text_sections(save_tiny_bert(tmp_path / "bert"), model={"linear_probe_rounds": 1}, server={"rounds": 2})
    prepared = prepare_run(config_from_dict(raw))
    model = prepared.model
    assert model.module.track_encoder_grad
    with model.holding_fixed(held_fixed(model, {TRAIN_ONLY: "head"})):
        assert not model.module.track_encoder_grad
        model.loss(model.make_batch(prepared.encoded_private, np.arange(4))).backward()
        assert all(p.grad is None for name, p in model.module.named_parameters() if not name.startswith("head."))
        assert model.module.head.weight.grad is not None
    assert model.module.track_encoder_grad
    model.module.zero_grad(set_to_none=True)


def test_lora_waits_for_the_head_only_rounds_then_trains(tmp_path):
    raw = tiny_text_sections(
        save_tiny_bert(tmp_path / "bert"),
        model={"linear_probe_rounds": 1},
        server={"rounds": 2},
        privacy={"mode": "distributed-dp-sgd", "target_epsilon": 8.0},
        secure_aggregation={"protocol": "masking"},
    )
    simulation = Simulation(prepare_run(config_from_dict(raw)))
    initial = {k: v.copy() for k, v in simulation.server.parameters.items()}
    simulation.history.append(simulation.run_unit(1))
    probed = {k: v.copy() for k, v in simulation.server.parameters.items()}
    simulation.history.append(simulation.run_unit(2))
    lora = [name for name in initial if "lora_" in name]
    assert lora
    assert all(np.array_equal(probed[name], initial[name]) for name in lora)
    assert not np.array_equal(probed["head.weight"], initial["head.weight"])
    assert any(not np.array_equal(simulation.server.parameters[name], probed[name]) for name in lora)
