"""evaluate/metrics: NLB bits/spike pinned by hand arithmetic and by its properties, paired differences with
their intervals (repeated CV counted per distinct trial), behaviour R², ridge and retrieval top-k."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.evaluate.baselines import (
    mean_rate_baseline,
)
from neurobridge.evaluate.metrics import (
    bits_per_spike,
    co_bps,
    fit_ridge,
    fp_bps,
    paired_bps_difference,
    poisson_nll,
    pooled_bits_per_spike,
    r2_score,
    region_bps,
    retrieval_topk,
    retrieval_topk_subsets,
    ridge_r2,
)

PROPS = settings(max_examples=25, deadline=None, derandomize=True)


# ---------------------------------------------------------------- golden values, arithmetic written out


def test_bits_per_spike_golden_by_hand():
    spikes = np.array([[0, 2], [1, 0], [2, 1]], dtype=float)  # [bins, neurons]
    rates = np.array([[0.5, 1.0], [1.0, 0.5], [1.5, 1.5]])
    # null: both neurons have mean (0+1+2)/3 = (2+0+1)/3 = 1
    # → NLL_null = Σ(1 - n·ln 1 + ln n!) = 6 + 2·ln 2! = 6 + 2 ln 2
    # model: Σr = 6, Σ n·ln r = 2·ln1 + 1·ln1 + 2·ln1.5 + 1·ln1.5 = 3 ln 1.5, Σ log n! = 2 ln 2
    nll_null = 6 + 2 * math.log(2)
    nll_model = 6 - 3 * math.log(1.5) + 2 * math.log(2)
    assert poisson_nll(rates, spikes) == pytest.approx(nll_model, rel=1e-12)
    expected = (nll_null - nll_model) / 6 / math.log(2)  # = 0.5 · log2(1.5) = 0.29248...
    assert expected == pytest.approx(0.5 * math.log2(1.5))
    assert bits_per_spike(rates, spikes) == pytest.approx(expected, rel=1e-12)


def test_zero_rates_are_floored_at_1e_9_like_nlb():
    # r=0 with n=0 costs 1e-9; r=0 with n=1 costs 1e-9 - ln(1e-9) = 1e-9 + 9 ln 10
    assert poisson_nll([0.0, 0.0], [0, 1]) == pytest.approx(2e-9 + 9 * math.log(10), rel=1e-12)


def test_silent_neuron_null_is_floored_not_infinite():
    spikes = np.array([[0, 1], [0, 3]], dtype=float)
    rates = np.array([[0.1, 2.0], [0.1, 2.0]])
    # neuron 0 (silent): null 1e-9 each → 2e-9; model 0.2 → model worse by ~0.2 nats; neuron 1: null = model = 2
    expected = (2e-9 - 0.2) / 4 / math.log(2)
    assert bits_per_spike(rates, spikes) == pytest.approx(expected, rel=1e-6)


def test_nan_spikes_are_not_evaluated():
    spikes = np.array([[0, 2], [1, 0], [2, 1], [np.nan, np.nan]])
    rates = np.array([[0.5, 1.0], [1.0, 0.5], [1.5, 1.5], [99.0, 0.0]])
    assert bits_per_spike(rates, spikes) == pytest.approx(0.5 * math.log2(1.5), rel=1e-12)


def test_selection_helpers_score_only_their_cells():
    rng = np.random.default_rng(0)
    spikes = rng.poisson(1.0, size=(4, 10, 6)).astype(float)
    rates = rng.uniform(0.5, 1.5, size=spikes.shape)
    held = np.array([True, False, True, False, False, True])
    assert co_bps(rates, spikes, held) == pytest.approx(bits_per_spike(rates[..., held], spikes[..., held]))
    assert fp_bps(rates, spikes, 3) == pytest.approx(bits_per_spike(rates[:, -3:], spikes[:, -3:]))
    regions = np.array(["CA1", "CA1", "VISp", "VISp", "VISp", "LP"])
    per = region_bps(rates, spikes, regions)
    assert set(per) == {"CA1", "VISp", "LP"}
    assert per["VISp"] == pytest.approx(bits_per_spike(rates[..., 2:5], spikes[..., 2:5]))
    with pytest.raises(ValueError, match="heldout mask"):
        co_bps(rates, spikes, held[:3])
    with pytest.raises(ValueError, match="shape"):
        bits_per_spike(rates[:, :5], spikes)


def test_pooled_bps_sums_gains_and_spikes_over_sessions():
    spikes = np.array([[0, 2], [1, 0], [2, 1]], dtype=float)
    rates = np.array([[0.5, 1.0], [1.0, 0.5], [1.5, 1.5]])
    pairs = [(rates, spikes), (rates[:, :1], spikes[:, :1])]
    assert pooled_bits_per_spike(pairs) == pytest.approx(_pooled_by_hand(), rel=1e-12)


def _pooled_by_hand() -> float:
    # session A = golden (gain 3 ln 1.5 over 6 spikes); session B = neuron 0 of A alone:
    # null 1 → NLL_null = 3 + ln 2!; model r=(.5,1,1.5): Σr = 3, Σ n ln r = 1·ln1 + 2·ln1.5, Σ log n! = ln 2
    gain_b = (3 + math.log(2)) - (3 - 2 * math.log(1.5) + math.log(2))
    return (3 * math.log(1.5) + gain_b) / (6 + 3) / math.log(2)


# ---------------------------------------------------------------- properties


@st.composite
def spike_arrays(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    trials, bins, neurons = draw(st.integers(1, 6)), draw(st.integers(2, 12)), draw(st.integers(1, 8))
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 0.5, size=(trials, bins, neurons))
    spikes = rng.poisson(rates).astype(float)
    spikes[0, 0, :] += 1  # at least one spike per neuron keeps every null rate positive
    return rates, spikes, rng


@PROPS
@given(spike_arrays())
def test_the_null_model_scores_zero(data):
    _, spikes, _ = data
    assert bits_per_spike(mean_rate_baseline(spikes), spikes) == pytest.approx(0.0, abs=1e-12)


@PROPS
@given(spike_arrays(), st.floats(0.2, 5.0).filter(lambda c: abs(c - 1) > 0.05))
def test_scaling_the_null_by_a_constant_scores_below_zero(data, c):
    _, spikes, _ = data  # the per-neuron mean is the maximum-likelihood constant rate
    assert bits_per_spike(c * mean_rate_baseline(spikes), spikes) < 0


@PROPS
@given(spike_arrays())
def test_bps_is_invariant_to_permuting_neurons_and_to_repeating_the_data(data):
    rates, spikes, rng = data
    perm = rng.permutation(spikes.shape[-1])
    base = bits_per_spike(rates, spikes)
    assert bits_per_spike(rates[..., perm], spikes[..., perm]) == pytest.approx(base, rel=1e-9, abs=1e-12)
    twice = bits_per_spike(np.concatenate([rates, rates]), np.concatenate([spikes, spikes]))
    assert twice == pytest.approx(base, rel=1e-9, abs=1e-12)


@PROPS
@given(st.integers(0, 2**31 - 1), st.floats(0.3, 1.0))
def test_true_rates_beat_noisy_rates_on_large_samples(seed, noise):
    rng = np.random.default_rng(seed)
    rates = 0.5 * np.exp(rng.normal(0, 1, size=(40, 25, 12)))
    spikes = rng.poisson(rates).astype(float)
    noisy = rates * np.exp(noise * rng.normal(size=rates.shape))
    assert bits_per_spike(rates, spikes) > bits_per_spike(noisy, spikes)
    assert bits_per_spike(rates, spikes) > 0


@PROPS
@given(spike_arrays(), spike_arrays(), st.floats(0.3, 1.0))
def test_paired_difference_is_the_difference_of_pooled_bps_whatever_the_nulls(one, two, noise):
    (ra, sa, rng), (rb, sb, _) = one, two  # two sessions (or folds) with different neurons and nulls
    noisy = [r * np.exp(noise * rng.normal(size=r.shape)) for r in (ra, rb)]
    model, other = [(ra, sa), (rb, sb)], [(noisy[0], sa), (noisy[1], sb)]
    diff = paired_bps_difference(model, other, n_boot=200)
    expected = pooled_bits_per_spike(model) - pooled_bits_per_spike(other)
    assert diff.bps == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert diff.ci_low <= diff.ci_high and diff.trials == len(sa) + len(sb)
    assert paired_bps_difference(other, model, n_boot=200).bps == pytest.approx(-diff.bps, rel=1e-9, abs=1e-12)


def test_paired_difference_interval_separates_a_real_gain_from_noise():
    rng = np.random.default_rng(0)
    rates = 0.5 * np.exp(rng.normal(0, 1, size=(60, 20, 10)))
    spikes = rng.poisson(rates).astype(float)
    noisy = rates * np.exp(0.8 * rng.normal(size=rates.shape))
    real = paired_bps_difference([(rates, spikes)], [(noisy, spikes)])
    assert real.ci_low > 0 and real.prob_positive > 0.99  # true rates beat noisy ones on every resample
    twin = rates * np.exp(0.8 * rng.normal(size=rates.shape))  # equally wrong, independently drawn
    tie = paired_bps_difference([(noisy, spikes)], [(twin, spikes)])
    assert tie.ci_low < 0 < tie.ci_high and 0.02 < tie.prob_positive < 0.98
    with pytest.raises(ValueError, match="different spikes"):
        paired_bps_difference([(rates, spikes)], [(rates, spikes + 1)])


def test_repeated_cv_resamples_distinct_trials_and_averages_their_repeats():
    rng = np.random.default_rng(1)
    rates = 0.5 * np.exp(rng.normal(0, 1, size=(60, 20, 10)))
    spikes = rng.poisson(rates).astype(float)
    noisy = [rates * np.exp(0.5 * rng.normal(size=rates.shape)) for _ in range(2)]
    once = paired_bps_difference([(rates, spikes)], [(noisy[0], spikes)])
    # the same 60 trials scored twice, in another order the second time (another fold partition)
    perm = rng.permutation(60)
    keys = [*range(60), *perm.tolist()]
    a = [(rates, spikes), (rates[perm], spikes[perm])]
    twice_same = paired_bps_difference(a, [(noisy[0], spikes), (noisy[0][perm], spikes[perm])], trials=keys)
    assert twice_same.trials == 60  # distinct trials, not 120
    assert (twice_same.bps, twice_same.ci_low, twice_same.ci_high) == pytest.approx(
        (once.bps, once.ci_low, once.ci_high)
    )
    naive = paired_bps_difference(a, [(noisy[0], spikes), (noisy[0][perm], spikes[perm])])  # repeats as new trials
    assert naive.ci_high - naive.ci_low < 0.8 * (once.ci_high - once.ci_low)  # the false precision keys avoid
    two = paired_bps_difference(a, [(noisy[0], spikes), (noisy[1][perm], spikes[perm])], trials=keys)
    second = paired_bps_difference([(rates, spikes)], [(noisy[1], spikes)])
    assert two.bps == pytest.approx((once.bps + second.bps) / 2, rel=1e-9)  # the mean of the repeats' differences
    with pytest.raises(ValueError, match="60 trial keys for 120 trials"):
        paired_bps_difference(a, a, trials=keys[:60])
    with pytest.raises(ValueError, match="repeats have different spike counts"):  # keys out of step with trials
        paired_bps_difference(a, a, trials=[*range(60), *range(60)])


# ---------------------------------------------------------------- behaviour R²


def test_r2_uniform_and_variance_weighting_by_hand():
    y = np.array([[0.0, 0.0], [2.0, 10.0]])  # output means 1 and 5: SS_tot = 2 and 50
    p = np.array([[0.0, 1.0], [1.0, 10.0]])  # SS_res = 1 and 1
    assert r2_score(y, p, "uniform") == pytest.approx(((1 - 1 / 2) + (1 - 1 / 50)) / 2)
    assert r2_score(y, p, "variance") == pytest.approx(1 - 2 / 52)
    assert r2_score(y, np.broadcast_to(y.mean(axis=0), y.shape)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="multioutput"):
        r2_score(y, p, "raw")


def test_ridge_recovers_a_linear_map_and_scores_on_held_out_windows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 20, 6))  # [windows, bins, features]
    w = rng.normal(size=(6, 3))
    y = x @ w + 2.0
    fit = fit_ridge(x.reshape(-1, 6), y.reshape(-1, 3), alpha=1e-9)
    np.testing.assert_allclose(fit.weights, w, atol=1e-6)
    np.testing.assert_allclose(fit.bias, 2.0, atol=1e-6)
    assert ridge_r2(x, y, alpha=1e-6) == pytest.approx(1.0, abs=1e-9)
    noisy = ridge_r2(x, y + rng.normal(0, 3.0, size=y.shape), alpha=1.0, multioutput="variance")
    assert 0.0 < noisy < 0.9
    assert ridge_r2(x, rng.normal(size=y.shape), alpha=1.0) < 0.05  # unrelated targets: no skill on test windows


# ---------------------------------------------------------------- retrieval


def test_retrieval_topk_by_hand_with_pessimistic_ties():
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # true 0 ranked first
            [0.8, 0.5, 0.1],  # true 1 ranked second
            [0.3, 0.3, 0.3],  # all tied: counted as last
        ]
    )
    res = retrieval_topk(sim, ks=(1, 2))
    assert res == {"top1": 1 / 3, "chance1": 1 / 3, "top2": 2 / 3, "chance2": 2 / 3}
    assert retrieval_topk(sim, targets=[0, 0, 2], ks=(1,))["top1"] == pytest.approx(2 / 3)


def test_random_similarities_score_at_chance_and_subsets_report_an_interval():
    rng = np.random.default_rng(0)
    n = 400
    res = retrieval_topk(rng.normal(size=(n, n)))
    assert abs(res["top5"] - 5 / n) < 0.02 and res["chance5"] == 5 / n
    perfect = retrieval_topk_subsets(np.eye(60), n_candidates=20, n_draws=20)
    assert perfect["top1"] == perfect["top1_lo"] == perfect["top1_hi"] == 1.0 and perfect["chance1"] == 1 / 20
    noisy = retrieval_topk_subsets(np.eye(60) + rng.normal(0, 0.6, (60, 60)), n_candidates=20, n_draws=50)
    assert noisy["top1_lo"] <= noisy["top1"] <= noisy["top1_hi"] and noisy["top1_hi"] > noisy["top1_lo"]
