"""Store rows → padded batch → region-pure neuron patches (NDT2-style tokens), vectorised over the batch.

A patch holds up to ``k`` units of one region (and one held-in/held-out group) for one time bin. Units keep the
store's region order; within each contiguous region run the held-in units come first, then the held-out ones, and
every run is cut into patches of ``k`` with the last one zero-padded. So no patch mixes regions (region masking is
exact) and, when held-out flags are given, no patch mixes held-in and held-out units (co-smoothing masks whole
patches, the same pattern the model trains on with neuron masking).

Token order is patch-major: token n = patch * T + bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import torch

from neurobridge.models.vocab import PAD, UNK, Vocabularies, unit_key

CONTEXT = ("session", "subject", "task", "dataset")


@dataclass
class Batch:
    # per unit, padded to the batch's largest window ([B, U, T], [B, U], [B, T])
    values: torch.Tensor  # float32 counts or MUA
    unit_mask: torch.Tensor
    bin_mask: torch.Tensor
    unit_region: torch.Tensor
    unit_heldout: torch.Tensor
    is_counts: torch.Tensor  # [B] True: counts (Poisson head), False: MUA (Gaussian head)
    context: dict[str, torch.Tensor]  # session/subject/task/dataset ids [B]
    # patching
    unit_patch: torch.Tensor  # [B, U] patch of each unit (-1 for padding)
    unit_slot: torch.Tensor  # [B, U] slot within its patch (-1 for padding)
    n_patches: torch.Tensor  # [B]
    n_bins: torch.Tensor  # [B]
    patch_valid: torch.Tensor  # [B, P]
    patch_region: torch.Tensor  # [B, P]
    patch_heldout: torch.Tensor  # [B, P]
    tokens: torch.Tensor  # [B, N = P*T, k]
    token_cells: torch.Tensor  # [B, N, k] real unit in a real bin
    token_valid: torch.Tensor  # [B, N]
    token_time: torch.Tensor  # [B, N]
    token_patch: torch.Tensor  # [B, N]
    token_region: torch.Tensor  # [B, N]
    token_heldout: torch.Tensor  # [B, N]
    token_unit: torch.Tensor  # [B, N, k] unit-vocabulary index of each slot (PAD for empty slots, UNK if unknown)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, P, T): batch, patches, bins of the padded token grid."""
        return self.tokens.shape[0], self.patch_valid.shape[1], self.bin_mask.shape[1]

    def to(self, device) -> Batch:
        """The batch on ``device``; to a GPU through pinned memory, so the copies overlap with compute."""
        device = torch.device(device)
        pin = device.type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            if t.device == device:
                return t
            return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {k: move(t) for k, t in v.items()} if isinstance(v, dict) else move(v)
        return Batch(**out)


def patchify(
    values: np.ndarray,
    unit_mask: np.ndarray,
    bin_mask: np.ndarray,
    unit_region: np.ndarray,
    k: int,
    unit_heldout: np.ndarray | None = None,
    unit_index: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Cut [B, U, T] windows into region-pure patches of ``k`` units; returns the patching fields of ``Batch``.

    Padding units must come after real units in each row (``collate`` guarantees it). NumPy, not torch: collation
    runs on the CPU in the training thread between steps, and on arrays this small torch's per-operation dispatch
    cost dominated (the demo's batches of 32 collate in 1.5 ms instead of 2.0).
    """
    B, U, T = values.shape
    heldout = np.zeros_like(unit_mask) if unit_heldout is None else unit_heldout & unit_mask
    if U and bool((unit_mask[:, 1:] & ~unit_mask[:, :-1]).any()):
        raise ValueError("unit_mask must be a prefix mask (padding units after real units)")
    ar = np.broadcast_to(np.arange(U), (B, U))
    prev = np.concatenate([np.full((B, 1), -1, dtype=unit_region.dtype), unit_region[:, :-1]], axis=1)
    run = np.cumsum(unit_mask & (unit_region != prev), axis=1) - 1  # contiguous region runs
    big = np.iinfo(np.int64).max // 4
    key = np.where(unit_mask, run * 2 + heldout, big)
    order = np.argsort(key, axis=1, kind="stable")  # held-in before held-out within each run
    skey = np.take_along_axis(key, order, axis=1)
    svalid = skey < big
    sprev = np.concatenate([np.full((B, 1), -1, dtype=skey.dtype), skey[:, :-1]], axis=1)
    start = np.maximum.accumulate(np.where(svalid & (skey != sprev), ar, 0), axis=1)
    pos = ar - start
    new_patch = svalid & (pos % k == 0)
    spatch = np.cumsum(new_patch, axis=1) - 1
    unit_patch = np.full((B, U), -1, dtype=np.int64)
    unit_slot = np.full((B, U), -1, dtype=np.int64)
    rows = np.arange(B)[:, None]
    unit_patch[rows, order] = np.where(svalid, spatch, -1)
    unit_slot[rows, order] = np.where(svalid, pos % k, -1)
    n_patches = new_patch.sum(axis=1)
    P = int(n_patches.max()) if B else 0

    bi, ui = np.nonzero(unit_mask)
    pi, si = unit_patch[bi, ui], unit_slot[bi, ui]
    patches = np.zeros((B, P, T, k), dtype=values.dtype)
    patches[bi, pi, :, si] = values[bi, ui, :]
    slot_mask = np.zeros((B, P, k), dtype=bool)
    slot_mask[bi, pi, si] = True
    patch_region = np.zeros((B, P), dtype=unit_region.dtype)
    patch_region[bi, pi] = unit_region[bi, ui]
    patch_heldout = np.zeros((B, P), dtype=bool)
    patch_heldout[bi, pi] = heldout[bi, ui]
    patch_valid = np.arange(P)[None, :] < n_patches[:, None]
    slot_unit = np.full((B, P, k), PAD, dtype=np.int64)
    slot_unit[bi, pi, si] = UNK if unit_index is None else unit_index[bi, ui]

    t = torch.from_numpy
    N = P * T
    return {
        "unit_patch": t(unit_patch),
        "unit_slot": t(unit_slot),
        "n_patches": t(n_patches),
        "n_bins": t(bin_mask.sum(axis=1)),
        "patch_valid": t(patch_valid),
        "patch_region": t(patch_region),
        "patch_heldout": t(patch_heldout),
        "tokens": t(patches.reshape(B, N, k)),
        "token_cells": t((slot_mask[:, :, None, :] & bin_mask[:, None, :, None]).reshape(B, N, k)),
        "token_valid": t((patch_valid[:, :, None] & bin_mask[:, None, :]).reshape(B, N)),
        "token_time": torch.arange(T).repeat(P).expand(B, N),
        "token_patch": torch.arange(P).repeat_interleave(T).expand(B, N),
        "token_region": t(np.repeat(patch_region, T, axis=1)),
        "token_heldout": t(np.repeat(patch_heldout, T, axis=1)),
        "token_unit": t(np.repeat(slot_unit, T, axis=1)),
    }


def unpatchify(token_values: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-token predictions [B, N, k] back to the per-unit layout [B, U, T] (padding units stay 0)."""
    B, P, T = batch.shape
    grid = token_values.reshape(B, P, T, -1)
    out = torch.zeros(batch.values.shape, dtype=token_values.dtype, device=token_values.device)
    bi, ui = torch.nonzero(batch.unit_mask, as_tuple=True)
    out[bi, ui, :] = grid[bi, batch.unit_patch[bi, ui], :, batch.unit_slot[bi, ui]]
    return out


def _unit_keys(session: str, unit_ids) -> list[str]:
    return [unit_key(session, u) for u in unit_ids]


def _row_name(row: dict, i: int) -> str:
    return str(row.get("sample_id") or f"row {i} (session {row.get('session')!r})")


def collate(rows: Sequence[dict], vocabs: Vocabularies, neurons_per_token: int, max_units: int | None = None) -> Batch:
    """Store rows (dicts as read from the Parquet token store) → a padded, patched ``Batch``.

    Keys: ``counts`` or ``mua`` (flat row-major [n_units × n_bins]), ``n_units``, ``n_bins``, ``unit_regions``,
    ``session``, ``subject``, ``task``; optional ``dataset``, ``heldout`` (bool per unit), ``unit_ids``,
    ``sample_id``. Strings unknown to ``vocabs`` map to the UNK index.
    Rows may mix sessions, unit counts, region layouts, counts and MUA.
    """
    if not rows:
        raise ValueError("collate needs at least one row")
    B = len(rows)
    nu = np.array([int(r["n_units"]) for r in rows])
    nb = np.array([int(r["n_bins"]) for r in rows])
    U, T = int(nu.max()), int(nb.max())
    if max_units is not None and int(nu.max()) > max_units:
        raise ValueError(f"a row has {int(nu.max())} units, above max_units={max_units}")
    values = np.zeros((B, U, T), dtype=np.float32)
    region = np.zeros((B, U), dtype=np.int64)
    held = np.zeros((B, U), dtype=bool)
    is_counts = np.zeros(B, dtype=bool)
    unit_index = np.full((B, U), UNK, dtype=np.int64)
    for i, r in enumerate(rows):  # one loop per row (not per unit): reshape and copy a whole window
        counts, mua = r.get("counts"), r.get("mua")
        if (counts is None) == (mua is None):
            raise ValueError(f"{_row_name(r, i)}: exactly one of 'counts' and 'mua' must be set")
        flat = np.asarray(counts if counts is not None else mua, dtype=np.float32)
        if flat.size != nu[i] * nb[i]:
            raise ValueError(
                f"{_row_name(r, i)}: {flat.size} values for n_units={nu[i]} × n_bins={nb[i]} = {nu[i] * nb[i]}"
            )
        regs = tuple(r.get("unit_regions") or ())
        if len(regs) != nu[i]:
            raise ValueError(f"{_row_name(r, i)}: {len(regs)} unit_regions for n_units={nu[i]}")
        values[i, : nu[i], : nb[i]] = flat.reshape(nu[i], nb[i])
        region[i, : nu[i]] = vocabs.region.lookup_group(regs)
        if r.get("heldout") is not None:
            h = np.asarray(r["heldout"], dtype=bool)
            if h.shape != (nu[i],):
                raise ValueError(f"{_row_name(r, i)}: heldout has {h.size} flags for n_units={nu[i]}")
            held[i, : nu[i]] = h
        is_counts[i] = counts is not None
        if r.get("unit_ids") is not None and len(vocabs.unit) > 2:
            sess, ids = str(r.get("session") or ""), tuple(r["unit_ids"])
            unit_index[i, : nu[i]] = vocabs.unit.lookup_group((sess, ids), partial(_unit_keys, sess, ids))
    unit_mask = np.arange(U)[None, :] < nu[:, None]
    bin_mask = np.arange(T)[None, :] < nb[:, None]
    context = {f: torch.from_numpy(vocabs[f].lookup([r.get(f) or "" for r in rows])) for f in CONTEXT}
    return Batch(
        values=torch.from_numpy(values),
        unit_mask=torch.from_numpy(unit_mask),
        bin_mask=torch.from_numpy(bin_mask),
        unit_region=torch.from_numpy(region),
        unit_heldout=torch.from_numpy(held),
        is_counts=torch.from_numpy(is_counts),
        context=context,
        **patchify(values, unit_mask, bin_mask, region, neurons_per_token, held, unit_index),
    )


def session_arrays(batch: Batch, per_unit: torch.Tensor, sessions: Sequence[str]) -> dict[str, tuple]:
    """Group per-unit outputs by session for the metrics: {session: (pred [w, T, U], spikes [w, T, U], heldout)}.

    ``sessions`` are the rows' session strings. Padded bins become NaN spikes, which the metrics ignore.
    """
    out: dict[str, tuple] = {}
    nu = batch.unit_mask.sum(dim=1).tolist()
    for s in dict.fromkeys(sessions):
        idx = [i for i, x in enumerate(sessions) if x == s]
        n = nu[idx[0]]
        if any(nu[i] != n for i in idx):
            raise ValueError(f"session {s!r} has rows with different unit counts")
        pred = per_unit[idx, :n].detach().double().numpy().transpose(0, 2, 1)
        spikes = batch.values[idx, :n].double().numpy().transpose(0, 2, 1).copy()
        spikes[~batch.bin_mask[idx].numpy()] = np.nan
        out[s] = (pred, spikes, batch.unit_heldout[idx[0], :n].numpy())
    return out
