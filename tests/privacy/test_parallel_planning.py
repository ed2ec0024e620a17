"""Per-client DP-SGD plans calibrated in forked processes: the same plans, bitwise, as one process computes."""

import multiprocessing
import sys

import pytest

from secure_ffm.config import ClientConfig, PrivacyConfig
from secure_ffm.errors import ConfigError
from secure_ffm.privacy import dp_sgd

SIZES = [180, 240, 333, 400, 512]
CLIENT = ClientConfig(batch_size=16, local_epochs=1)
PRIVACY = PrivacyConfig(mode="dp-sgd", target_epsilon=3.0, accountant="prv")


@pytest.fixture
def fresh_calibrations(monkeypatch):
    monkeypatch.setattr(dp_sgd, "_CALIBRATED", {})


@pytest.fixture
def pools(monkeypatch):
    """The sizes of the process pools the planner starts (it starts them through ``multiprocessing.get_context``)."""
    started = []
    get_context = multiprocessing.get_context

    class RecordingContext:
        def __init__(self, method):
            self.context = get_context(method)

        def Pool(self, processes):  # noqa: N802 - multiprocessing's name
            started.append(processes)
            return self.context.Pool(processes)

    monkeypatch.setattr(multiprocessing, "get_context", RecordingContext)
    return started


def test_plans_from_forked_processes_equal_one_process_bitwise(fresh_calibrations, pools):
    parallel = dp_sgd.plan_clients(SIZES, client=CLIENT, privacy=PRIVACY, planned_rounds=5, processes=2)
    assert pools == [2]
    dp_sgd._CALIBRATED.clear()
    serial = dp_sgd.plan_clients(SIZES, client=CLIENT, privacy=PRIVACY, planned_rounds=5, processes=1)
    assert pools == [2]  # no pool for one process
    assert parallel == serial  # frozen dataclasses: every float equal
    assert all(0.99 * 3.0 <= plan.planned_epsilon <= 3.0 for plan in parallel.values())


def test_a_size_planned_before_is_not_calibrated_again(fresh_calibrations, pools):
    dp_sgd.plan_clients(SIZES[:2], client=CLIENT, privacy=PRIVACY, planned_rounds=5, processes=2)
    dp_sgd.plan_clients(SIZES[:3], client=CLIENT, privacy=PRIVACY, planned_rounds=5, processes=2)
    assert pools == [2]  # the second call had one new size: no pool


def test_an_unmeetable_budget_in_a_child_is_reported_by_the_run_as_in_one_process(fresh_calibrations):
    # PRV never certifies ε below its 0.01 error margin
    tiny = PrivacyConfig(mode="dp-sgd", target_epsilon=0.005, accountant="prv")
    with pytest.raises(ConfigError, match=r"privacy\.target_epsilon") as parallel:
        dp_sgd.plan_clients(SIZES[:2], client=CLIENT, privacy=tiny, planned_rounds=5, processes=2)
    with pytest.raises(ConfigError, match=r"privacy\.target_epsilon") as serial:
        dp_sgd.plan_clients(SIZES[:2], client=CLIENT, privacy=tiny, planned_rounds=5, processes=1)
    assert str(parallel.value) == str(serial.value)


def test_the_process_count_follows_the_cores_or_the_environment(monkeypatch):
    monkeypatch.delenv("SECURE_FFM_PLAN_PROCESSES", raising=False)
    assert dp_sgd.calibration_processes() >= 1
    monkeypatch.setitem(sys.modules, "grpc", object())  # a Flower process: never forked
    assert dp_sgd.calibration_processes() == 1
    monkeypatch.delitem(sys.modules, "grpc")
    monkeypatch.setenv("SECURE_FFM_PLAN_PROCESSES", "3")
    assert dp_sgd.calibration_processes() == 3
    monkeypatch.setenv("SECURE_FFM_PLAN_PROCESSES", "many")
    with pytest.raises(ConfigError, match="SECURE_FFM_PLAN_PROCESSES"):
        dp_sgd.calibration_processes()


def test_the_planner_precomputes_exactly_the_calibrations_it_then_asks_for(fresh_calibrations):
    from secure_ffm.privacy.planner import candidate_calibrations, recommend

    settings = {"target_epsilon": 3.0, "delta": 0.0, "rounds": 5, "epochs": 1.0, "accountant": "prv", "max_grad_norm": 1.0}
    recommend(400, **settings)  # one process: each candidate calibrated as asked
    assert set(dp_sgd._CALIBRATED) == set(candidate_calibrations(400, **settings))
