"""Held-out units read out from the model's latents by a per-session Poisson GLM: the few-trial read-out.

The decoder's per-unit read-out rows are fitted by SGD with everything else; on a recording of ~100 trials they are
what overfits (MC_Maze, issue 4). A convex Poisson GLM from the encoder's per-bin latents to each held-out unit,
its penalty chosen by cross-validation on the training windows, is the classic small-data read-out. The latents are
smoothed in time with the smoothing baseline's own kernel, so this read-out and NLB's smoothing baseline run the
same pipeline (Gaussian kernel → Poisson GLM, penalty by CV) and differ only in what they read: the model's latents
or the held-in spikes. No test spike reaches it: the latents are computed with the held-out units hidden, exactly
as for co-smoothing, and the GLM is fitted on training windows only.

Its control is essential: an untrained encoder is a random nonlinear feature map of the held-in spikes, and a GLM
on random features can beat the linear smoothing GLM by itself (on MC_Maze it does, by +0.036 co-bps). What the
learned weights add is the read-out of the trained model minus that of ``untrained_like(model)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neurobridge.evaluate import baselines
from neurobridge.models.config import ALL_PROMPTS
from neurobridge.models.masking import MaskResult, sample_mask
from neurobridge.models.ndt import N_CTX, MaskedNeuralModel, bin_means
from neurobridge.models.patching import Batch, collate
from neurobridge.models.vocab import Vocabularies


def batches(rows: list[dict], vocabs: Vocabularies, k: int, size: int) -> Iterator[Batch]:
    for i in range(0, len(rows), size):
        yield collate(rows[i : i + size], vocabs, k)


def prompt_id(model: MaskedNeuralModel, mode: str) -> int:
    """The mode's prompt id if the model trained with it, else the neuron prompt (same mask pattern)."""
    return ALL_PROMPTS.index(mode if mode in model.cfg.modes else "neuron")


def heldout_mask(model: MaskedNeuralModel, batch: Batch) -> MaskResult:
    """Co-smoothing's mask: held-out units' tokens are targets, everything else is visible."""
    m = sample_mask(batch, "heldout")
    return MaskResult(m.target, m.visible, torch.full_like(m.mode_ids, prompt_id(model, "heldout")))


@torch.no_grad()
def heldout_latents(
    model: MaskedNeuralModel, vocabs: Vocabularies, rows: list[dict], batch_size: int = 64
) -> np.ndarray:
    """[windows, bins, d]: the encoder's outputs under the co-smoothing mask, averaged over each bin's tokens.

    Only held-in units are visible (rows must carry ``heldout`` flags), so these latents hold nothing a held-out
    unit's spikes could leak into.
    """
    model.eval()
    out = []
    for b in batches(rows, vocabs, model.cfg.neurons_per_token, batch_size):
        h, order, pad = model.encode_visible(b, heldout_mask(model, b))
        t = b.token_time.gather(1, order).masked_fill(pad, 0)
        out.append(bin_means(h[:, N_CTX:], t, ~pad, b.bin_mask.shape[1]).double().numpy())
    width = max(x.shape[1] for x in out)
    return np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0))) for x in out])


def untrained_like(model: MaskedNeuralModel, vocabs: Vocabularies, seed: int = 0) -> MaskedNeuralModel:
    """A freshly initialised model of the same architecture and vocabulary sizes: the read-out's control."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        fresh = MaskedNeuralModel(model.cfg, vocabs)
    finally:
        torch.random.set_rng_state(state)
    return fresh.eval()


@dataclass(frozen=True)
class ReadoutFit:
    """How the read-out's GLM is fitted: the penalty grid (several: the best by 3-fold CV over training windows),
    the Gaussian smoothing of the latents within each window (``sigma_bins``; None: none), and the batch size of the
    encoder passes."""

    l2: Sequence[float]
    sigma_bins: float | None = None
    batch_size: int = 64


def latent_readout(
    model: MaskedNeuralModel,
    vocabs: Vocabularies,
    train: list[dict],
    train_spikes: np.ndarray,
    test: list[dict],
    fit: ReadoutFit,
) -> np.ndarray:
    """Held-out rates [test windows, bins, held-out units] from a GLM on latents fitted to ``train_spikes``.

    ``train_spikes`` are the training windows' held-out counts [windows, bins, held-out units]; train and test
    latents are cut to its bins before smoothing, so no padding leaks into the last bins.
    """
    T = train_spikes.shape[1]
    x_tr = heldout_latents(model, vocabs, train, fit.batch_size)[:, :T]
    x_te = heldout_latents(model, vocabs, test, fit.batch_size)[:, :T]
    if x_tr.shape[1] != T or x_te.shape[1] != T:
        raise ValueError(f"latents have {x_tr.shape[1]} (train) and {x_te.shape[1]} (test) bins, the spikes {T}")
    if fit.sigma_bins is not None:
        x_tr, x_te = baselines.smooth_spikes(x_tr, fit.sigma_bins), baselines.smooth_spikes(x_te, fit.sigma_bins)
    l2 = list(fit.l2)
    best = float(l2[0]) if len(l2) == 1 else baselines.select_l2(x_tr, train_spikes, l2)
    glm = baselines.fit_poisson_glm(
        x_tr.reshape(-1, x_tr.shape[-1]), train_spikes.reshape(-1, train_spikes.shape[-1]), l2=best
    )
    return glm.predict(x_te.reshape(-1, x_te.shape[-1])).reshape(*x_te.shape[:2], train_spikes.shape[-1])
