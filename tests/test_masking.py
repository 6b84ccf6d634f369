"""Patching and masking: region-pure patches, every mode's definition, and no masked value reaching the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.models.config import ALL_PROMPTS, MODES, MaskConfig, ModelConfig
from neurobridge.models.masking import mask_last_bins, sample_mask
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.patching import collate, unpatchify
from neurobridge.models.vocab import Vocabularies

PROPS = settings(max_examples=60, deadline=None, derandomize=True)
REGIONS = ["CA1", "LP", "VISp", "unknown"]


@st.composite
def store_rows(draw, max_units=12, max_bins=8):
    """A batch of store-like rows: several sessions, unit counts, region layouts, held-out flags."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(draw(st.integers(1, 4))):
        nu, nb = draw(st.integers(1, max_units)), draw(st.integers(1, max_bins))
        regs = sorted(rng.choice(REGIONS[: draw(st.integers(1, 4))], nu).tolist())  # region-ordered like the store
        rows.append(
            {
                "counts": rng.poisson(1.5, nu * nb).astype(np.uint16).tolist(),
                "n_units": nu,
                "n_bins": nb,
                "unit_regions": regs,
                "heldout": (rng.random(nu) < 0.3).tolist(),
                "session": f"s{i % 2}",
                "subject": "m1",
                "task": "reach",
            }
        )
    return rows, draw(st.integers(1, 4)), seed


def _batch(rows, k):
    return collate(rows, Vocabularies.from_rows(rows), k)


# ---------------------------------------------------------------- patching


def test_patching_by_hand():
    rows = [
        {
            "counts": list(range(5 * 2)),
            "n_units": 5,
            "n_bins": 2,
            "unit_regions": ["A", "A", "A", "B", "B"],
            "session": "s",
            "subject": "m",
            "task": "t",
        }
    ]
    b = _batch(rows, 2)
    # region A: units 0,1 | 2 (+pad); region B: units 3,4 → 3 patches, never mixing A and B
    assert b.unit_patch[0].tolist() == [0, 0, 1, 2, 2] and b.unit_slot[0].tolist() == [0, 1, 0, 0, 1]
    assert b.shape == (1, 3, 2)
    grid = b.tokens.reshape(1, 3, 2, 2)
    assert grid[0, 1, :, 0].tolist() == [4.0, 5.0] and grid[0, 1, :, 1].tolist() == [0.0, 0.0]  # zero-padded slot
    assert b.token_cells.reshape(1, 3, 2, 2)[0, 1, :, 1].tolist() == [False, False]
    regions = Vocabularies.from_rows(rows).region
    assert b.patch_region[0].tolist() == regions.lookup(["A", "A", "B"]).tolist()


@PROPS
@given(store_rows())
def test_patches_are_region_pure_heldout_pure_and_lossless(data):
    rows, k, _ = data
    b = _batch(rows, k)
    B, P, T = b.shape
    assert torch.equal(unpatchify(b.tokens, b), b.values)  # every real cell lands in exactly one slot
    for i, r in enumerate(rows):
        nu, nb = r["n_units"], r["n_bins"]
        up, us = b.unit_patch[i, :nu], b.unit_slot[i, :nu]
        assert len(set(zip(up.tolist(), us.tolist(), strict=True))) == nu  # no two units share a slot
        assert (us < k).all()
        for p in range(int(b.n_patches[i])):
            members = (up == p).nonzero().flatten()
            assert len(members) >= 1
            assert len(set(b.unit_region[i, members].tolist())) == 1  # region-pure
            assert len(set(b.unit_heldout[i, members].tolist())) == 1  # held-in/held-out pure
        # patches per (region, group) = ceil(units / k): only the last patch of a group is partial
        regs, held = np.array(r["unit_regions"]), np.array(r["heldout"])
        expected = sum(-(-int(((regs == g) & (held == h)).sum()) // k) for g in set(regs) for h in (False, True))
        assert int(b.n_patches[i]) == expected
        assert int(b.token_valid[i].sum()) == expected * nb
        assert not b.token_valid[i].reshape(P, T)[:, nb:].any()
    assert not b.token_cells[~b.token_valid].any()


def test_collate_names_the_row_and_problem():
    vocabs = Vocabularies()
    row = {
        "counts": [1, 2, 3],
        "n_units": 2,
        "n_bins": 2,
        "unit_regions": ["A", "A"],
        "session": "s",
        "sample_id": "x7",
    }
    with pytest.raises(ValueError, match=r"x7: 3 values for n_units=2 × n_bins=2"):
        collate([row], vocabs, 2)
    with pytest.raises(ValueError, match="x7: exactly one of 'counts' and 'mua'"):
        collate([{**row, "mua": [0.0] * 4}], vocabs, 2)
    with pytest.raises(ValueError, match="x7: 1 unit_regions"):
        collate([{**row, "counts": [1, 2, 3, 4], "unit_regions": ["A"]}], vocabs, 2)


# ---------------------------------------------------------------- mask definitions


def _count(r, n):
    return min(max(1, round(r * n)), max(1, n - 1))


@PROPS
@given(store_rows(), st.sampled_from([*MODES, "heldout"]), st.integers(0, 1000))
def test_every_mode_matches_its_definition(data, mode, seed):
    rows, k, _ = data
    b = _batch(rows, k)
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
    b = _batch(rows, 2)
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
    b = _batch(rows, 2)
    m = mask_last_bins(b, 2)
    assert m.target[0].tolist() == [False] * 4 + [True] * 2


# ---------------------------------------------------------------- through the model's encoder


@PROPS
@given(store_rows(), st.sampled_from([*MODES, "heldout"]), st.integers(0, 1000), st.sampled_from([0.0, 1.5]))
def test_masked_cells_never_reach_the_encoder(data, mode, seed, smoothing):
    rows, k, _ = data
    vocabs = Vocabularies.from_rows(rows)
    b = collate(rows, vocabs, k)
    torch.manual_seed(0)
    cfg = ModelConfig(neurons_per_token=k, d_model=16, heads=2, decoder_d_model=16, output_smoothing=smoothing)
    model = MaskedNeuralModel(cfg, vocabs).eval()
    for table in (model.unit_embed_in, model.unit_embed_out):  # per-unit rows start at zero: make them count
        torch.nn.init.normal_(table.weight)
    mask = sample_mask(b, mode, generator=torch.Generator().manual_seed(seed))
    seen = []
    hook = model.in_proj.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        h1, _, pad = model.encode_visible(b, mask)
        out1 = model(b, mask=mask)
        # scramble every non-visible token (targets, hidden region tokens, padding) with huge counts
        hidden = ~mask.visible
        b.tokens[hidden] = torch.randint(50, 60000, b.tokens[hidden].shape).float()
        h2, _, _ = model.encode_visible(b, mask)
        out2 = model(b, mask=mask)
    hook.remove()
    assert torch.equal(h1, h2)  # the encoder's output cannot depend on anything it should not see
    # nor can any prediction (the decoder's per-bin summaries, per-unit read-outs and output smoothing use visible
    # tokens only)
    assert torch.equal(out1.log_rate, out2.log_rate) and torch.equal(out1.mua, out2.mua)
    # and what entered the encoder is exactly the visible tokens, in order, one per slot (gather, not attention)
    n_vis = mask.visible.sum(dim=1)
    assert seen[0].shape[1] == int(n_vis.max())
    for i in range(b.tokens.shape[0]):
        expect = torch.log1p(b.tokens[i][mask.visible[i]] * b.token_cells[i][mask.visible[i]])
        assert torch.equal(seen[0][i, : int(n_vis[i]), :k], expect)
        assert not seen[0][i, int(n_vis[i]) :].any()  # slots past the row's visible count carry nothing
