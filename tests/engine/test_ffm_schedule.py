"""The FFM switch as a pure function of synthetic signal sequences: each branch of each schedule."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_ffm.config import FFMConfig
from secure_ffm.engine.schedule import (
    FEDERATED,
    PUBLIC,
    SCHEDULES,
    Adaptive,
    RoundSignals,
    build_schedule,
    federated_rounds,
    last_round_within,
)


def adaptive(**overrides) -> Adaptive:
    return Adaptive(FFMConfig(schedule="adaptive", **{"patience": 2, "min_delta": 0.01, "forgetting": 0.05, **overrides}))


def public(round, loss):
    return RoundSignals(round=round, phase=PUBLIC, public_loss=loss)


def federated(round, public_loss, federated_loss, alignment=0.5, budget_left=True):
    return RoundSignals(round, FEDERATED, public_loss, federated_loss, alignment, budget_left)


def test_federated_and_centralized_never_switch():
    for name, phase in (("federated", FEDERATED), ("centralized", PUBLIC)):
        schedule = build_schedule(FFMConfig(schedule=name))
        assert schedule.first().phase == phase
        assert all(schedule.next(RoundSignals(r, phase, public_loss=1.0)).phase == phase for r in range(1, 6))


def test_alternating_runs_fixed_cycles():
    schedule = build_schedule(FFMConfig(schedule="alternating", public_units=2, federated_units=3))
    phases = [schedule.first().phase] + [schedule.next(RoundSignals(r, PUBLIC)).phase for r in range(1, 10)]
    assert phases == [PUBLIC, PUBLIC, FEDERATED, FEDERATED, FEDERATED] * 2


def test_adaptive_warms_up_on_public_data_and_stays_while_the_public_loss_improves():
    schedule = adaptive()
    assert schedule.first().phase == PUBLIC
    decision = schedule.next(public(1, 2.0))
    assert decision.phase == PUBLIC and "improving" in decision.reason
    assert schedule.next(public(2, 1.5)).phase == PUBLIC


def test_adaptive_goes_federated_after_patience_units_without_a_public_gain():
    schedule = adaptive(patience=2)
    schedule.next(public(1, 1.0))
    first = schedule.next(public(2, 0.995))  # a gain below min_delta is no gain
    assert first.phase == PUBLIC and "flat 1 of 2" in first.reason
    decision = schedule.next(public(3, 0.999))
    assert decision.phase == FEDERATED and "public plateau" in decision.reason


def plateaued(**overrides) -> Adaptive:
    schedule = adaptive(**overrides)
    schedule.next(public(1, 1.0))
    schedule.next(public(2, 1.0))
    assert schedule.next(public(3, 1.0)).phase == FEDERATED
    return schedule


def test_adaptive_stays_federated_while_the_clients_loss_improves():
    schedule = plateaued()
    assert schedule.next(federated(4, 1.0, 2.0)).reason == "adaptive: federated improving"
    assert schedule.next(federated(5, 1.0, 1.8)).phase == FEDERATED


def test_adaptive_returns_to_public_data_when_the_budget_is_spent():
    decision = plateaued().next(federated(4, 1.0, 2.0, budget_left=False))
    assert decision.phase == PUBLIC and "budget" in decision.reason


def test_adaptive_returns_to_public_data_when_federated_rounds_make_it_forget():
    decision = plateaued(forgetting=0.05).next(federated(4, 1.06, 2.0))
    assert decision.phase == PUBLIC and "forgetting" in decision.reason and "6.0%" in decision.reason


def test_the_forgetting_test_is_off_by_default_and_with_zero():
    assert FFMConfig().forgetting == 0
    decision = plateaued(forgetting=0.0).next(federated(4, 10.0, 2.0))  # the public loss rose tenfold
    assert "forgetting" not in decision.reason


def test_a_rise_within_the_forgetting_tolerance_is_not_forgetting():
    assert plateaued(forgetting=0.05).next(federated(4, 1.04, 2.0)).phase == FEDERATED


def test_adaptive_returns_to_public_data_after_patience_rounds_of_conflicting_updates():
    schedule = plateaued(patience=2)
    assert schedule.next(federated(4, 1.0, 2.0, alignment=-0.2)).phase == FEDERATED
    decision = schedule.next(federated(5, 1.0, 1.5, alignment=-0.1))
    assert decision.phase == PUBLIC and "conflict" in decision.reason


def test_one_aligned_round_resets_the_conflict_count():
    schedule = plateaued(patience=2)
    schedule.next(federated(4, 1.0, 2.0, alignment=-0.2))
    schedule.next(federated(5, 1.0, 1.5, alignment=0.3))
    assert schedule.next(federated(6, 1.0, 1.0, alignment=-0.2)).phase == FEDERATED


def test_adaptive_returns_to_public_data_when_the_clients_loss_plateaus():
    schedule = plateaued(patience=2)  # its warm-up gained: public data still helps
    schedule.next(federated(4, 1.0, 2.0))
    assert schedule.next(federated(5, 1.0, 1.995)).phase == FEDERATED  # below min_delta: no gain
    decision = schedule.next(federated(6, 1.0, 2.0))
    assert decision.phase == PUBLIC and "federated plateau" in decision.reason


def test_when_the_last_public_phase_gained_nothing_the_private_data_keeps_the_rounds():
    schedule = plateaued(patience=2)
    for round in (4, 5):
        schedule.next(federated(round, 1.0, 2.0))
    assert schedule.next(federated(6, 1.0, 2.0)).phase == PUBLIC  # federated plateau: back to public data
    schedule.next(public(7, 1.0))
    assert schedule.next(public(8, 1.0)).phase == FEDERATED  # that public phase gained nothing
    for round in (9, 10):
        schedule.next(federated(round, 1.0, 2.0))
    decision = schedule.next(federated(11, 1.0, 2.0))
    assert decision.phase == FEDERATED and "both plateaued" in decision.reason


def test_the_adaptive_state_round_trips_for_resume():
    schedule = plateaued()
    schedule.next(federated(4, 1.0, 2.0, alignment=-0.5))
    restored = adaptive()
    restored.load_state_dict(schedule.state_dict())
    signals = federated(5, 1.0, 1.9, alignment=-0.5)
    assert restored.next(signals) == schedule.next(signals)


@given(st.lists(st.tuples(st.floats(0.01, 10), st.floats(0.01, 10), st.floats(-1, 1), st.booleans()), max_size=30))
def test_adaptive_always_answers_a_known_phase_with_a_reason(sequence):
    schedule = adaptive()
    phase = schedule.first().phase
    for round, (public_loss, federated_loss, alignment, budget) in enumerate(sequence, 1):
        signals = RoundSignals(round, phase, public_loss, federated_loss if phase == FEDERATED else None, alignment, budget)
        decision = schedule.next(signals)
        assert decision.phase in (PUBLIC, FEDERATED) and decision.reason
        assert math.isfinite(schedule.best_public)
        phase = decision.phase


def test_every_registered_schedule_builds_from_its_config():
    for name in SCHEDULES.names():
        assert build_schedule(FFMConfig(schedule=name)).first().phase in (PUBLIC, FEDERATED)


@pytest.mark.parametrize(("key", "value"), [("schedule", "adaptiv"), ("public_steps", 0), ("patience", 0), ("forgetting", -1.0)])
def test_bad_ffm_settings_name_their_key(key, value):
    from secure_ffm.errors import ConfigError

    with pytest.raises(ConfigError, match=f"ffm.{key}"):
        FFMConfig(**{key: value})


def test_a_public_phase_ends_after_max_public_units_even_while_it_improves():
    schedule = adaptive(max_public_units=3)
    assert schedule.next(public(1, 2.0)).phase == PUBLIC
    assert schedule.next(public(2, 1.5)).phase == PUBLIC
    decision = schedule.next(public(3, 1.0))
    assert decision.phase == FEDERATED and "long enough (3 units)" in decision.reason


@given(
    public_units=st.integers(1, 4),
    federated_units=st.integers(1, 5),
    start=st.integers(0, 30),
    length=st.integers(0, 30),
)
def test_alternating_counts_exactly_the_federated_rounds_it_will_run(public_units, federated_units, start, length):
    config = FFMConfig(schedule="alternating", public_units=public_units, federated_units=federated_units)
    schedule = build_schedule(config)
    phases = [schedule.first().phase] + [schedule.next(RoundSignals(r, PUBLIC)).phase for r in range(1, start + length)]
    assert schedule.most_federated_units(start, start + length) == phases[start:].count(FEDERATED)
    assert federated_rounds(config, start=start, stop=start + length) == phases[start:].count(FEDERATED)


def test_planning_counts_every_unit_but_a_known_public_one():
    assert federated_rounds(FFMConfig(schedule="federated"), stop=7) == 7
    assert federated_rounds(FFMConfig(schedule="centralized"), stop=7) == 0
    assert federated_rounds(FFMConfig(schedule="adaptive"), stop=7) == 6  # the warm-up is public; any later unit may be federated
    assert federated_rounds(FFMConfig(schedule="adaptive"), start=1, stop=7) == 6


def test_a_resumed_alternating_run_can_add_units_up_to_the_federated_rounds_its_budget_pays_for():
    config = FFMConfig(schedule="alternating", public_units=2, federated_units=3)  # P P F F F P P F F F
    assert last_round_within(config, start=3, federated=2, limit=20) == 7  # rounds 4, 5 federated; 6, 7 public
    assert last_round_within(config, start=3, federated=0, limit=20) == 3
    assert last_round_within(config, start=3, federated=2, limit=6) == 6
