"""Masking modes (MAE/NDT2 random plus MtM's temporal, neuron, intra-region, inter-region, forward).

Every mode returns a ``MaskResult`` over tokens [B, N]: ``target`` (cells the loss scores) and ``visible`` (tokens
the encoder sees). Both are always inside ``token_valid``, never overlap, and a row with at least two valid tokens
always has something masked and something visible. Definitions, per row (T bins, P patches):

- random: exactly round(r·valid tokens) tokens, clamped to [1, valid-1];
- temporal: one contiguous span of round(r·T) bins (clamped to [1, T-1]) at a random start, across all patches;
- forward: the last round(r·T) bins (clamped to [1, T-1]) across all patches (causal prediction);
- neuron: round(r·P) whole patches (clamped to [1, P-1]) across all bins;
- inter_region: all tokens of one region drawn uniformly among the row's regions; the others are visible;
- intra_region: one region drawn uniformly among regions with >= 2 patches; round(r·its patches) of its patches
  (clamped to [1, n-1]) are targets; only the region's other patches are visible (other regions are hidden and not
  scored), so the prediction can use the same region only;
- heldout (evaluation): the held-out patches across all bins; rows without held-out units mask nothing.

When a row cannot satisfy its mode (one bin for temporal/forward, one patch for neuron, one region for
inter_region, no region with two patches for intra_region) it falls back along ``FALLBACK`` and the row's prompt
says which mode was actually used; a row with a single valid token gets the 'none' prompt and no target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from neurobridge.models.config import ALL_PROMPTS, MODES, MaskConfig
from neurobridge.models.patching import Batch

FALLBACK: dict[str, tuple[str, ...]] = {
    "random": (),
    "temporal": ("neuron", "random"),
    "forward": ("neuron", "random"),
    "neuron": ("temporal", "random"),
    "intra_region": ("neuron", "random"),
    "inter_region": ("neuron", "random"),
    "heldout": (),
}


@dataclass
class MaskResult:
    target: torch.Tensor  # [B, N] bool: scored tokens, hidden from the encoder
    visible: torch.Tensor  # [B, N] bool: tokens the encoder sees
    mode_ids: torch.Tensor  # [B] index into ALL_PROMPTS (the mode actually applied)


def _rand(shape, batch: Batch, g: torch.Generator | None) -> torch.Tensor:
    """Uniform draws on the generator's device (the GPU's when training there: masks never cross the bus)."""
    return torch.rand(shape, generator=g, device=g.device if g is not None else "cpu").to(batch.tokens.device)


def _pick(eligible: torch.Tensor, n_pick: torch.Tensor, g) -> torch.Tensor:
    """Choose ``n_pick[b]`` of the eligible columns of each row uniformly at random (vectorised)."""
    scores = torch.rand(eligible.shape, generator=g, device=g.device if g is not None else "cpu").to(eligible.device)
    scores = torch.where(eligible, scores, torch.full_like(scores, 2.0))
    rank = torch.argsort(torch.argsort(scores, dim=1), dim=1)
    return eligible & (rank < n_pick[:, None])


def _count(ratio: float, n: torch.Tensor) -> torch.Tensor:
    """round(ratio·n) clamped to [1, n-1] (n >= 2 where it is used)."""
    return torch.clamp(torch.round(ratio * n.double()).long(), min=1).minimum((n - 1).clamp_min(1))


def _region_counts(batch: Batch) -> torch.Tensor:
    """[B, R] number of valid patches per region id."""
    R = int(batch.patch_region.max()) + 1 if batch.patch_region.numel() else 1
    counts = torch.zeros(batch.patch_region.shape[0], R, dtype=torch.long, device=batch.tokens.device)
    counts.scatter_add_(1, batch.patch_region, batch.patch_valid.long())
    return counts


def _per_mode(batch: Batch, mode: str, ratios: MaskConfig, g) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target, visible, feasible[B]) for one mode, before fallback."""
    valid = batch.token_valid
    T, P = batch.n_bins, batch.n_patches
    t, p = batch.token_time, batch.token_patch
    if mode == "random":
        nv = valid.sum(dim=1)
        target = _pick(valid, _count(ratios.random, nv), g)
        return target, valid & ~target, nv >= 2
    if mode in ("temporal", "forward"):
        L = _count(getattr(ratios, mode), T)
        free = (T - L + 1).double()  # possible span starts
        start = T - L if mode == "forward" else torch.floor(_rand(T.shape, batch, g) * free).long()
        target = valid & (t >= start[:, None]) & (t < (start + L)[:, None])
        return target, valid & ~target, T >= 2
    if mode == "neuron":
        chosen = _pick(batch.patch_valid, _count(ratios.neuron, P), g)
        target = valid & chosen.gather(1, p)
        return target, valid & ~target, P >= 2
    if mode == "heldout":
        target = valid & batch.token_heldout
        return target, valid & ~target, torch.ones_like(P, dtype=torch.bool)
    counts = _region_counts(batch)
    if mode == "inter_region":
        present = counts > 0
        feasible = present.sum(dim=1) >= 2
        region = _pick(present, torch.ones_like(P), g).float().argmax(dim=1)
        target = valid & (batch.token_region == region[:, None])
        return target, valid & ~target, feasible
    if mode == "intra_region":
        multi = counts >= 2
        feasible = multi.any(dim=1)
        region = _pick(multi, torch.ones_like(P), g).float().argmax(dim=1)
        in_region = batch.patch_valid & (batch.patch_region == region[:, None])
        chosen = _pick(in_region, _count(ratios.intra_region, in_region.sum(dim=1)), g)
        token_in = valid & in_region.gather(1, p)
        target = valid & chosen.gather(1, p)
        return target, token_in & ~target, feasible
    raise ValueError(f"unknown masking mode {mode!r}; expected one of {ALL_PROMPTS} or 'all'")


def choose_mode(
    mode: str, modes: Sequence[str], generator: torch.Generator | None, weights: Mapping[str, float] | None = None
) -> str:
    """``mode`` itself, or for ``all`` one of ``modes`` drawn uniformly or by relative ``weights`` (missing: 1)."""
    if mode != "all":
        return mode
    dev = generator.device if generator is not None else "cpu"
    if weights:
        w = torch.tensor([float(weights.get(m, 1.0)) for m in modes], device=dev)
        return modes[int(torch.multinomial(w, 1, generator=generator))]
    return modes[int(torch.randint(len(modes), (1,), generator=generator, device=dev))]


def sample_mask(
    batch: Batch,
    mode: str = "all",
    ratios: MaskConfig | None = None,
    modes: Sequence[str] = MODES,
    generator: torch.Generator | None = None,
    weights: Mapping[str, float] | None = None,
) -> MaskResult:
    """Mask a batch with one mode (``all``: one mode drawn from ``modes`` for the whole batch, uniformly or by
    relative ``weights``; modes missing from ``weights`` weigh 1)."""
    ratios = ratios or MaskConfig()
    mode = choose_mode(mode, modes, generator, weights)
    chain = (mode, *FALLBACK.get(mode, ()))
    B = batch.tokens.shape[0]
    target = torch.zeros_like(batch.token_valid)
    visible = batch.token_valid.clone()  # rows nothing can be done for (one token): all visible, 'none' prompt
    mode_ids = torch.full((B,), ALL_PROMPTS.index("none"), dtype=torch.long, device=target.device)
    todo = torch.ones(B, dtype=torch.bool, device=target.device)
    for m in chain:
        if not todo.any():
            break
        tg, vis, ok = _per_mode(batch, m, ratios, generator)
        use = todo & ok
        target = torch.where(use[:, None], tg, target)
        visible = torch.where(use[:, None], vis, visible)
        mode_ids = torch.where(use, torch.full_like(mode_ids, ALL_PROMPTS.index(m)), mode_ids)
        todo &= ~use
    return MaskResult(target=target, visible=visible, mode_ids=mode_ids)


def mask_last_bins(batch: Batch, n_forward: int) -> MaskResult:
    """Forward prediction with a fixed horizon (fp-bps): the last ``n_forward`` real bins of every row."""
    start = (batch.n_bins - n_forward).clamp_min(1)
    target = batch.token_valid & (batch.token_time >= start[:, None])
    mode_ids = torch.full_like(batch.n_bins, ALL_PROMPTS.index("forward"))
    return MaskResult(target=target, visible=batch.token_valid & ~target, mode_ids=mode_ids)


def no_mask(batch: Batch) -> MaskResult:
    """Everything visible (for ``encode``): the 'none' prompt."""
    B = batch.tokens.shape[0]
    ids = torch.full((B,), ALL_PROMPTS.index("none"), dtype=torch.long, device=batch.tokens.device)
    return MaskResult(target=torch.zeros_like(batch.token_valid), visible=batch.token_valid.clone(), mode_ids=ids)
