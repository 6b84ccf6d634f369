"""Behaviour decoded from neural features the way NLB scores it, beside the same decoder on smoothed spikes.

NLB (nlb_tools ``fit_and_eval_decoder``) fits a ridge regression from rates to behaviour on training trials, its
penalty chosen by 5-fold cross-validation over α ∈ logspace(-4, 0, 9) (contiguous folds of the flattened bins, as
scikit-learn's ``GridSearchCV`` makes them), and reports R² on the evaluation trials (the mean over behaviour
columns), with behaviour taken ``lag`` ms after the neural activity (MC_Maze: 80 ms). Here the features are the
model's rates or its latents, and beside them smoothed spikes of every unit, whose kernel is chosen by the same
cross-validation from a grid in milliseconds. Constant behaviour columns (Stevenson's z velocity) are dropped:
their R² is undefined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from neurobridge.evaluate import baselines, metrics

ALPHAS = tuple(float(a) for a in np.logspace(-4, 0, 9))  # NLB's grid
# NLB's grid stops at 1, weak against thousands of samples: decoders of correlated features (latents, smoothed
# spikes) pick its top. Protocols that compare feature sets use this one, so that no set is held at the edge.
WIDE_ALPHAS = tuple(float(a) for a in np.logspace(-4, 4, 17))


class BehaviorConfig(BaseModel):
    """How behaviour is decoded (``neurobridge evaluate --behavior-from --behavior-lag-ms``)."""

    model_config = ConfigDict(extra="forbid")

    features: Literal["rates", "latents", "patch_latents"] = Field(
        "rates",
        description="the model's features: rates of every unit (each predicted while masked), latents (the mean "
        "over each bin's tokens) or patch_latents (every patch's latent side by side)",
    )
    lag_ms: float = Field(0.0, description="behaviour this many ms after the neural features (NLB MC_Maze: 80)")
    alphas: list[float] = Field(default_factory=lambda: list(ALPHAS), min_length=1, description="ridge penalties")
    folds: int = Field(5, ge=2, description="cross-validation folds for the penalty (and the smoothing kernel)")
    smoothing_ms: list[float] = Field(
        default_factory=lambda: list(baselines.SMOOTHING_MS),
        min_length=1,
        description="kernel grid (ms) of the smoothed-spikes decoder, chosen by the same cross-validation",
    )
    feature_smoothing_ms: list[float] = Field(
        default_factory=lambda: [0.0],
        min_length=1,
        description="kernel grid (ms; 0: none) applied to the model's features before decoding, chosen by the same "
        "cross-validation (default: none, the features as the model gives them)",
    )


@dataclass(frozen=True)
class Decoded:
    r2: float  # on the evaluation windows
    alpha: float  # the penalty the cross-validation chose
    cv_r2: float  # its cross-validated R² on the training windows
    alpha_at_edge: bool = False  # the strongest penalty of the grid won: a wider grid may decode better


def lagged(x: np.ndarray, y: np.ndarray, lag_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair features at bin t with behaviour at bin t + lag within each window ([windows, bins, ·] both)."""
    T = min(x.shape[1], y.shape[1])
    if abs(lag_bins) >= T:
        raise ValueError(f"a lag of {lag_bins} bins leaves nothing of {T}-bin windows")
    if lag_bins >= 0:
        return x[:, : T - lag_bins], y[:, lag_bins:T]
    return x[:, -lag_bins:T], y[:, : T + lag_bins]


def _flat(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[windows, bins, ·] → samples, dropping bins whose behaviour is missing (NaN), as NLB does."""
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    keep = ~np.isnan(y2).any(axis=1)
    return x2[keep], y2[keep]


def ridge_path(x: np.ndarray, y: np.ndarray, alphas) -> list[metrics.RidgeFit]:
    """Ridge fits (unpenalised intercept) at every alpha from one eigendecomposition of the centred Gram matrix."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    evals, evecs = np.linalg.eigh(xc.T @ xc)
    proj = evecs.T @ (xc.T @ yc)
    fits = []
    for a in alphas:
        w = evecs @ (proj / np.maximum(evals + a, 1e-12)[:, None])
        fits.append(metrics.RidgeFit(weights=w, bias=my - mx @ w))
    return fits


def ridge_search(x: np.ndarray, y: np.ndarray, alphas, folds: int = 5) -> tuple[float, float]:
    """(alpha, cross-validated R²): contiguous folds over the samples, R² averaged over folds (GridSearchCV)."""
    n = len(x)
    bounds = np.linspace(0, n, folds + 1).astype(int)
    scores = np.zeros(len(alphas))
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        fit = np.ones(n, dtype=bool)
        fit[a:b] = False
        for i, r in enumerate(ridge_path(x[fit], y[fit], alphas)):
            scores[i] += metrics.r2_score(y[a:b], r.predict(x[a:b])) / folds
    i = int(np.nanargmax(scores))
    return float(alphas[i]), float(scores[i])


def decode(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], cfg: BehaviorConfig, bin_ms):
    """R² of behaviour on ``test`` from a ridge fitted on ``train``: each a (features, behaviour) pair of
    [windows, bins, ·] arrays. Behaviour columns constant on the training windows are left out."""
    lag = int(round(cfg.lag_ms / bin_ms))
    x_tr, y_tr = _flat(*lagged(*train, lag))
    x_te, y_te = _flat(*lagged(*test, lag))
    varies = y_tr.std(axis=0) > 0
    if len(x_tr) < 2 * cfg.folds or not varies.any() or not len(x_te):
        return None
    y_tr, y_te = y_tr[:, varies], y_te[:, varies]
    alpha, cv = ridge_search(x_tr, y_tr, cfg.alphas, cfg.folds)
    fit = ridge_path(x_tr, y_tr, [alpha])[0]
    return Decoded(
        metrics.r2_score(y_te, fit.predict(x_te)), alpha, cv, len(cfg.alphas) > 1 and alpha == max(cfg.alphas)
    )


def decode_smoothed(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], cfg, bin_ms, kernels=None
):
    """The same decoder on Gaussian-smoothed features (spikes of every unit; ``kernels`` default
    ``cfg.smoothing_ms``, 0 = unsmoothed), the kernel chosen by cross-validated R² on the training windows:
    (Decoded, kernel in ms), or None when there is nothing to decode."""
    best = None
    for sigma in cfg.smoothing_ms if kernels is None else kernels:
        tr = baselines.smooth_spikes(train[0], sigma / bin_ms) if sigma > 0 else train[0]
        te = baselines.smooth_spikes(test[0], sigma / bin_ms) if sigma > 0 else test[0]
        got = decode((tr, train[1]), (te, test[1]), cfg, bin_ms)
        if got is not None and (best is None or got.cv_r2 > best[0].cv_r2):
            best = (got, float(sigma))
    return best
