"""Baselines reported beside every model on the same data and split: mean rate, NLB spike smoothing, oracle.

Layout as in metrics.py: [trials, bins, neurons], rates in expected counts per bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from neurobridge.evaluate.metrics import bits_per_spike, null_rates, pooled_bits_per_spike


def mean_rate_baseline(spikes) -> np.ndarray:
    """Each neuron's mean rate over the evaluated spikes: the NLB null itself, so it scores exactly 0 bps.

    Useful as a sanity row in reports: any pipeline that does not print 0 here is mis-aligned.
    """
    return null_rates(spikes)


def train_mean_rate(train_spikes, shape: tuple[int, ...]) -> np.ndarray:
    """Per-neuron mean rate from TRAINING spikes broadcast to an evaluation shape (honest, usually slightly < 0)."""
    mean = np.nanmean(np.asarray(train_spikes, dtype=np.float64).reshape(-1, shape[-1]), axis=0)
    return np.broadcast_to(mean, shape).copy()


def gaussian_kernel(sigma_bins: float, truncate: float = 4.0) -> np.ndarray:
    if sigma_bins <= 0:
        raise ValueError(f"sigma_bins must be > 0, got {sigma_bins}")
    half = max(1, int(np.ceil(truncate * sigma_bins)))
    t = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma_bins) ** 2)
    return k / k.sum()


def smooth_spikes(spikes, sigma_bins: float) -> np.ndarray:
    """Gaussian-smooth along time within each trial ([trials, bins, neurons]).

    Edges are renormalised by the kernel mass inside the trial, so the first and last bins are not biased low
    (NLB's 'same' convolution leaves them low; this only changes edge bins).
    """
    x = np.asarray(spikes, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"spikes must be [trials, bins, neurons], got shape {x.shape}")
    tr, nb, nn = x.shape
    k = torch.from_numpy(gaussian_kernel(sigma_bins))
    half = (len(k) - 1) // 2
    flat = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1).reshape(tr * nn, 1, nb)))
    w = k.view(1, 1, -1)
    num = torch.nn.functional.conv1d(flat, w, padding=half)
    den = torch.nn.functional.conv1d(torch.ones(1, 1, nb, dtype=torch.float64), w, padding=half)
    return (num / den).reshape(tr, nn, nb).numpy().transpose(0, 2, 1)


@contextmanager
def one_thread():
    """Tiny GLM fits (thousands of samples, tens of features) run fastest on one thread: more only contend, and on
    a busy 2-core machine they made a kernel-and-penalty search 3-7 times slower (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class PoissonGLM:
    weights: np.ndarray  # [features, outputs]
    bias: np.ndarray  # [outputs]
    mean: np.ndarray  # feature standardisation fitted on the training inputs
    scale: np.ndarray

    def predict(self, x) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.exp(np.clip(z @ self.weights + self.bias, -20.0, 20.0))


def fit_poisson_glm(x, y, l2: float = 1e-3, max_iter: int = 200, init: PoissonGLM | None = None) -> PoissonGLM:
    """One Poisson GLM (log link) per output column, all fitted at once with L-BFGS in float64.

    Objective per output: mean over samples of (exp(η) - y η) + l2/2 |w|² (bias unpenalised). The outputs are
    independent, so the summed objective is minimised jointly. Inputs are standardised so l2 means the same across
    features. ``init``: start from this fit's weights (a neighbouring penalty on the same inputs: a warm start
    along a penalty path converges in a fraction of the iterations).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x [samples, features] and y [samples, outputs] must agree, got {x.shape} and {y.shape}")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    xt = torch.from_numpy((x - mean) / scale)
    yt = torch.from_numpy(y)
    if init is None:
        w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.log(yt.mean(dim=0).clamp_min(1e-6)).clone().requires_grad_(True)
    else:
        w = torch.from_numpy(np.array(init.weights, dtype=np.float64)).requires_grad_(True)
        b = torch.from_numpy(np.array(init.bias, dtype=np.float64)).requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        eta = (xt @ w + b).clamp(-20.0, 20.0)
        loss = (torch.exp(eta) - yt * eta).mean(dim=0).sum() + 0.5 * l2 * (w**2).sum()
        loss.backward()
        return loss

    with one_thread():
        opt.step(closure)
    return PoissonGLM(w.detach().numpy(), b.detach().numpy(), mean, scale)


def smoothing_baseline(
    train_heldin,
    train_heldout,
    eval_heldin,
    sigma_bins: float = 2.5,
    l2: float | Sequence[float] = 1e-3,
    log_inputs: bool = False,
    folds: int = 3,
) -> np.ndarray:
    """NLB's spike-smoothing co-smoothing baseline: held-out rates at eval from smoothed held-in activity.

    Smooth held-in spikes (Gaussian, ``sigma_bins``), fit a Poisson GLM per held-out neuron on the training trials,
    predict the evaluation trials. Arrays are [trials, bins, neurons]; returns [eval trials, bins, held-out].
    ``log_inputs`` feeds log(smoothed + 1e-3) instead of the smoothed counts. Several ``l2`` values: the one with
    the best ``folds``-fold cross-validated bits/spike on the training trials (NLB tunes its GLM's penalty too; on
    84 MC_Maze trials a fixed 1e-3 scores -0.11 co-bps on the test trials where the tuned penalty scores 0.10).
    """
    tr_in = smooth_spikes(train_heldin, sigma_bins)
    ev_in = smooth_spikes(eval_heldin, sigma_bins)
    if log_inputs:
        tr_in, ev_in = np.log(tr_in + 1e-3), np.log(ev_in + 1e-3)
    out = np.asarray(train_heldout, dtype=np.float64)
    grid = [float(l2)] if np.isscalar(l2) else [float(x) for x in l2]
    best = grid[0] if len(grid) == 1 else select_l2(tr_in, out, grid, folds)
    glm = fit_poisson_glm(tr_in.reshape(-1, tr_in.shape[-1]), out.reshape(-1, out.shape[-1]), l2=best)
    pred = glm.predict(ev_in.reshape(-1, ev_in.shape[-1]))
    return pred.reshape(*ev_in.shape[:2], out.shape[-1])


def select_l2(inputs: np.ndarray, spikes: np.ndarray, grid: Sequence[float], folds: int = 3) -> float:
    """The penalty with the best pooled cross-validated bits/spike; trials split into folds by index."""
    scores = cv_scores(inputs, spikes, grid, folds)
    return float(grid[int(np.argmax(scores))])


def cv_scores(inputs: np.ndarray, spikes: np.ndarray, grid: Sequence[float], folds: int = 3) -> np.ndarray:
    """Pooled cross-validated bits/spike of the GLM at every penalty of ``grid`` (-inf where undefined); trials
    split into folds by index. With fewer than 2 trials there is nothing to validate on: the first penalty wins."""
    n = inputs.shape[0]
    folds = min(folds, n)
    if folds < 2:
        return np.array([0.0] + [-np.inf] * (len(grid) - 1))
    fold = np.arange(n) % folds
    order = np.argsort(-np.asarray(grid, dtype=np.float64), kind="stable")  # strongest penalty first: warm starts
    preds: list[list] = [[] for _ in grid]
    for f in range(folds):
        fit, ev = fold != f, fold == f
        x, y = inputs[fit].reshape(-1, inputs.shape[-1]), spikes[fit].reshape(-1, spikes.shape[-1])
        glm = None
        for i in order:
            glm = fit_poisson_glm(x, y, l2=grid[i], max_iter=SEARCH_ITERS, init=glm)
            pred = glm.predict(inputs[ev].reshape(-1, x.shape[-1])).reshape(*inputs[ev].shape[:2], -1)
            preds[i].append((pred, spikes[ev]))
    scores = [pooled_bits_per_spike(pairs) for pairs in preds]
    return np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)


# The smoothing baseline's grids. Kernels in milliseconds, converted with each dataset's bin width: a kernel fixed
# in bins is 12.5 ms at 5 ms bins (far too narrow: its noisy inputs need a penalty that collapses the GLM to the
# mean rate) and 125 ms at 50 ms. NLB sweeps 30-60 ms; this grid spans 20-200 ms. The penalties (per sample, on
# standardised inputs) reach the weak end, where a GLM uses its inputs fully, and the strong end, where small
# recordings need it (MC_Maze_Medium at 50 ms: 1.0 is best by inner CV, 1e-4 diverges).
SMOOTHING_MS = (20.0, 40.0, 70.0, 120.0, 200.0)
GLM_L2 = (1e-4, 1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0)
# Fits inside the search stop after this many L-BFGS iterations, warm-started along the penalty path: the scores
# of the penalties that can win agree with 200 iterations to 1e-4 bits/spike (MC_Maze_Medium, Stevenson M1;
# measured), at a fifth of the time. The chosen fit itself runs to convergence.
SEARCH_ITERS = 30


@dataclass(frozen=True)
class SmoothingChoice:
    """What the smoothing baseline's search chose, reported beside its score."""

    sigma_ms: float
    l2: float
    cv_bps: float  # the inner cross-validated bits/spike of the choice (on training windows)

    def sigma_bins(self, bin_ms: float) -> float:
        return self.sigma_ms / bin_ms


def smoothing_search(
    train_heldin, train_heldout, eval_heldin, bin_ms: float, sigmas_ms=SMOOTHING_MS, l2=GLM_L2
) -> tuple[np.ndarray, SmoothingChoice]:
    """NLB's smoothing baseline with its kernel and penalty chosen together by 3-fold cross-validation over the
    training windows: held-out rates [eval windows, bins, held-out] and the choice."""
    out = np.asarray(train_heldout, dtype=np.float64)
    grid = [float(x) for x in l2]
    best: tuple[float, float, float] | None = None
    if len(sigmas_ms) == 1 and len(grid) == 1:  # nothing to choose: no inner CV
        best = (float(sigmas_ms[0]), grid[0], float("nan"))
    if best is None:
        best = _best_kernel(train_heldin, out, bin_ms, [float(s) for s in sigmas_ms], grid)
    choice = SmoothingChoice(*best)
    pred = smoothing_baseline(train_heldin, out, eval_heldin, choice.sigma_bins(bin_ms), choice.l2)
    return pred, choice


def _best_kernel(train_heldin, out, bin_ms: float, sigmas_ms: list[float], grid: list[float]):
    """(kernel, penalty, inner CV score) of the best pair. The kernels' searches are independent and their fits run
    in torch ops that release the GIL, so two threads keep both cores of a laptop busy (each fit on one thread:
    small fits only contend with more); the choice is the same as a serial search's."""
    from concurrent.futures import ThreadPoolExecutor

    def search(sigma: float) -> np.ndarray:
        return cv_scores(smooth_spikes(train_heldin, sigma / bin_ms), out, grid)

    with one_thread(), ThreadPoolExecutor(max_workers=2) as pool:
        all_scores = list(pool.map(search, sigmas_ms))
    best = None
    for sigma, scores in zip(sigmas_ms, all_scores, strict=True):
        i = int(np.argmax(scores))
        if best is None or scores[i] > best[2]:
            best = (sigma, grid[i], float(scores[i]))
    return best


def expected_counts(rates_hz, truth_bin_s: float, eval_bin_s: float, axis: int = -1) -> np.ndarray:
    """Simulator truth (Hz at ``truth_bin_s``) → expected counts per evaluation bin (rates summed × dt).

    The evaluation bin must be a whole multiple of the truth bin; trailing truth steps that do not fill a bin drop.
    """
    factor = eval_bin_s / truth_bin_s
    if factor < 1 or abs(factor - round(factor)) > 1e-6:
        raise ValueError(f"eval bin {eval_bin_s}s is not a whole multiple of the truth bin {truth_bin_s}s")
    f = int(round(factor))
    r = np.moveaxis(np.asarray(rates_hz, dtype=np.float64), axis, -1)
    n = r.shape[-1] // f
    out = r[..., : n * f].reshape(*r.shape[:-1], n, f).sum(axis=-1) * truth_bin_s
    return np.moveaxis(out, -1, axis)


def oracle_bps(true_rates, spikes) -> float:
    """bits/spike of the generating rates: the ceiling any model can reach on this sample (up to noise).

    ``true_rates`` must already be expected counts per evaluated bin, aligned with ``spikes`` (see
    ``expected_counts`` for the simulator's Hz truth).
    """
    return bits_per_spike(true_rates, spikes)
