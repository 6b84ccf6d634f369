"""align/encoder: responses through a frozen pretrained masked model, each region's token latents pooled over its
response window; the randomly initialised control is another network."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from helpers.align import data_cfg
from neurobridge.align.dataset import build_alignment_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(align_store):
    """This file's store: two simulated V1/V4/IT sessions, vis_it and vis_v1 (conftest)."""
    return align_store


def test_a_frozen_encoder_pools_each_regions_latents_over_its_window(store, tmp_path):
    """Features = the encoder's token latents of IT patches at the bins of IT's window, averaged: checked
    against the model's own region and time indices of each token."""
    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.models.config import ModelConfig
    from neurobridge.models.ndt import MaskedNeuralModel
    from neurobridge.models.patching import collate
    from neurobridge.models.vocab import Vocabularies
    from neurobridge.store.rows import table_rows

    st_ = store["settings"]
    rows = pl.read_parquet(f"{st_.store}/tokens/vis_it/*/part-*.parquet")
    first = table_rows(rows.head(8).to_arrow())
    vocabs = Vocabularies.from_rows(first)
    torch.manual_seed(0)
    model = MaskedNeuralModel(ModelConfig(neurons_per_token=4, d_model=16, depth=1, heads=2), vocabs)
    save_checkpoint(str(tmp_path / "model.pt"), model, vocabs)
    cfg = data_cfg(
        "vis_it", store["it"], regions=["V1", "IT"], encoder={"checkpoint": str(tmp_path / "model.pt"), "device": "cpu"}
    )
    data = build_alignment_data(cfg, st_)
    (test,) = data.test.blocks
    feature_regions = data.sessions[test.session].feature_regions
    assert test.x.shape[1] == 2 * 16 and sorted(feature_regions.tolist()) == ["IT"] * 16 + ["V1"] * 16
    sid = test.stimulus_id[0]
    sel = table_rows(rows.filter(pl.col("stimulus_id") == sid).to_arrow())
    batch = collate(sel, vocabs, 4)
    with torch.no_grad():
        lat = model.eval().encode(batch)
    it = vocabs.region.lookup(["IT"])[0]
    centre = (batch.token_time + 0.5) * 20
    m = (lat.token_valid & (batch.token_region == it) & (centre >= 80) & (centre < 230)).unsqueeze(-1).float()
    expected = ((lat.tokens * m).sum(1) / m.sum(1)).mean(0).numpy()
    assert np.allclose(test.x[0, feature_regions == "IT"], expected, atol=1e-5)
    random = cfg.encoder.model_copy(update={"init": "random", "seed": 1})
    control = build_alignment_data(cfg.model_copy(update={"encoder": random}), st_)
    assert not np.allclose(control.test.blocks[0].x, test.x)  # the untrained control is another network
