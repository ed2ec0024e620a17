"""The local optimizers: torch.optim's updates, bitwise, without importing torch._dynamo."""

import subprocess
import sys

import pytest
import torch

from secure_ffm.config import ClientConfig
from secure_ffm.engine.optimizers import LocalOptimizer, torch_optimizer


def train(make, config, steps=4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    model[2].bias.requires_grad_(False)  # a frozen parameter never gets a gradient: skipped as torch.optim skips it
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make(params, config)
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        x, y = torch.randn(8, 5, generator=data), torch.randint(0, 3, (8,), generator=data)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "config",
    [
        ClientConfig(optimizer="sgd", lr=0.1),
        ClientConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
        ClientConfig(optimizer="adam", lr=0.01, weight_decay=0.01),
        ClientConfig(optimizer="adamw", lr=0.01, weight_decay=0.05),
    ],
    ids=["sgd", "sgd-momentum-decay", "adam", "adamw"],
)
def test_local_optimizer_steps_bitwise_as_torch_optim(config):
    ours, theirs = train(LocalOptimizer, config), train(torch_optimizer, config)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not torch.equal(ours[0], train(LocalOptimizer, config, steps=0)[0])  # it did move


def test_training_a_client_does_not_import_torch_dynamo():
    code = (
        "import sys, torch\n"
        "from secure_ffm.config import ClientConfig\n"
        "from secure_ffm.engine.optimizers import LocalOptimizer\n"
        "m = torch.nn.Linear(3, 2)\n"
        "for kind in ('sgd', 'adam', 'adamw'):\n"
        "    o = LocalOptimizer(list(m.parameters()), ClientConfig(optimizer=kind, momentum=0.9 if kind == 'sgd' else 0.0))\n"
        "    o.zero_grad(); m(torch.ones(4, 3)).sum().backward()\n"
        "    torch.nn.utils.clip_grad_norm_(list(m.parameters()), 1.0); o.step()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
