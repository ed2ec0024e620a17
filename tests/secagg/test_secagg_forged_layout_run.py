"""In a run, the server fixes the update layout from its own model: a forged first message cannot lock out the others (issue 11)."""

import numpy as np
import pytest

from secure_ffm.engine.transforms import TransformContext, UpdatePipeline, UpdateTransform
from secure_ffm.run.simulation import Simulation, prepare_run
from tests.secagg.cases import cnn_config


class ForgeClientZero(UpdateTransform):
    """Client 0 (the first to send each round) sends one array with an extra row: a layout the others do not share."""

    name = "forge-layout"

    def __call__(self, update, context: TransformContext):
        if update.client_id != 0:
            return update
        name = sorted(update.delta)[0]
        forged = dict(update.delta)
        forged[name] = np.concatenate([forged[name], np.zeros_like(forged[name][:1])])
        return update.replace_delta(forged)


@pytest.mark.parametrize("protocol", ["none", "masking", "ckks"])
def test_a_forged_first_layout_is_rejected_and_every_honest_client_is_aggregated(protocol):
    config = cnn_config(secure_aggregation={"protocol": protocol, "ckks_key_holder": "authority"}, server={"rounds": 1})
    simulation = Simulation(prepare_run(config), transforms=UpdatePipeline([ForgeClientZero()]))
    row = simulation.run_round(1)
    assert row["rejected_clients"] == [0] or (protocol == "masking" and 0 in row["rejected_clients"] + row["skipped_clients"])
    assert row["clients"] == [1, 2, 3] and row["aborted"] is None


def test_masking_rounds_stochastically_from_the_clients_secret_not_the_seed():
    # two runs of one config: with each client's secret, the rounding (and so the masked sum) differs in its last bits
    from secure_ffm.run.simulation import Simulation as Run

    config = cnn_config(secure_aggregation={"protocol": "masking"}, server={"rounds": 1})
    prepared = prepare_run(config)
    results = []
    for _ in range(2):
        run = Run(prepared)
        run.run_round(1)
        results.append(run.server.parameters)
        prepared.model.set_trainable(prepared.initial_parameters)
    assert any(not np.array_equal(results[0][k], results[1][k]) for k in results[0])
