"""models/masking: every masking mode matches its definition (falling back only where it is impossible), `all`
draws one configured mode per batch by its weights, and the forecast mask is a fixed horizon."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import PROPS, batch_of, store_rows
from hypothesis import given
from hypothesis import strategies as st
from neurobridge.models.config import ALL_PROMPTS, MODES, MaskConfig, ModelConfig
from neurobridge.models.masking import mask_last_bins, sample_mask


def _count(r, n):
    return min(max(1, round(r * n)), max(1, n - 1))


@PROPS
@given(store_rows(), st.sampled_from([*MODES, "heldout"]), st.integers(0, 1000))
def test_every_mode_matches_its_definition(data, mode, seed):
    rows, k, _ = data
    b = batch_of(rows, k)
    ratios = MaskConfig()
    m = sample_mask(b, mode, ratios, generator=torch.Generator().manual_seed(seed))
    B, P, T = b.shape
    valid = b.token_valid
    assert not (m.target & ~valid).any() and not (m.visible & ~valid).any()  # padding is never masked or seen
    assert not (m.target & m.visible).any()
    for i in range(B):
        nv, nb, npch = int(valid[i].sum()), int(b.n_bins[i]), int(b.n_patches[i])
        used = ALL_PROMPTS[int(m.mode_ids[i])]
        tgt = m.target[i].reshape(P, T)[:npch, :nb]
        vis = m.visible[i].reshape(P, T)[:npch, :nb]
        if mode != "heldout" and nv >= 2:
            assert tgt.any() and vis.any(), "never masks everything, never nothing"
        if used == "none":
            assert nv < 2 and not tgt.any() and torch.equal(vis, torch.ones_like(vis))
        elif used == "random":
            assert int(tgt.sum()) == _count(ratios.random, nv) and torch.equal(vis, ~tgt)
        elif used in ("temporal", "forward"):
            bins = tgt.any(dim=0)
            assert torch.equal(tgt, bins.expand(npch, nb))  # whole bins, across every patch
            idx = bins.nonzero().flatten()
            assert len(idx) == _count(getattr(ratios, used), nb) and (idx.diff() == 1).all()  # one contiguous span
            if used == "forward":
                assert int(idx[-1]) == nb - 1  # the last bins only
        elif used == "neuron":
            pat = tgt.any(dim=1)
            assert torch.equal(tgt, pat[:, None].expand(npch, nb))  # whole patches, across all time
            assert int(pat.sum()) == _count(ratios.neuron, npch)
        elif used == "inter_region":
            regs = b.patch_region[i, :npch]
            hit = set(regs[tgt.any(dim=1)].tolist())
            assert len(hit) == 1  # exactly one region, all of it
            assert torch.equal(tgt, (regs == hit.pop())[:, None].expand(npch, nb)) and torch.equal(vis, ~tgt)
        elif used == "intra_region":
            regs = b.patch_region[i, :npch]
            (r,) = set(regs[tgt.any(dim=1)].tolist())
            in_r = regs == r
            assert torch.equal(tgt, tgt.any(dim=1)[:, None].expand(npch, nb))  # whole patches
            assert int(tgt.any(dim=1).sum()) == _count(ratios.intra_region, int(in_r.sum()))
            assert torch.equal(vis, in_r[:, None].expand(npch, nb) & ~tgt)  # only the same region is visible
        elif used == "heldout":
            held = b.patch_heldout[i, :npch]
            assert torch.equal(tgt, held[:, None].expand(npch, nb)) and torch.equal(vis, ~tgt)
        # fallbacks only where the requested mode is impossible
        if used not in (mode, "none"):
            regions = set(b.patch_region[i, :npch].tolist())
            counts = [int((b.patch_region[i, :npch] == r).sum()) for r in regions]
            impossible = {
                "temporal": nb < 2,
                "forward": nb < 2,
                "neuron": npch < 2,
                "inter_region": len(regions) < 2,
                "intra_region": max(counts) < 2,
            }
            assert impossible[mode], (mode, used)


def test_all_mode_draws_one_mode_per_batch_from_the_configured_list():
    rng = np.random.default_rng(0)
    rows = [
        {
            "counts": rng.poisson(1, 16 * 6).tolist(),
            "n_units": 16,
            "n_bins": 6,
            "unit_regions": ["A"] * 8 + ["B"] * 8,
            "session": "s",
        }
    ] * 3
    b = batch_of(rows, 2)
    seen = set()
    for s in range(40):
        m = sample_mask(b, "all", modes=["temporal", "inter_region"], generator=torch.Generator().manual_seed(s))
        assert len(set(m.mode_ids.tolist())) == 1
        seen.add(ALL_PROMPTS[int(m.mode_ids[0])])
    assert seen == {"temporal", "inter_region"}
    # relative odds: a weight of 0 is never drawn, 3:1 shows up as roughly 3:1 over 400 batches
    drawn = [
        ALL_PROMPTS[
            int(
                sample_mask(
                    b,
                    "all",
                    modes=["temporal", "inter_region", "neuron"],
                    weights=w,
                    generator=torch.Generator().manual_seed(s),
                ).mode_ids[0]
            )
        ]
        for s in range(400)
        for w in [{"temporal": 3.0, "neuron": 0.0}]
    ]
    assert "neuron" not in drawn and 2.4 < drawn.count("temporal") / drawn.count("inter_region") < 3.8
    with pytest.raises(ValueError, match="unknown masking mode 'nope'"):
        sample_mask(b, "nope")
    with pytest.raises(ValueError, match="mode_weights names modes not in modes: \\['forward'\\]"):
        ModelConfig(modes=["temporal"], mode_weights={"forward": 2.0})


def test_mask_last_bins_is_a_fixed_horizon():
    rows = [{"counts": [1] * 12, "n_units": 2, "n_bins": 6, "unit_regions": ["A", "A"], "session": "s"}]
    b = batch_of(rows, 2)
    m = mask_last_bins(b, 2)
    assert m.target[0].tolist() == [False] * 4 + [True] * 2
