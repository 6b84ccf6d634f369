"""align/projector: symmetric InfoNCE (repeats of an image are positives, not false negatives), batches sharded
evenly and disjointly across ranks, and a projector saved weights-only that reloads to the same embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.align.config import ProjectorConfig
from neurobridge.align.examples import AlignmentSplit, Block, DimensionMismatch
from neurobridge.align.projector import _batches, fit_projector, info_nce, load_projector, save_projector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_info_nce_is_low_for_aligned_pairs_and_counts_repeats_as_positives():
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1)
    aligned = info_nce(e, e, 20.0)
    shuffled = info_nce(e[torch.randperm(16, generator=g)], e, 20.0)
    assert aligned < shuffled and info_nce(e, e, 20.0) == pytest.approx(float(info_nce(e, e, 20.0)))
    twice = torch.cat([e[:4], e[:4]])  # the same 4 images presented twice
    ids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    assert info_nce(twice, twice, 20.0, ids) < info_nce(twice, twice, 20.0)  # repeats are not false negatives
    assert info_nce(e, e.flip(0), 5.0) == pytest.approx(float(info_nce(e.flip(0), e, 5.0)), rel=1e-5)  # symmetric


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(2, 40), min_size=1, max_size=4), batch=st.integers(2, 16), world=st.integers(1, 3))
def test_batches_shard_each_epoch_evenly_and_disjointly_across_ranks(sizes, batch, world):
    split = AlignmentSplit(
        "train",
        [
            Block(f"s{i}", np.zeros((n, 1)), np.zeros((n, 1)), np.arange(n).astype(str), np.ones(n, int))
            for i, n in enumerate(sizes)
        ],
    )
    shards = [_batches(split, batch, np.random.default_rng(1), r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # DDP: every rank takes the same number of steps
    seen = [(bi, int(i)) for s in shards for bi, rows in s for i in rows]
    assert len(seen) == len(set(seen))


def test_a_saved_projector_loads_without_unpickling_and_gives_the_same_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)).astype(np.float32), rng.standard_normal((40, 4)).astype(np.float32)
    split = AlignmentSplit("train", [Block("s", x, y, np.arange(40).astype(str), np.ones(40, int))])
    fit = fit_projector(split, None, ProjectorConfig(epochs=2, batch_size=8))
    save_projector(fit.model, str(tmp_path / "p.pt"))
    again = load_projector(str(tmp_path / "p.pt"))
    with torch.no_grad():
        assert torch.allclose(fit.model(torch.as_tensor(x), "s"), again(torch.as_tensor(x), "s"))
    with pytest.raises(DimensionMismatch, match="7 features, the projector expects 6"):
        again(torch.zeros(2, 7), "s")
