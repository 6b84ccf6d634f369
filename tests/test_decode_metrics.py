"""Decoding's scores and building blocks: top-k with chance, R²/r with the ratings' ceilings, labels, volumes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from neurobridge.config import get_settings
from neurobridge.decode.config import DecodeConfig, VolumeConfig
from neurobridge.decode.labels import LabelError, Labels, _ratings, path_concept
from neurobridge.decode.metrics import concept_scores, pearson_per_column, property_scores, r2_per_column, topk_curve
from neurobridge.decode.nets import CNN3D, ViT3D, VolumeDecoder, VolumeLayout
from pydantic import ValidationError


@given(
    arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(2, 12)), elements=st.integers(-3, 3)),
    st.integers(0, 10_000),
)
def test_topk_counts_an_example_when_fewer_than_k_classes_score_at_least_its_own(logits, seed):
    target = np.random.default_rng(seed).integers(0, logits.shape[1], len(logits))
    curve = topk_curve(logits, target, logits.shape[1])
    for k in range(1, logits.shape[1] + 1):
        brute = np.mean([(row >= row[t]).sum() <= k for row, t in zip(logits, target, strict=True)])
        assert curve[k - 1] == pytest.approx(brute)  # ties count against the example: constant scores are chance-like
    assert curve[-1] == 1.0 and np.all(np.diff(curve) >= 0)


def test_concept_scores_put_chance_beside_each_k():
    logits = np.eye(50)[:10] * 5
    s = concept_scores(logits, np.arange(10), [1, 5, 10])
    assert s["top1"] == 1.0 and s["chance1"] == pytest.approx(1 / 50) and s["chance10"] == pytest.approx(10 / 50)


def test_r2_and_r_against_the_ratings_reliability():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(200, 2))
    pred = np.stack([y[:, 0], 0.5 * y[:, 1] + 3], axis=1)  # exact, and a scaled-shifted copy
    r2, r = r2_per_column(y, pred), pearson_per_column(y, pred)
    assert r2[0] == pytest.approx(1.0) and r2[1] < 0 and r[1] == pytest.approx(1.0)
    s = property_scores(y, pred, ["size", "arousal"], {"size": 0.81, "arousal": 0.36})
    assert s["best_property"] == "size" and s["properties"]["arousal"]["r_ceiling"] == pytest.approx(0.6)


def test_concepts_come_from_the_table_else_the_things_path():
    labels = Labels(concept_of={"sim_ns/frame_001": "cat"})
    got = labels.concepts(["things/aardvark/aardvark_01b.jpg", "sim_ns/frame_001", "sim_ns/frame_002"])
    assert got.tolist() == ["aardvark", "cat", "sim_ns/frame_002"]
    assert path_concept("a/b") == "a/b"


def test_a_ratings_file_without_its_concept_column_or_with_a_concept_twice_is_named(tmp_path):
    path = tmp_path / "properties.tsv"
    settings = get_settings(store=str(tmp_path))
    pd.DataFrame({"Word": ["a", "b"], "size": [1.0, 2.0]}).to_csv(path, sep="\t", index=False)
    cfg = DecodeConfig.model_validate(
        {"data": {"datasets": ["x"]}, "tasks": ["properties"], "labels": {"properties": str(path)}}
    ).labels
    with pytest.raises(LabelError, match=r"properties.tsv: no concept column 'uniqueID'"):
        _ratings(cfg, settings)
    pd.DataFrame({"uniqueID": ["a", "a"], "size": [1.0, 2.0]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(LabelError, match="concept 'a' is listed twice"):
        _ratings(cfg, settings)


def test_configs_refuse_tasks_without_their_inputs():
    with pytest.raises(ValidationError, match="retrieval task needs data.embeddings"):
        DecodeConfig.model_validate({"data": {"datasets": ["x"]}, "tasks": ["retrieval"]})
    with pytest.raises(ValidationError, match="needs encoder.checkpoint"):
        DecodeConfig.model_validate({"data": {"datasets": ["x"]}, "tasks": ["concept"], "decoders": ["encoder"]})
    with pytest.raises(ValidationError, match="multiple of heads"):
        VolumeConfig(embed_dim=50, heads=4)


def test_volumes_put_each_voxel_at_its_coordinates_and_attention_shares_sum_to_one():
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(0, 7, size=(80, 3)), axis=0)
    regions = np.where(coords[:, 0] < 3, "V1", "IT")
    cfg = VolumeConfig(patch=3, embed_dim=16, heads=2, depth=1, margin=1)
    layout = VolumeLayout(coords, regions, cfg)
    assert all(s % 3 == 0 for s in layout.shape)
    x = torch.as_tensor(rng.normal(size=(4, len(coords))), dtype=torch.float32)
    vol = layout.volumes(x)
    lo = coords.min(axis=0) - 1
    c = coords[5] - lo
    assert vol[2, 0, c[0], c[1], c[2]] == x[2, 5] and int((vol != 0).sum()) == 4 * len(coords)
    names, share = layout.patch_regions(3)
    assert names == ["IT", "V1"] and np.allclose(share.sum(axis=1)[share.sum(axis=1) > 0], 1.0)
    assert ViT3D(layout.shape, cfg, 7)(vol).shape == (4, 7) and CNN3D([4, 8], 7, 0.0)(vol).shape == (4, 7)
    model = VolumeDecoder({"s": layout}, "vit3d", cfg, 5)
    shares = model.attention_shares(x, "s")
    assert set(shares) == {"IT", "V1"} and sum(shares.values()) == pytest.approx(1.0)
