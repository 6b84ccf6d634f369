"""models/patching: store rows → a padded batch of neuron patches that are region-pure and held-out-pure,
losslessly; a row that does not add up is named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import PROPS, batch_of, store_rows
from hypothesis import given
from neurobridge.models.patching import collate, unpatchify
from neurobridge.models.vocab import Vocabularies


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
    b = batch_of(rows, 2)
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
    b = batch_of(rows, k)
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
