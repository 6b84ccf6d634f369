"""evaluate/baselines: the baselines reported beside every model. The mean rate scores zero, NLB smoothing (with a
cross-validated GLM penalty) beats it and stays below the oracle; the simulator's truth becomes counts per bin."""

from __future__ import annotations

import numpy as np
import pytest
from neurobridge.evaluate.baselines import (
    expected_counts,
    fit_poisson_glm,
    mean_rate_baseline,
    oracle_bps,
    select_l2,
    smooth_spikes,
    smoothing_baseline,
    train_mean_rate,
)
from neurobridge.evaluate.metrics import (
    bits_per_spike,
    co_bps,
)


def _latent_population(seed: int, trials=60, bins=40, neurons=40, dim=3):
    rng = np.random.default_rng(seed)
    t = np.arange(bins)[None, :, None]
    freq = rng.uniform(0.03, 0.12, size=(1, 1, dim))
    phase = rng.uniform(0, 2 * np.pi, size=(trials, 1, dim))
    z = np.sin(2 * np.pi * freq * t + phase)  # smooth latents, random phase per trial
    c = rng.normal(0, 0.8, size=(dim, neurons))
    rates = np.exp(np.log(0.3) + z @ c)
    return rates, rng.poisson(rates).astype(float)


def test_mean_rate_baseline_is_zero_and_train_mean_is_not_positive_on_average():
    rates, spikes = _latent_population(2)
    assert bits_per_spike(mean_rate_baseline(spikes[40:]), spikes[40:]) == pytest.approx(0.0, abs=1e-12)
    assert bits_per_spike(train_mean_rate(spikes[:40], spikes[40:].shape), spikes[40:]) <= 0.0


def test_smoothing_keeps_mass_and_handles_edges():
    x = np.zeros((1, 41, 1))
    x[0, 20, 0] = 1.0  # far from the edges (kernel half-width 8 bins): plain convolution, mass kept
    s = smooth_spikes(x, 2.0)
    assert s.sum() == pytest.approx(1.0, abs=1e-9) and s.argmax() == 20
    flat = smooth_spikes(np.ones((2, 9, 3)), 3.0)
    np.testing.assert_allclose(flat, 1.0)  # edge renormalisation: a constant stays constant to the edges


def test_poisson_glm_recovers_known_weights():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20000, 4))
    w = np.array([[0.5, -0.3], [0.0, 0.4], [-0.2, 0.0], [0.3, 0.2]])
    y = rng.poisson(np.exp(x @ w + np.array([-0.5, 0.2]))).astype(float)
    glm = fit_poisson_glm(x, y, l2=0.0)
    np.testing.assert_allclose(glm.weights / x.std(axis=0)[:, None], w, atol=0.03)  # inputs were standardised
    np.testing.assert_allclose(glm.predict(x).mean(axis=0), y.mean(axis=0), rtol=0.02)


def test_smoothing_baseline_is_positive_and_below_the_oracle():
    rates, spikes = _latent_population(4)
    held = np.zeros(spikes.shape[-1], dtype=bool)
    held[::4] = True
    train, test = slice(0, 45), slice(45, None)
    pred = smoothing_baseline(spikes[train][..., ~held], spikes[train][..., held], spikes[test][..., ~held], 2.0)
    smooth = co_bps(_full(pred, held, spikes[test]), spikes[test], held)
    oracle = oracle_bps(rates[test][..., held], spikes[test][..., held])
    assert 0.05 < smooth < oracle, (smooth, oracle)


def test_cross_validated_penalty_beats_a_fixed_small_one_when_training_trials_are_few():
    """Few trials and many inputs: an unpenalised GLM overfits (MC_Maze's 84 trials); CV on the training trials
    picks a penalty that scores better on trials it never saw, and never worse than the grid's worst."""
    rng = np.random.default_rng(11)
    trials, bins, n_in, n_out = 24, 20, 60, 8
    latent = rng.normal(size=(trials * 2, bins, 1))
    x = rng.poisson(np.exp(-1.5 + 0.4 * latent + 0.1 * rng.normal(size=(1, 1, n_in)))).astype(float)
    y = rng.poisson(np.exp(-1.0 + 0.5 * latent * np.ones((1, 1, n_out)))).astype(float)
    train, test = slice(0, trials), slice(trials, None)
    grid = [1e-4, 1e-2, 1e-1, 1.0]
    chosen = select_l2(x[train], y[train], grid, folds=3)
    assert chosen > grid[0]
    assert select_l2(x[train], y[train], grid, folds=3) == chosen  # deterministic folds

    def score(l2):
        pred = smoothing_baseline(x[train], y[train], x[test], 2.0, l2)
        return bits_per_spike(pred, y[test])

    assert score(grid) == pytest.approx(score(chosen))  # a grid means: fit with the chosen penalty
    assert score(grid) > score(grid[0])
    assert score(grid) >= min(score(v) for v in grid)


def _full(pred_heldout, held, like):
    out = np.ones_like(like)
    out[..., held] = pred_heldout
    return out


def test_expected_counts_turns_hz_truth_into_counts_per_bin():
    hz = np.array([[10.0, 30.0, 20.0, 20.0, 5.0]])  # [units, 10 ms steps]
    np.testing.assert_allclose(expected_counts(hz, 0.01, 0.02), [[0.4, 0.4]])  # (10+30)·0.01, (20+20)·0.01
    with pytest.raises(ValueError, match="whole multiple"):
        expected_counts(hz, 0.01, 0.015)
