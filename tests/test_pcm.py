"""The PCM device model against the published formulas and figures (REFERENCE.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from snuc.ir.errors import SnucError
from snuc.ir.target import parse_target, with_overrides
from snuc.runtime import pcm

N = 100_000
HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0
TARGET = parse_target("pcm-256x256")


def sigma_prog_formula_us(g_rel: float) -> float:
    """Nandakumar et al. 2019, in µS at G_max = 25 µS."""
    return 0.26348 + 1.9650 * g_rel - 1.1731 * g_rel**2


def read_sigma_formula_us(g_us: float, g_ref_us: float, t_inference_s: float) -> float:
    """Joshi et al. 2020, with t0 = 20 s and t_read = 250 ns."""
    q_s = min(0.0088 / max(g_ref_us / 25.0, 1e-3) ** 0.65, 0.2)
    t = t_inference_s + 20.0
    return g_us * q_s * math.sqrt(math.log((t + 250e-9) / (2 * 250e-9)))


def random_pair_targets(rng: np.random.Generator, shape: tuple[int, int]):
    """A random signed matrix in [-1, 1] as differential-pair targets (one side at 0)."""
    w = rng.uniform(-1.0, 1.0, shape)
    return np.maximum(w, 0.0) * TARGET.g_max_us, np.maximum(-w, 0.0) * TARGET.g_max_us


# -- programming noise ---------------------------------------------------------------------


def test_programming_noise_endpoints_match_reference_percentages():
    sigma = pcm.prog_noise_sigma([0.0, 25.0], TARGET)
    assert sigma[0] / 25.0 == pytest.approx(0.0105, abs=5e-5)
    assert sigma[1] / 25.0 == pytest.approx(0.042, abs=5e-4)


@pytest.mark.parametrize("g_rel", [0.2, 0.5, 0.8, 1.0])
def test_programming_noise_std_matches_formula(g_rel):
    g_target = np.full(N, g_rel * 25.0)
    g_prog = pcm.program(g_target, TARGET, np.random.default_rng(7))
    assert g_prog.mean() == pytest.approx(g_rel * 25.0, abs=0.02)
    assert g_prog.std() == pytest.approx(sigma_prog_formula_us(g_rel), rel=0.05)


def test_programming_clips_at_zero():
    g_prog = pcm.program(np.zeros(N), TARGET, np.random.default_rng(0))
    assert g_prog.min() == 0.0
    assert 0.3 < np.mean(g_prog == 0.0) < 0.7


def test_programming_noise_is_relative_to_g_max_and_scales():
    half_g_max = with_overrides(TARGET, g_max_us=12.5)
    assert pcm.prog_noise_sigma(6.25, half_g_max) == pytest.approx(sigma_prog_formula_us(0.5) / 2)
    doubled = with_overrides(TARGET, prog_noise_scale=2.0)
    assert pcm.prog_noise_sigma(12.5, doubled) == pytest.approx(2 * sigma_prog_formula_us(0.5))
    silent = with_overrides(TARGET, prog_noise_scale=0.0)
    g_target = np.linspace(0.0, 25.0, 11)
    np.testing.assert_array_equal(pcm.program(g_target, silent, np.random.default_rng(0)), g_target)


# -- drift ---------------------------------------------------------------------------------


def drift_factors_at_g_max(t_inference_s: float, target=TARGET) -> np.ndarray:
    g = np.full(N, 25.0)
    nu = pcm.drift_exponents(g, target, np.random.default_rng(3))
    return pcm.drift(g, nu, t_inference_s, target) / g


def test_mean_drift_factor_after_one_day():
    assert drift_factors_at_g_max(DAY).mean() == pytest.approx(0.664, rel=0.02)


def test_mean_drift_factor_after_one_hour_and_one_year():
    assert drift_factors_at_g_max(HOUR).mean() == pytest.approx(0.775, rel=0.03)
    assert drift_factors_at_g_max(YEAR).mean() == pytest.approx(0.497, rel=0.03)


def test_drift_exponent_statistics_follow_the_fit():
    rng = np.random.default_rng(5)
    at_g_max = pcm.drift_exponents(np.full(N, 25.0), TARGET, rng)
    assert at_g_max.mean() == pytest.approx(0.049, rel=0.02)  # μ_ν clipped at 0.049
    assert at_g_max.std() == pytest.approx(0.008, rel=0.05)  # σ_ν clipped at 0.008
    g_rel = 0.1
    mu = -0.0155 * math.log(g_rel) + 0.0244
    sigma = -0.0125 * math.log(g_rel) - 0.0059
    nu = pcm.drift_exponents(np.full(N, g_rel * 25.0), TARGET, rng)
    assert nu.mean() == pytest.approx(mu, rel=0.02)
    assert nu.std() == pytest.approx(sigma, rel=0.05)
    assert nu.min() >= 0.0


def test_drift_is_identity_at_time_zero_and_scales_with_drift_scale():
    g = np.full(1000, 20.0)
    nu = pcm.drift_exponents(g, TARGET, np.random.default_rng(0))
    np.testing.assert_array_equal(pcm.drift(g, nu, 0.0, TARGET), g)
    doubled = with_overrides(TARGET, drift_scale=2.0)
    nu2 = pcm.drift_exponents(g, doubled, np.random.default_rng(0))
    np.testing.assert_allclose(nu2, 2 * nu)
    none = with_overrides(TARGET, drift_scale=0.0)
    nu0 = pcm.drift_exponents(g, none, np.random.default_rng(0))
    np.testing.assert_array_equal(pcm.drift(g, nu0, YEAR, none), g)


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_bad_inference_time_is_an_error(bad):
    with pytest.raises(SnucError, match="inference time"):
        pcm.drift(np.ones(3), np.full(3, 0.05), bad, TARGET)
    with pytest.raises(SnucError, match="--t-inference"):
        pcm.read_noise_sigma(np.ones(3), bad, TARGET)


# -- read noise ----------------------------------------------------------------------------


def test_read_noise_sigma_formula_values():
    g = np.array([25.0, 12.5, 2.5, 0.01, 0.0])
    sigma = pcm.read_noise_sigma(g, HOUR, TARGET)
    expected = [read_sigma_formula_us(v, v, HOUR) for v in g]
    np.testing.assert_allclose(sigma, expected, rtol=1e-12)
    assert sigma[-1] == 0.0
    # Q_s is capped at 0.2 for small conductances.
    assert sigma[3] == pytest.approx(0.01 * 0.2 * math.sqrt(math.log((HOUR + 20) / 5e-7)))


def test_read_noise_evaluates_q_s_at_programmed_conductance_when_given():
    sigma = pcm.read_noise_sigma(10.0, DAY, TARGET, g_prog_us=15.0)
    assert sigma == pytest.approx(read_sigma_formula_us(10.0, 15.0, DAY))
    halved = with_overrides(TARGET, read_noise_scale=0.5)
    assert pcm.read_noise_sigma(10.0, DAY, halved, g_prog_us=15.0) == pytest.approx(sigma / 2)


def test_read_noise_on_mvm_outputs_has_the_formula_std():
    rng = np.random.default_rng(11)
    g_plus, g_minus = random_pair_targets(rng, (16, 100))
    drifted = pcm.program_array(g_plus, g_minus, TARGET, seed=4, tile=2).at(DAY)
    x = rng.uniform(0.0, 1.0, (1000, 16))
    noise = pcm.read_noise_block(4, 2, (1000, 100))
    y = drifted.mvm(x, noise=noise)
    # Each output's σ computed from the per-device formula, independently of the module.
    g_prog = pcm.program_array(g_plus, g_minus, TARGET, seed=4, tile=2)
    var = np.zeros((16, 100))
    for g_now, g_ref in (
        (drifted.g_plus_us, g_prog.g_plus_us),
        (drifted.g_minus_us, g_prog.g_minus_us),
    ):
        q_s = np.minimum(0.0088 / np.maximum(g_ref / 25.0, 1e-3) ** 0.65, 0.2)
        var += (g_now * q_s) ** 2 * math.log((DAY + 20.0 + 250e-9) / 500e-9)
    sigma_out = np.sqrt((x * x) @ var)
    residual = (y - x @ drifted.weights_us) / sigma_out
    assert residual.mean() == pytest.approx(0.0, abs=0.01)
    assert residual.std() == pytest.approx(1.0, rel=0.05)


def test_read_noise_per_device_std_matches_formula():
    g_target = np.full((1, N), 12.5)
    programmed = pcm.program_array(g_target, np.zeros_like(g_target), TARGET, seed=0, tile=0)
    drifted = programmed.at(HOUR)
    y = drifted.mvm(np.ones(1), noise=pcm.read_noise_block(0, 0, (N,)))
    expected = np.sqrt(drifted.read_variance_us2[0])
    assert np.std(y - drifted.weights_us[0]) == pytest.approx(expected.mean(), rel=0.05)
    assert expected.mean() == pytest.approx(
        read_sigma_formula_us(12.5 * 0.776, 12.5, HOUR), rel=0.05
    )


# -- arrays, devices per polarity, seeding -------------------------------------------------


def test_two_devices_per_polarity_add_up():
    rng = np.random.default_rng(2)
    g_plus, g_minus = random_pair_targets(rng, (8, 8))
    stacked = pcm.program_array(
        np.stack([g_plus, g_plus], axis=-1) / 2,
        np.stack([g_minus, g_minus], axis=-1) / 2,
        TARGET,
        seed=1,
        tile=0,
    )
    drifted = stacked.at(HOUR)
    np.testing.assert_allclose(
        drifted.weights_us,
        drifted.g_plus_us.sum(-1) - drifted.g_minus_us.sum(-1),
    )
    np.testing.assert_allclose(
        drifted.read_variance_us2,
        (drifted.sigma_plus_us**2 + drifted.sigma_minus_us**2).sum(-1),
    )


def test_same_seed_and_tile_give_the_same_chip():
    rng = np.random.default_rng(0)
    g_plus, g_minus = random_pair_targets(rng, (32, 32))
    a = pcm.program_array(g_plus, g_minus, TARGET, seed=9, tile=3)
    b = pcm.program_array(g_plus, g_minus, TARGET, seed=9, tile=3)
    np.testing.assert_array_equal(a.g_plus_us, b.g_plus_us)
    np.testing.assert_array_equal(a.nu_minus, b.nu_minus)
    np.testing.assert_array_equal(a.at(YEAR).weights_us, b.at(YEAR).weights_us)
    np.testing.assert_array_equal(
        pcm.read_noise_block(9, 3, (4, 2, 32)), pcm.read_noise_block(9, 3, (4, 2, 32))
    )


def test_other_seed_or_tile_gives_another_chip():
    rng = np.random.default_rng(0)
    g_plus, g_minus = random_pair_targets(rng, (32, 32))
    a = pcm.program_array(g_plus, g_minus, TARGET, seed=9, tile=3)
    for seed, tile in ((10, 3), (9, 4)):
        b = pcm.program_array(g_plus, g_minus, TARGET, seed=seed, tile=tile)
        assert not np.array_equal(a.g_plus_us, b.g_plus_us)
        assert not np.array_equal(a.nu_plus, b.nu_plus)
    assert not np.array_equal(pcm.read_noise_block(9, 3, (64,)), pcm.read_noise_block(10, 3, (64,)))


def test_streams_are_independent():
    draws = {s: pcm.chip_rng(1, 2, s).standard_normal(8) for s in pcm.STREAMS}
    assert len({d.tobytes() for d in draws.values()}) == len(pcm.STREAMS)


def test_chip_rng_rejects_bad_arguments():
    with pytest.raises(SnucError, match="seed -1"):
        pcm.chip_rng(-1, 0, "program")
    with pytest.raises(SnucError, match="tile"):
        pcm.chip_rng(0, 1.5, "program")
    with pytest.raises(ValueError, match="unknown random stream 'noise'"):
        pcm.chip_rng(0, 0, "noise")


# -- drift compensation --------------------------------------------------------------------


def test_global_drift_compensation_restores_mean_output_magnitude_after_a_year():
    rng = np.random.default_rng(21)
    g_plus, g_minus = random_pair_targets(rng, (256, 256))
    programmed = pcm.program_array(g_plus, g_minus, TARGET, seed=0, tile=0)
    x = rng.uniform(0.0, 1.0, (64, 256))
    reference = np.abs(programmed.at(0.0).mvm(x)).mean()
    aged = np.abs(programmed.at(YEAR).mvm(x)).mean()
    assert aged / reference < 0.6  # drift alone loses far more than the tolerance
    factor = pcm.drift_compensation_factor(programmed, YEAR)
    assert factor * aged == pytest.approx(reference, rel=0.02)


def test_drift_compensation_is_one_right_after_programming():
    rng = np.random.default_rng(1)
    programmed = pcm.program_array(*random_pair_targets(rng, (16, 16)), TARGET, seed=0, tile=0)
    assert pcm.drift_compensation_factor(programmed, 0.0) == 1.0
    np.testing.assert_array_equal(pcm.column_drift_compensation_factors(programmed, 0.0), 1.0)


def test_per_column_compensation_corrects_columns_that_drift_differently():
    # Column j holds conductance level g_rel_j on every row: small conductances drift faster
    # (larger μ_ν), which one global factor cannot correct for all columns at once.
    g_rel = np.linspace(0.05, 1.0, 32)
    g_plus = np.tile(g_rel * 25.0, (128, 1))
    programmed = pcm.program_array(g_plus, np.zeros_like(g_plus), TARGET, seed=5, tile=0)
    x = np.random.default_rng(8).uniform(0.0, 1.0, (64, 128))
    reference = np.abs(programmed.at(0.0).mvm(x)).mean(axis=0)
    aged = np.abs(programmed.at(YEAR).mvm(x)).mean(axis=0)
    per_column = pcm.column_drift_compensation_factors(programmed, YEAR) * aged / reference
    np.testing.assert_allclose(per_column, 1.0, rtol=0.02)
    global_only = pcm.drift_compensation_factor(programmed, YEAR) * aged / reference
    assert np.abs(global_only - 1.0).max() > 0.05


def test_per_column_factors_are_ratios_of_mean_weight_magnitudes_by_default():
    rng = np.random.default_rng(4)
    programmed = pcm.program_array(*random_pair_targets(rng, (64, 16)), TARGET, seed=2, tile=1)
    expected = np.abs(programmed.at(0.0).weights_us).mean(axis=0) / np.abs(
        programmed.at(DAY).weights_us
    ).mean(axis=0)
    np.testing.assert_allclose(pcm.column_drift_compensation_factors(programmed, DAY), expected)
    ones = np.ones((1, 64))
    expected_global = (
        np.abs(ones @ programmed.at(0.0).weights_us).mean()
        / np.abs(ones @ programmed.at(DAY).weights_us).mean()
    )
    assert pcm.drift_compensation_factor(programmed, DAY) == pytest.approx(expected_global)


def test_compensation_of_an_all_zero_tile_is_one():
    zeros = np.zeros((8, 8))
    silent = with_overrides(TARGET, prog_noise_scale=0.0)
    programmed = pcm.program_array(zeros, zeros, silent, seed=0, tile=0)
    assert pcm.drift_compensation_factor(programmed, YEAR) == 1.0
    np.testing.assert_array_equal(pcm.column_drift_compensation_factors(programmed, YEAR), 1.0)
