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


RATE_GROUPS = 3  # each pass masks a third of the tokens, near the 30 % the masking modes train with


@torch.no_grad()
def all_unit_rates(
    model: MaskedNeuralModel, vocabs: Vocabularies, rows: list[dict], batch_size: int = 64
) -> np.ndarray:
    """[windows, bins, units] rates of every unit, each cell predicted while its token is masked.

    A masked model predicts only what it cannot see, so rates for all units take ``RATE_GROUPS`` passes: pass g
    masks the tokens with (patch + bin) ≡ g (mod groups), a checkerboard that leaves every masked token its own
    patch at neighbouring bins and the other patches at its own bin, and keeps each cell's prediction from the
    pass that masked it. The prompt is ``random`` (scattered tokens) when the model trained with it.
    """
    model.eval()
    mode = "random" if "random" in model.cfg.modes else model.cfg.modes[0]
    out = []
    for b in batches(rows, vocabs, model.cfg.neurons_per_token, batch_size):
        B, U, T = b.values.shape
        cell_group = (b.unit_patch.clamp_min(0)[:, :, None] + torch.arange(T)[None, None, :]) % RATE_GROUPS
        rates = torch.zeros(B, U, T, dtype=torch.float64)
        for g in range(RATE_GROUPS):
            target = b.token_valid & ((b.token_patch + b.token_time) % RATE_GROUPS == g)
            ids = torch.full((B,), prompt_id(model, mode), dtype=torch.long)
            pred = model.predict(b, MaskResult(target, b.token_valid & ~target, ids)).double()
            rates = torch.where(cell_group == g, pred, rates)
        out.append(rates.numpy().transpose(0, 2, 1))
    width = max(x.shape[1] for x in out)
    units = max(x.shape[2] for x in out)
    return np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, units - x.shape[2]))) for x in out])


def _with_future(rows: list[dict], n_forward: int) -> list[dict]:
    """Rows extended by ``n_forward`` empty bins: the bins a forecast fills (they are masked, never seen)."""
    out = []
    for r in rows:
        nu, nb = int(r["n_units"]), int(r["n_bins"])
        counts = np.zeros((nu, nb + n_forward), dtype=np.float32)
        counts[:, :nb] = np.asarray(r["counts"], dtype=np.float32).reshape(nu, nb)
        out.append({**r, "counts": counts.ravel(), "n_bins": nb + n_forward, "behavior": None})
    return out


@torch.no_grad()
def heldin_heldout_rates(
    model: MaskedNeuralModel, vocabs: Vocabularies, rows: list[dict], batch_size: int = 64, n_forward: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What an NLB submission holds, from held-in spikes only (rows carry ``heldout`` flags): held-out rates
    [windows, bins, held-out units] under the co-smoothing mask; held-in rates, each cell predicted while masked
    (``all_unit_rates``' checkerboard over held-in tokens, held-out tokens never visible); with ``n_forward``, the
    next bins of every unit [windows, n_forward, units] forecast from the held-in window (the ``forward`` prompt).
    """
    model.eval()
    k = model.cfg.neurons_per_token
    held = np.asarray(rows[0]["heldout"], dtype=bool)
    mode = "random" if "random" in model.cfg.modes else model.cfg.modes[0]
    h_in, h_out, fwd = [], [], []
    for b in batches(rows, vocabs, k, batch_size):
        B, U, T = b.values.shape
        out = model.predict(b, heldout_mask(model, b)).double()
        cell_group = (b.unit_patch.clamp_min(0)[:, :, None] + torch.arange(T)[None, None, :]) % RATE_GROUPS
        seen = b.token_valid & ~b.token_heldout
        for g in range(RATE_GROUPS):
            target = seen & ((b.token_patch + b.token_time) % RATE_GROUPS == g)
            ids = torch.full((B,), prompt_id(model, mode), dtype=torch.long)
            pred = model.predict(b, MaskResult(target, seen & ~target, ids)).double()
            out = torch.where((cell_group == g) & ~b.unit_heldout[:, :, None], pred, out)
        rates = out.numpy().transpose(0, 2, 1)
        h_in.append(rates[..., : len(held)][..., ~held])
        h_out.append(rates[..., : len(held)][..., held])
    if n_forward:
        for b in batches(_with_future(rows, n_forward), vocabs, k, batch_size):
            T = b.values.shape[2]
            target = b.token_valid & (b.token_heldout | (b.token_time >= T - n_forward))
            ids = torch.full((b.values.shape[0],), prompt_id(model, "forward"), dtype=torch.long)
            pred = model.predict(b, MaskResult(target, b.token_valid & ~target, ids)).double()
            fwd.append(pred.numpy().transpose(0, 2, 1)[:, T - n_forward :, : len(held)])
    T = min(x.shape[1] for x in h_in)
    return (
        np.concatenate([x[:, :T] for x in h_in]),
        np.concatenate([x[:, :T] for x in h_out]),
        np.concatenate(fwd) if fwd else None,
    )
