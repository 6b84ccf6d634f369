"""Evaluation metrics with NLB conventions, so numbers are comparable with the NLB leaderboard.

Array layout follows nlb_tools: neurons on the LAST axis, any leading axes ([trials, bins, neurons] or
[bins, neurons]). Rates are expected counts per bin (not Hz). NaN spikes mark cells that are not evaluated (padding),
exactly as NLB ignores NaNs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

RATE_FLOOR = 1e-9  # NLB replaces predicted rates of exactly 0 by 1e-9 (log(0) would make the NLL infinite)
LN2 = float(np.log(2.0))


def gammaln(x: np.ndarray) -> np.ndarray:
    """log Γ(x) via torch (a declared dependency; scipy is only present transitively)."""
    return torch.lgamma(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


def _checked(rates, spikes) -> tuple[np.ndarray, np.ndarray]:
    rates = np.asarray(rates, dtype=np.float64)
    spikes = np.asarray(spikes, dtype=np.float64)
    if rates.shape != spikes.shape:
        raise ValueError(f"rates shape {rates.shape} differs from spikes shape {spikes.shape}")
    keep = ~np.isnan(spikes)
    rates, spikes = rates[keep], spikes[keep]
    if np.isnan(rates).any():
        raise ValueError("rates contain NaN at evaluated (non-NaN spike) cells")
    if (rates < 0).any():
        raise ValueError("rates must be non-negative expected counts per bin")
    if (spikes < 0).any():
        raise ValueError("spike counts must be non-negative")
    return np.where(rates == 0, RATE_FLOOR, rates), spikes


def poisson_nll(rates, spikes) -> float:
    """Total Poisson NLL in nats, sum over evaluated cells of r - n log r + log n!  (NLB's definition).

    Rates of exactly 0 are replaced by ``RATE_FLOOR`` (1e-9) as nlb_tools does; other rates are used unchanged.
    """
    return float(np.sum(_cell_nll(rates, spikes)))


def null_rates(spikes) -> np.ndarray:
    """Per-neuron mean of the evaluated spikes over all leading axes (NaN cells ignored): NLB's null model."""
    spikes = np.asarray(spikes, dtype=np.float64)
    flat = spikes.reshape(-1, spikes.shape[-1])
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(flat, axis=0) if flat.shape[0] else np.full(flat.shape[1], np.nan)
    return np.broadcast_to(mean, spikes.shape).copy()


def bits_per_spike(rates, spikes) -> float:
    """(NLL_null - NLL_model) / total spikes / ln 2; the null is the per-neuron mean rate of these same spikes.

    0 means no better than each neuron's mean rate; positive is better. Returns NaN when there are no spikes.
    A neuron whose evaluated spikes are all zero has null rate 0, floored to 1e-9 like any zero rate.
    """
    spikes = np.asarray(spikes, dtype=np.float64)
    total = np.nansum(spikes)
    if total <= 0:
        return float("nan")
    nulls = np.where(np.isnan(spikes), 0.0, null_rates(spikes))
    return (poisson_nll(nulls, spikes) - poisson_nll(rates, spikes)) / total / LN2


def pooled_bits_per_spike(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """bits/spike over several sessions: null per neuron per session, NLL differences and spikes summed.

    Sessions have different neurons, so they cannot share one array; pooling sums instead of averaging so a
    session counts by its spikes, as one big NLB evaluation would.
    """
    gain, total = 0.0, 0.0
    for rates, spikes in pairs:
        spikes = np.asarray(spikes, dtype=np.float64)
        nulls = np.where(np.isnan(spikes), 0.0, null_rates(spikes))
        gain += poisson_nll(nulls, spikes) - poisson_nll(rates, spikes)
        total += float(np.nansum(spikes))
    return gain / total / LN2 if total > 0 else float("nan")


def _cell_nll(rates, spikes) -> np.ndarray:
    """Per-cell Poisson NLL (same conventions as ``poisson_nll``); not-evaluated (NaN) cells contribute 0."""
    _checked(rates, spikes)  # same shape, rate and count checks
    r, n = np.asarray(rates, dtype=np.float64), np.asarray(spikes, dtype=np.float64)
    keep = ~np.isnan(n)
    r = np.where(keep, np.where(r == 0, RATE_FLOOR, r), 1.0)
    n = np.where(keep, n, 0.0)
    return np.where(keep, r - n * np.log(r) + gammaln(n + 1.0), 0.0)


@dataclass
class PairedDifference:
    """bits/spike of model A minus model B on the same spikes, with a bootstrap interval over trials."""

    bps: float
    ci_low: float
    ci_high: float
    prob_positive: float  # share of bootstrap resamples where A beats B
    trials: int


def paired_bps_difference(
    a: Sequence[tuple[np.ndarray, np.ndarray]],
    b: Sequence[tuple[np.ndarray, np.ndarray]],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    trials: Sequence | None = None,
) -> PairedDifference:
    """Difference of pooled bits/spike, ``a`` minus ``b``, resampling trials (the first axis) with replacement.

    Each element of ``a`` and ``b`` is (rates, spikes) for one session or fold, with the same spikes in both. The
    per-neuron null cancels in a difference, so the point estimate equals ``pooled_bits_per_spike(a) -
    pooled_bits_per_spike(b)`` exactly, and each trial contributes an additive NLL gain and spike count.

    ``trials``: a key per trial of the concatenated elements, for repeated cross-validation where every trial is
    scored once per repeat. A trial's gains are averaged over its repeats before resampling, so the interval is over
    distinct trials (treating repeats as new trials would narrow it falsely) and the point estimate is the mean
    of the repeats' differences.
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired_bps_difference needs the same non-empty list of sessions for both models")
    gains, counts = [], []
    for (ra, sa), (rb, sb) in zip(a, b, strict=True):
        sa, sb = np.asarray(sa, dtype=np.float64), np.asarray(sb, dtype=np.float64)
        if sa.shape != sb.shape or not np.array_equal(sa, sb, equal_nan=True):
            raise ValueError("paired_bps_difference: the two models were scored on different spikes")
        axes = tuple(range(1, sa.ndim))
        gains.append((_cell_nll(rb, sb) - _cell_nll(ra, sa)).sum(axis=axes))
        counts.append(np.nansum(sa, axis=axes))
    g, n = np.concatenate(gains), np.concatenate(counts)
    if trials is not None:
        if len(trials) != len(g):
            raise ValueError(f"paired_bps_difference: {len(trials)} trial keys for {len(g)} trials")
        _, inv = np.unique(np.asarray(trials), return_inverse=True)
        times = np.bincount(inv)
        per_trial = np.bincount(inv, weights=n) / times
        if not np.allclose(n, per_trial[inv]):
            raise ValueError("paired_bps_difference: a trial key's repeats have different spike counts")
        g, n = np.bincount(inv, weights=g) / times, per_trial
    if n.sum() <= 0:
        return PairedDifference(float("nan"), float("nan"), float("nan"), float("nan"), len(g))
    idx = np.random.default_rng(seed).integers(0, len(g), size=(n_boot, len(g)))
    tot = n[idx].sum(axis=1)
    boot = np.where(tot > 0, g[idx].sum(axis=1) / np.maximum(tot, 1e-12), np.nan) / LN2
    lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return PairedDifference(float(g.sum() / n.sum() / LN2), float(lo), float(hi), float(np.nanmean(boot > 0)), len(g))


def co_bps(rates, spikes, heldout) -> float:
    """Co-smoothing bits/spike: only the held-out neurons (bool mask over the last axis) are scored.

    The caller predicts them from held-in neurons only; this is just the NLB selection and score.
    """
    heldout = np.asarray(heldout, dtype=bool)
    rates, spikes = np.asarray(rates), np.asarray(spikes)
    if heldout.shape != (spikes.shape[-1],):
        raise ValueError(f"heldout mask has shape {heldout.shape}, expected ({spikes.shape[-1]},)")
    if not heldout.any():
        raise ValueError("no held-out neurons to score")
    return bits_per_spike(rates[..., heldout], spikes[..., heldout])


def fp_bps(rates, spikes, n_forward: int, time_axis: int = -2) -> float:
    """Forward-prediction bits/spike: only the last ``n_forward`` bins along ``time_axis`` are scored."""
    rates, spikes = np.asarray(rates), np.asarray(spikes)
    n_bins = spikes.shape[time_axis]
    if not 0 < n_forward <= n_bins:
        raise ValueError(f"n_forward={n_forward} must be in 1..{n_bins}")
    sl = [slice(None)] * spikes.ndim
    sl[time_axis] = slice(n_bins - n_forward, n_bins)
    return bits_per_spike(rates[tuple(sl)], spikes[tuple(sl)])


def region_bps(rates, spikes, regions) -> dict[str, float]:
    """bits/spike per region (neurons selected by their region label), e.g. for leave-one-region-out scores.

    The caller predicts each region from the others; this only selects and scores, with each region's own null.
    """
    regions = np.asarray(regions).astype(str)
    rates, spikes = np.asarray(rates), np.asarray(spikes)
    if regions.shape != (spikes.shape[-1],):
        raise ValueError(f"regions has shape {regions.shape}, expected ({spikes.shape[-1]},)")
    return {str(r): bits_per_spike(rates[..., regions == r], spikes[..., regions == r]) for r in np.unique(regions)}


# ---------------------------------------------------------------- behaviour decoding


@dataclass(frozen=True)
class RidgeFit:
    weights: np.ndarray  # [features, outputs]
    bias: np.ndarray  # [outputs]

    def predict(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weights + self.bias


def fit_ridge(x, y, alpha: float = 1.0) -> RidgeFit:
    """Closed-form ridge with an unpenalised intercept (centre, then solve (XᵀX + αI) W = XᵀY)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    y = np.asarray(y, dtype=np.float64)
    y = y.reshape(-1, 1) if y.ndim == 1 else y.reshape(-1, y.shape[-1])
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples, y has {y.shape[0]}")
    if alpha < 0:
        raise ValueError("alpha must be >= 0")
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc + alpha * np.eye(x.shape[1])
    w = np.linalg.lstsq(gram, xc.T @ yc, rcond=None)[0]  # lstsq: still defined when alpha=0 and X is rank-deficient
    return RidgeFit(weights=w, bias=my - mx @ w)


def r2_score(y_true, y_pred, multioutput: str = "uniform") -> float:
    """R² = 1 - SS_res/SS_tot with the TEST mean in SS_tot (sklearn's convention).

    ``uniform``: mean of per-output R²; ``variance``: 1 - ΣSS_res / ΣSS_tot, i.e. outputs weighted by their variance.
    Constant outputs (SS_tot = 0) are dropped from the uniform mean.
    """
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    yt = yt.reshape(-1, 1) if yt.ndim == 1 else yt.reshape(-1, yt.shape[-1])
    yp = yp.reshape(yt.shape)
    ss_res = ((yt - yp) ** 2).sum(axis=0)
    ss_tot = ((yt - yt.mean(axis=0)) ** 2).sum(axis=0)
    if multioutput == "variance":
        return float(1.0 - ss_res.sum() / ss_tot.sum()) if ss_tot.sum() > 0 else float("nan")
    if multioutput != "uniform":
        raise ValueError(f"multioutput must be 'uniform' or 'variance', got {multioutput!r}")
    ok = ss_tot > 0
    return float(np.mean(1.0 - ss_res[ok] / ss_tot[ok])) if ok.any() else float("nan")


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random train/test split of ``n`` windows (split windows, not bins, so neighbouring bins do not leak)."""
    if not 0 < test_fraction < 1 or n < 2:
        raise ValueError(f"need n >= 2 and 0 < test_fraction < 1, got n={n}, test_fraction={test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def ridge_r2(x, y, alpha: float = 1.0, test_fraction: float = 0.2, seed: int = 0, multioutput: str = "uniform"):
    """Decode behaviour from latents: fit ridge on a window split, score R² on held-out windows.

    ``x`` [windows, (bins,) features], ``y`` [windows, (bins,) outputs]; the split is over the first axis.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} windows, y has {y.shape[0]}")
    train, test = split_indices(x.shape[0], test_fraction, seed)
    fit = fit_ridge(x[train], y[train], alpha)
    yt = y[test].reshape(-1, 1) if y.ndim == 1 else y[test].reshape(-1, y.shape[-1])
    return r2_score(yt, fit.predict(x[test].reshape(-1, x.shape[-1])), multioutput)


# ---------------------------------------------------------------- retrieval


def retrieval_topk(similarity, targets=None, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of finding the true candidate in each row of a [queries, candidates] similarity matrix.

    ``targets[i]`` is the true column of query i (default i, a square matrix). Ties count against the model (the
    true item's rank is the number of candidates scoring >= it, minus one), so a constant matrix scores at chance
    or below, never above. Returns ``top{k}`` and ``chance{k}`` = k / candidates.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D [queries, candidates], got shape {sim.shape}")
    q, c = sim.shape
    targets = np.arange(q) if targets is None else np.asarray(targets, dtype=np.int64)
    if targets.shape != (q,) or (targets < 0).any() or (targets >= c).any():
        raise ValueError(f"targets must be {q} column indices in 0..{c - 1}")
    true = sim[np.arange(q), targets]
    rank = (sim >= true[:, None]).sum(axis=1) - 1
    out: dict[str, float] = {}
    for k in ks:
        out[f"top{k}"] = float(np.mean(rank < k))
        out[f"chance{k}"] = min(1.0, k / c)
    return out


def retrieval_topk_subsets(
    similarity, n_candidates: int, ks: Sequence[int] = (1, 5), n_draws: int = 200, seed: int = 0
) -> dict[str, float]:
    """Top-k among random candidate subsets of size ``n_candidates`` (square matrix, true item always included).

    Gives the mean and a 95% percentile interval over draws, so results at different N are comparable and the
    spread is stated.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    n = sim.shape[0]
    if sim.shape != (n, n) or not 2 <= n_candidates <= n:
        raise ValueError(f"need a square matrix and 2 <= n_candidates <= {n}")
    rng = np.random.default_rng(seed)
    draws = {k: np.empty(n_draws) for k in ks}
    for d in range(n_draws):
        cols = rng.permutation(n)[:n_candidates]
        res = retrieval_topk(sim[np.ix_(cols, cols)], ks=ks)
        for k in ks:
            draws[k][d] = res[f"top{k}"]
    out: dict[str, float] = {}
    for k in ks:
        out[f"top{k}"] = float(draws[k].mean())
        out[f"top{k}_lo"], out[f"top{k}_hi"] = (float(v) for v in np.percentile(draws[k], [2.5, 97.5]))
        out[f"chance{k}"] = min(1.0, k / n_candidates)
    return out
