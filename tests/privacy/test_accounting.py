"""Privacy accounting: fixed ε values, closed forms, monotonicity, calibration, ledgers, DP-FedAvg."""

import json
import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.analysis import gdp as gdp_analysis
from scipy.optimize import brentq
from scipy.stats import norm

from secure_ffm.errors import ConfigError
from secure_ffm.privacy import (
    ACCOUNTANTS,
    GaussianSteps,
    PrivacyLedger,
    calibrate_noise_multiplier,
    check_delta,
    compute_epsilon,
    default_delta,
    dp_fedavg_epsilon,
)

ALL = ("rdp", "prv", "gdp")
PRV_EPS_ERROR = 0.01  # PRVAccountant.get_epsilon's default eps_error


def ledger_epsilon(accountant, *entries, delta=1e-5):
    ledger = PrivacyLedger(accountant=accountant, delta=delta)
    for z, q, steps in entries:
        ledger.record(noise_multiplier=z, sample_rate=q, steps=steps)
    return ledger.epsilon()


# --------------------------------------------------------------------------- registry


def test_registry_maps_names_to_opacus_accountants():
    # rdp and prv are Opacus' accountants with a vectorized RDP (secure_ffm.privacy.sampled_gaussian, whose tests
    # compare them with Opacus' own)
    assert ACCOUNTANTS.names() == ("gdp", "prv", "rdp", "zcdp")
    assert issubclass(ACCOUNTANTS.get("rdp"), RDPAccountant)
    assert issubclass(ACCOUNTANTS.get("prv"), PRVAccountant)
    assert issubclass(ACCOUNTANTS.get("gdp"), GaussianAccountant)
    assert ACCOUNTANTS.get("gdp").mechanism() == "gdp"


def test_unknown_accountant_names_the_key_and_the_nearest_name():
    with pytest.raises(ConfigError, match=r"privacy\.accountant: unknown accountant 'rpd'.*did you mean 'rdp'") as info:
        PrivacyLedger(accountant="rpd", delta=1e-5)
    assert info.value.key == "privacy.accountant"


# --------------------------------------------------------------------------- fixed values

# The three values below are the expected ε of opacus 1.6.0's own tests,
# opacus/tests/accountants_test.py (AccountingTest.test_rdp_accountant,
# test_prv_accountant, test_gdp_accountant): noise_multiplier=1.5, sample_rate=0.04,
# delta=1e-5. Note the step counts: the RDP test uses int(90 / 0.04) = 2250 steps,
# the PRV and GDP tests int(90 // 0.04) = 2249 (floor division of floats).


def test_rdp_matches_opacus_published_value():
    # assertAlmostEqual(epsilon, 7.32911117143), i.e. 7 decimal places.
    assert ledger_epsilon("rdp", (1.5, 0.04, 2250)) == pytest.approx(7.32911117143, abs=5e-8)


def test_prv_matches_opacus_published_value():
    # assertAlmostEqual(epsilon, 6.777395712150674); this build computes 6.7773957101
    # (FFT round-off), inside Opacus' own 7-place tolerance.
    assert ledger_epsilon("prv", (1.5, 0.04, 2249)) == pytest.approx(6.777395712150674, abs=5e-8)


def test_gdp_matches_opacus_published_range():
    # assertLess(6.59, epsilon); assertLess(epsilon, 6.6)
    assert 6.59 < ledger_epsilon("gdp", (1.5, 0.04, 2249)) < 6.6


@pytest.mark.parametrize(
    ("accountant", "steps", "opacus_z"),
    [
        # opacus/tests/accountants_test.py: test_get_noise_multiplier_rdp_steps (1.3562, places=4),
        # test_get_noise_multiplier_prv_steps (1.2915, places=4), test_get_noise_multiplier_gdp
        # (1.3232421875 with epochs=90, i.e. int(90 / 0.04) = 2250 steps); all target ε=8, δ=1e-5, q=0.04.
        ("rdp", 2000, 1.3562),
        ("prv", 2000, 1.2915),
        ("gdp", 2250, 1.3232421875),
    ],
)
def test_calibration_agrees_with_opacus_published_noise_multipliers(accountant, steps, opacus_z):
    # Opacus stops within an absolute 0.01 of ε=8, i.e. a relative 0.00125; ask for the same band.
    z = calibrate_noise_multiplier(
        target_epsilon=8.0, delta=1e-5, sample_rate=0.04, steps=steps, accountant=accountant, epsilon_tolerance=0.00125
    )
    assert z == pytest.approx(opacus_z, abs=2e-3)


@pytest.mark.parametrize(("z", "steps"), [(0.8, 1), (1.5, 10), (4.0, 300), (20.0, 5)])
def test_rdp_without_subsampling_equals_the_closed_form(z, steps):
    # Independent check: at q = 1 the Gaussian mechanism has RDP α / (2 z²) per step
    # (Mironov 2017); convert with Balle et al. 2020, Thm. 21 (Opacus' conversion)
    # over Opacus' default orders, and compare with the classic, looser Mironov 2017 Prop. 3.
    delta = 1e-5
    alphas = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    balle = min(steps * a / (2 * z * z) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1) for a in alphas)
    mironov = min(steps * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in alphas)
    epsilon = ledger_epsilon("rdp", (z, 1.0, steps), delta=delta)
    assert epsilon == pytest.approx(balle, rel=1e-12)
    assert epsilon <= mironov


@pytest.mark.parametrize(("z", "steps"), [(1.0, 1), (1.5, 10), (5.0, 100)])
def test_prv_without_subsampling_brackets_the_exact_gaussian_epsilon(z, steps):
    # Independent check: T Gaussian steps at q = 1 are exactly μ-GDP with μ = sqrt(T)/z, whose
    # tight curve is δ(ε) = Φ(μ/2 - ε/μ) - e^ε Φ(-μ/2 - ε/μ) (Balle & Wang, ICML 2018, Thm. 8).
    # PRV reports its estimate plus eps_error, the estimate being within eps_error of the truth.
    delta, mu = 1e-5, math.sqrt(steps) / z
    exact = brentq(lambda e: norm.cdf(mu / 2 - e / mu) - math.exp(e) * norm.cdf(-mu / 2 - e / mu) - delta, 0.0, 100.0, xtol=1e-12)
    epsilon = ledger_epsilon("prv", (z, 1.0, steps), delta=delta)
    assert exact <= epsilon <= exact + 2 * PRV_EPS_ERROR


def test_rdp_is_looser_than_prv_on_heterogeneous_histories():
    entries = [(1.5, 0.04, 1000), (1.0, 0.04, 100), (2.0, 0.02, 500)]
    prv, rdp = ledger_epsilon("prv", *entries), ledger_epsilon("rdp", *entries)
    assert 0 < prv < rdp
    assert prv > max(ledger_epsilon("prv", entry) for entry in entries)


def test_prv_composes_split_entries_like_one_entry():
    # Opacus' PRV composes each entry by FFT and then convolves the entries; a history that
    # is not merged must give the same ε as the merged one.
    split = PRVAccountant()
    split.history = [(1.5, 0.04, 300), (1.5, 0.04, 200), (1.5, 0.04, 500)]
    merged = ledger_epsilon("prv", (1.5, 0.04, 1000))
    assert split.get_epsilon(delta=1e-5) == pytest.approx(merged, abs=1e-6)


def test_gdp_composes_every_entry_not_only_the_last():
    entries = [(1.0, 0.1, 200), (2.0, 0.05, 300)]
    mu = math.sqrt(sum(gdp_analysis.compute_mu_poisson(steps=t, noise_multiplier=z, sample_rate=q) ** 2 for z, q, t in entries))
    expected = gdp_analysis.eps_from_mu(mu=mu, delta=1e-5)
    assert ledger_epsilon("gdp", *entries) == pytest.approx(expected, rel=1e-12)
    with pytest.warns(UserWarning, match="GDP accounting is experimental"):
        opacus_gdp = GaussianAccountant()
    opacus_gdp.history = list(entries)  # Opacus reads history[-1] only
    assert opacus_gdp.get_epsilon(delta=1e-5) < expected
    opacus_gdp.history = [entries[0]]
    assert ledger_epsilon("gdp", entries[0]) == opacus_gdp.get_epsilon(delta=1e-5)


def test_gdp_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="secure_ffm.privacy.accounting"):
        PrivacyLedger(accountant="gdp", delta=1e-5)
    assert "not an upper bound" in caplog.text


def test_prv_numerical_failure_falls_back_to_the_rdp_bound(caplog):
    # δ = 1e-15 is below what PRV's float grid resolves; RDP's ε is still a valid upper bound.
    with caplog.at_level(logging.WARNING, logger="secure_ffm.privacy.accounting"):
        prv = ledger_epsilon("prv", (1.0, 0.01, 100), delta=1e-15)
    assert prv == ledger_epsilon("rdp", (1.0, 0.01, 100), delta=1e-15)
    assert "prv accountant failed" in caplog.text


# --------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize("accountant", ALL)
@settings(max_examples=6, deadline=None)
@given(
    z=st.floats(0.8, 4.0),
    more_noise=st.floats(1.05, 2.0),
    q=st.floats(0.001, 0.2),
    higher_rate=st.floats(1.05, 2.0),
    steps=st.integers(1, 150),
    more_steps=st.integers(1, 50),
)
def test_epsilon_is_monotone(accountant, z, more_noise, q, higher_rate, steps, more_steps):
    def eps(z, q, steps):
        return compute_epsilon([GaussianSteps(z, q, steps)], accountant=accountant, delta=1e-5)

    base = eps(z, q, steps)
    assert base > 0
    assert eps(z * more_noise, q, steps) <= base
    assert eps(z, q, steps + more_steps) >= base
    assert eps(z, q * higher_rate, steps) >= base


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("accountant", ALL)
@pytest.mark.parametrize(("target", "q", "steps"), [(1.0, 0.01, 100), (4.0, 0.05, 300), (0.5, 0.1, 50), (2.0, 1.0, 10)])
def test_calibration_reaches_but_never_exceeds_the_target(accountant, target, q, steps):
    z = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps, accountant=accountant)
    epsilon = ledger_epsilon(accountant, (z, q, steps))
    assert 0.95 * target <= epsilon <= target


@pytest.mark.parametrize("accountant", ALL)
def test_unreachable_budget_names_target_epsilon(accountant):
    # No subsampling, 1000 steps: ε = 1e-4 needs z in the millions.
    with pytest.raises(ConfigError, match="raise privacy.target_epsilon") as info:
        calibrate_noise_multiplier(target_epsilon=1e-4, delta=1e-5, sample_rate=1.0, steps=1000, accountant=accountant)
    assert info.value.key == "privacy.target_epsilon"
    assert "cannot be met" in info.value.problem


def test_prv_cannot_certify_below_its_error_margin():
    with pytest.raises(ConfigError, match="cannot be met"):
        calibrate_noise_multiplier(target_epsilon=0.005, delta=1e-5, sample_rate=0.01, steps=10, accountant="prv")


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 1.5, math.nan, "1e-5"])
def test_bad_delta_names_privacy_delta(delta):
    with pytest.raises(ConfigError) as info:
        calibrate_noise_multiplier(target_epsilon=1.0, delta=delta, sample_rate=0.01, steps=10, accountant="rdp")
    assert info.value.key == "privacy.delta"
    with pytest.raises(ConfigError, match=r"^privacy\.delta"):
        PrivacyLedger(accountant="rdp", delta=delta)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"target_epsilon": 0.0}, "privacy.target_epsilon"),
        ({"target_epsilon": -1.0}, "privacy.target_epsilon"),
        ({"target_epsilon": math.inf}, "privacy.target_epsilon"),
        ({"sample_rate": 0.0}, "privacy.sample_rate"),
        ({"sample_rate": 1.5}, "privacy.sample_rate"),
        ({"steps": 0}, "privacy.steps"),
        ({"steps": 2.5}, "privacy.steps"),
        ({"epsilon_tolerance": 0.0}, "privacy.epsilon_tolerance"),
        ({"accountant": "moments"}, "privacy.accountant"),
    ],
)
def test_bad_calibration_arguments_name_their_key(override, key):
    arguments = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 10, "accountant": "rdp"} | override
    with pytest.raises(ConfigError) as info:
        calibrate_noise_multiplier(**arguments)
    assert info.value.key == key


# --------------------------------------------------------------------------- ledger


@pytest.mark.parametrize("accountant", ALL)
def test_ledger_json_round_trip_gives_identical_epsilon(accountant):
    ledger = PrivacyLedger(accountant=accountant, delta=1e-5)
    assert ledger.epsilon() == 0.0
    ledger.record(noise_multiplier=1.1, sample_rate=0.02, steps=120)
    ledger.record(noise_multiplier=0.9, sample_rate=0.02, steps=30)
    restored = PrivacyLedger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert restored == ledger
    assert restored.history == ledger.history
    assert restored.epsilon() == ledger.epsilon()


def test_ledger_rejects_foreign_json():
    with pytest.raises(ValueError, match="privacy_ledger"):
        PrivacyLedger.from_json({"history": []})
    data = PrivacyLedger(accountant="rdp", delta=1e-5).to_json()
    del data["history"]
    with pytest.raises(ValueError, match="malformed"):
        PrivacyLedger.from_json(data)


@pytest.mark.parametrize("accountant", ALL)
def test_recording_in_chunks_equals_recording_once(accountant):
    chunked = PrivacyLedger(accountant=accountant, delta=1e-5)
    chunked.record(noise_multiplier=1.2, sample_rate=0.05, steps=40)
    chunked.record(noise_multiplier=1.2, sample_rate=0.05, steps=60)
    once = PrivacyLedger(accountant=accountant, delta=1e-5)
    once.record(noise_multiplier=1.2, sample_rate=0.05, steps=100)
    assert chunked.history == once.history == (GaussianSteps(1.2, 0.05, 100),)
    assert chunked.epsilon() == once.epsilon()


def test_changing_parameters_starts_a_new_entry():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    ledger.record(noise_multiplier=1.0, sample_rate=0.05, steps=10)
    ledger.record(noise_multiplier=1.0, sample_rate=0.10, steps=5)
    ledger.record(noise_multiplier=1.0, sample_rate=0.05, steps=10)
    assert [e.steps for e in ledger.history] == [10, 5, 10]
    assert ledger.steps == 25


@pytest.mark.parametrize("accountant", ALL)
def test_epsilon_if_does_not_record(accountant):
    ledger = PrivacyLedger(accountant=accountant, delta=1e-5)
    ledger.record(noise_multiplier=1.0, sample_rate=0.05, steps=50)
    before, history = ledger.epsilon(), ledger.history
    hypothetical = ledger.epsilon_if(noise_multiplier=1.0, sample_rate=0.05, steps=10)
    assert ledger.history == history
    assert ledger.epsilon() == before
    assert hypothetical > before
    ledger.record(noise_multiplier=1.0, sample_rate=0.05, steps=10)
    assert ledger.epsilon() == hypothetical


def test_record_validates_its_arguments():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    with pytest.raises(ConfigError, match=r"^privacy\.noise_multiplier"):
        ledger.record(noise_multiplier=0.0, sample_rate=0.1, steps=1)
    with pytest.raises(ConfigError, match=r"^privacy\.sample_rate"):
        ledger.record(noise_multiplier=1.0, sample_rate=1.01, steps=1)
    with pytest.raises(ConfigError, match=r"^privacy\.steps"):
        ledger.record(noise_multiplier=1.0, sample_rate=0.1, steps=0)
    assert ledger.history == ()


# --------------------------------------------------------------------------- δ


def test_default_delta_is_well_below_one_over_n():
    for n in (1, 100, 60_000, 10**9):
        assert default_delta(n) == pytest.approx(1 / (10 * n))
        assert check_delta(default_delta(n), n) is None
    with pytest.raises(ValueError):
        default_delta(0)


def test_check_delta_explains_a_delta_that_is_too_large():
    assert check_delta(1e-5, 1000) is None
    reason = check_delta(1e-3, 1000)
    assert reason is not None and "1/n" in reason
    assert check_delta(2e-3, 1000) is not None
    with pytest.raises(ConfigError, match=r"^privacy\.delta"):
        check_delta(0.0, 1000)


# --------------------------------------------------------------------------- DP-FedAvg


def test_dp_fedavg_epsilon_is_a_ledger_and_opacus_rdp():
    # 1000 clients, 20 per round (q = 0.02), z = 1.0, 200 rounds, δ below 1/num_clients.
    z, q, rounds, delta = 1.0, 20 / 1000, 200, 1e-4
    epsilon = dp_fedavg_epsilon(noise_multiplier=z, sample_rate=q, rounds=rounds, delta=delta)
    opacus = RDPAccountant()
    for _ in range(rounds):
        opacus.step(noise_multiplier=z, sample_rate=q)
    assert epsilon == pytest.approx(opacus.get_epsilon(delta=delta), rel=1e-10)  # the vectorized RDP's rounding
    assert epsilon == ledger_epsilon("rdp", (z, q, rounds), delta=delta)
    assert dp_fedavg_epsilon(noise_multiplier=z, sample_rate=q, rounds=rounds, delta=delta, accountant="prv") == ledger_epsilon(
        "prv", (z, q, rounds), delta=delta
    )


def test_dp_fedavg_rounds_must_be_positive():
    with pytest.raises(ConfigError, match=r"^server\.rounds"):
        dp_fedavg_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=0, delta=1e-5)


def test_a_config_refuses_the_approximate_accountant_because_its_noise_can_exceed_the_budget():
    from secure_ffm.config import config_from_dict

    # the reason, measured: noise calibrated with gdp for ε = 8 spends more than 8 by prv
    z = calibrate_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=0.01, steps=1000, accountant="gdp")
    assert compute_epsilon([GaussianSteps(z, 0.01, 1000)], accountant="prv", delta=1e-5) > 9.5
    with pytest.raises(ConfigError) as info:
        config_from_dict({"privacy": {"mode": "dp-sgd", "accountant": "gdp"}})
    assert info.value.key == "privacy.accountant"
