"""Behaviour decoding as NLB scores it: ridge with its penalty chosen by 5-fold CV, R² on held-out windows, a lag in
milliseconds, and the same decoder on smoothed spikes with its kernel chosen in milliseconds."""

from __future__ import annotations

import numpy as np
import pytest
from neurobridge.evaluate.behaviour import (
    ALPHAS,
    WIDE_ALPHAS,
    BehaviorConfig,
    decode,
    decode_smoothed,
    lagged,
    ridge_search,
)


def test_the_penalty_search_and_score_match_nlbs_scikit_learn_decoder():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV

    g = np.random.default_rng(0)
    x = g.normal(size=(400, 12))
    y = x[:, :3] @ g.normal(size=(3, 2)) + g.normal(0, 2.0, (400, 2))
    gscv = GridSearchCV(Ridge(), {"alpha": np.logspace(-4, 0, 9)}).fit(x[:300], y[:300])
    alpha, cv = ridge_search(x[:300], y[:300], ALPHAS, 5)
    assert alpha == pytest.approx(gscv.best_params_["alpha"]) and cv == pytest.approx(gscv.best_score_, abs=1e-9)
    got = decode((x[None, :300], y[None, :300]), (x[None, 300:], y[None, 300:]), BehaviorConfig(), 20.0)
    assert got.r2 == pytest.approx(gscv.score(x[300:], y[300:]), abs=1e-9)


def test_behaviour_is_paired_with_the_features_lag_ms_earlier_within_each_window():
    g = np.random.default_rng(1)
    x = g.normal(size=(40, 30, 4))
    y = np.zeros((40, 30, 2))
    y[:, 4:] = x[:, :-4, :2] * 3.0  # behaviour follows the features by 4 bins = 80 ms at 20 ms bins
    tr, te = (x[:30], y[:30]), (x[30:], y[30:])
    at_lag = decode(tr, te, BehaviorConfig(lag_ms=80), 20.0)
    assert at_lag.r2 > 0.999
    assert decode(tr, te, BehaviorConfig(lag_ms=0), 20.0).r2 < 0.2
    assert decode(tr, te, BehaviorConfig(lag_ms=80), 10.0).r2 < 0.2  # the same ms at another bin width: 8 bins
    xl, yl = lagged(x, y, 4)
    assert xl.shape == (40, 26, 4) and np.array_equal(yl, y[:, 4:])
    with pytest.raises(ValueError, match="leaves nothing"):
        lagged(x, y, 30)


def test_constant_columns_are_left_out_and_missing_bins_dropped():
    g = np.random.default_rng(2)
    x = g.normal(size=(20, 10, 3))
    y = np.concatenate([x[..., :1] + 0.1 * g.normal(size=(20, 10, 1)), np.zeros((20, 10, 1))], axis=-1)
    y[0, :5, 0] = np.nan  # behaviour not recorded there
    got = decode((x[:15], y[:15]), (x[15:], y[15:]), BehaviorConfig(), 50.0)
    assert got.r2 > 0.95  # the constant z column would read as R² 0 in a uniform mean: it is not scored


def test_the_smoothed_spikes_decoder_chooses_its_kernel_in_ms():
    g = np.random.default_rng(3)
    rate = np.exp(np.sin(np.linspace(0, 40, 60 * 50)).reshape(60, 50, 1) + np.log([1.0, 2.0, 3.0]))
    spikes = g.poisson(rate).astype(float)
    y = np.log(rate[..., :1])  # a slow signal: smoothing must help
    got, sigma = decode_smoothed((spikes[:45], y[:45]), (spikes[45:], y[45:]), BehaviorConfig(), 20.0)
    assert sigma > 20 and got.r2 > decode((spikes[:45], y[:45]), (spikes[45:], y[45:]), BehaviorConfig(), 20.0).r2


def test_a_penalty_at_the_top_of_the_grid_is_flagged():
    g = np.random.default_rng(4)
    x = g.normal(size=(30, 20, 40))
    y = x[..., :1] * 0.05 + g.normal(size=(30, 20, 1))  # almost nothing to decode: the strongest penalty wins
    weak = decode((x[:20], y[:20]), (x[20:], y[20:]), BehaviorConfig(alphas=[1e-4, 1e-2, 1.0]), 20.0)
    assert weak.alpha == 1.0 and weak.alpha_at_edge
    wide = decode((x[:20], y[:20]), (x[20:], y[20:]), BehaviorConfig(alphas=list(WIDE_ALPHAS)), 20.0)
    assert wide.alpha > 1.0 and wide.cv_r2 > weak.cv_r2
