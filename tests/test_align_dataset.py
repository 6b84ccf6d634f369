"""align/dataset: alignment examples from the token store: responses pooled over region windows, test repeats
averaged, splits that never share an image, embedding gaps and mismatches named, TVSD's official test images kept."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from helpers.align import FAST, data_cfg
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.align.config import AlignDataConfig, ProjectorConfig
from neurobridge.align.dataset import (
    AlignDataError,
    AlignmentSplit,
    Block,
    DimensionMismatch,
    MissingEmbeddings,
    assert_no_leak,
    assign_splits,
    build_alignment_data,
    to_arrow,
)
from neurobridge.align.embeddings import EmbeddingTable, simulation_embeddings
from neurobridge.align.examples import LeakageError
from neurobridge.align.projector import fit_projector
from neurobridge.align.responses import window_bins
from neurobridge.align.retrieval import retrieval_scores
from neurobridge.catalog import CatalogEntry
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest
from neurobridge.sim.tvsd import SIM_REGIONS, TvsdSimConfig, write_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(align_store):
    """This file's store: two simulated V1/V4/IT sessions, vis_it and vis_v1 (conftest)."""
    return align_store


def test_test_repeats_are_averaged_and_no_test_image_is_seen_in_training(store):
    data = build_alignment_data(data_cfg("vis_it", store["it"]), store["settings"])
    (train,), (test,) = data.train.blocks, data.test.blocks
    assert len(test) == 100 and (test.n_repeats == 5).all()
    assert (train.n_repeats == 1).all() and len(train) == 5 * len(set(train.stimulus_id))
    assert not data.train.stimuli & data.test.stimuli and not data.val.stimuli & data.test.stimuli
    assert data.counts["train_stimuli"] + data.counts["val_stimuli"] + data.counts["test_stimuli"] == 500
    again = build_alignment_data(data_cfg("vis_it", store["it"]), store["settings"])
    assert again.test.stimuli == data.test.stimuli  # the split is deterministic
    arrow = to_arrow(data.train)
    assert arrow.num_rows == len(train) and len(arrow.column("x")[0]) == train.x.shape[1]


def test_features_equal_an_independent_pooling_of_the_stored_rows(store):
    """IT units, bins whose centres lie in 80-230 ms, mean, sqrt, then the test repeats averaged."""
    st_ = store["settings"]
    data = build_alignment_data(data_cfg("vis_it", store["it"], regions=["IT"]), st_)
    rows = pl.read_parquet(f"{st_.store}/tokens/vis_it/*/part-*.parquet")
    (test,) = data.test.blocks
    sid = test.stimulus_id[0]
    sel = rows.filter(pl.col("stimulus_id") == sid)
    n_units, n_bins = sel["n_units"][0], sel["n_bins"][0]
    it = np.array(sel["unit_regions"][0].to_list()) == "IT"
    grids = np.stack([np.asarray(c, dtype=np.float64).reshape(n_units, n_bins) for c in sel["counts"].to_list()])
    centres = (np.arange(n_bins) + 0.5) * 20
    window = (centres >= 80) & (centres < 230)
    expected = np.sqrt(grids[:, it][:, :, window].mean(axis=2)).mean(axis=0)
    assert len(sel) == 5 and np.allclose(test.x[0], expected, atol=1e-5)
    assert data.sessions[test.session].windows == {"IT": (80.0, 230.0)}


def test_missing_embeddings_are_counted_and_stop_the_build_above_the_limit(store):
    st_ = store["settings"]
    full = simulation_embeddings(str(store["it"]), st_)
    keep = np.arange(len(full.ids)) % 50 != 0  # 10 of 500 stimuli (2 %) lose their embedding
    table = EmbeddingTable(full.ids[keep], full.vectors[keep])
    data = build_alignment_data(data_cfg("vis_it", store["it"], max_missing_fraction=0.05), st_, table)
    assert data.counts["missing_embeddings"] == 10 and data.counts["presentations_without_embedding"] == 50
    assert not set(full.ids[~keep]) & (data.train.stimuli | data.val.stimuli | data.test.stimuli)
    with pytest.raises(MissingEmbeddings, match="10 of 500 stimuli have no embedding"):
        build_alignment_data(data_cfg("vis_it", store["it"], max_missing_fraction=0.01), st_, table)


def test_an_embedding_dimension_mismatch_is_a_clear_error(store):
    with pytest.raises(DimensionMismatch, match="dimension 16, but data.expected_dim is 512"):
        build_alignment_data(data_cfg("vis_it", store["it"], expected_dim=512), store["settings"])


def test_a_store_split_that_puts_one_image_in_two_splits_is_refused(store):
    """The two datasets show the same image ids but were split with different salts: training on one and
    testing on the other would test on images seen in training."""
    cfg = data_cfg("vis_it", store["it"], datasets=["vis_it", "vis_v1"], split={"rule": "store"})
    with pytest.raises(LeakageError, match="in more than one split"):
        build_alignment_data(cfg, store["settings"])


# ---------------------------------------------------------------------------------------------------- TVSD


@pytest.fixture(scope="module")
def tvsd(ray_cluster, tmp_path_factory):
    """Scaled-down TVSD files (two monkeys, MUA, official test images shown 10 times) ingested through Ray."""
    base = tmp_path_factory.mktemp("tvsd_align")
    out = base / "raw" / "tvsd"
    write_files(out, TvsdSimConfig(n_train=120, n_test=12, test_repeats=10))
    regions = {m: [{"first": a, "last": b, "region": r} for a, b, r in v] for m, v in SIM_REGIONS.items()}
    window = {"mode": "intervals", "pre_s": 0.0, "post_s": 0.2}
    entry = CatalogEntry.of(
        name="sim_tvsd", kind="tvsd", uri=str(out), tvsd={"regions": regions}, ingest={"bin_ms": 10, "window": window}
    )
    st_ = get_settings(store=str(base / "store"), raw_root=str(base / "raw"))
    assert ingest(entry, st_, progress=False).ok
    return st_, out.parent / "truth" / "tvsd"


def test_tvsd_keeps_the_official_test_images_and_uses_the_published_region_windows(tvsd):
    st_, truth = tvsd
    ids = json.loads((truth / "stimulus_ids.json").read_text())
    cfg = AlignDataConfig(
        datasets=["sim_tvsd"],
        embeddings={"npy": str(truth / "embeddings.npy"), "ids": str(truth / "stimulus_ids.json")},
    )
    data = build_alignment_data(cfg, st_)
    official = {s for s in ids if "/simtest" in s}
    assert data.test.stimuli == official and len(data.test.blocks) == 2  # one block per monkey
    for info in data.sessions.values():  # the TVSD windows (preset for sim_tvsd), 10 ms bins
        assert info.windows == {"V1": (25.0, 125.0), "V4": (50.0, 150.0), "IT": (75.0, 175.0)}
        assert info.cells == 64 * 10
    for b in data.test.blocks:
        assert (b.n_repeats >= 8).all() and (b.n_repeats <= 10).all()  # repeats minus failed fixations
    fit = fit_projector(data.train, data.val, ProjectorConfig(**FAST))
    s = retrieval_scores(*_project(fit.model, data.test.blocks[0]))
    assert s["image_top1"] >= 3 * s["image_chance1"]


def _project(model, block):
    with torch.no_grad():
        return model.eval()(torch.as_tensor(block.x), block.session).numpy(), block.y


# ---------------------------------------------------------------------------------------------------- units


def test_window_bins_take_the_bins_whose_centres_fall_in_the_window():
    assert window_bins((25, 125), 20, 10, 0).tolist() == list(range(2, 12))  # centres 25..115 ms
    assert window_bins((0, 40), 10, 20, 100).tolist() == [5, 6]  # rows start 100 ms before onset
    assert window_bins((300, 400), 10, 20, 0).tolist() == []


@settings(max_examples=40, deadline=None)
@given(n=st.integers(5, 200), n_test=st.integers(1, 3), n_val=st.integers(0, 2), salt=st.text(max_size=5))
def test_hash_splits_are_deterministic_disjoint_and_exact(n, n_test, n_val, salt):
    ids = np.array([f"img/{i}" for i in range(n)])
    cfg = AlignDataConfig(
        datasets=["x"],
        embeddings={"npy": "e.npy", "ids": []},
        split={"rule": "hash", "n_test": n_test, "n_val": n_val, "salt": salt},
    )
    if n_test + n_val >= n:
        with pytest.raises(AlignDataError, match="leave none of the"):
            assign_splits(ids, {}, cfg)
        return
    a = assign_splits(ids, {}, cfg)
    b = assign_splits(ids[::-1], {}, cfg)
    assert a == b and set(a) == set(ids.tolist())
    labels = list(a.values())
    assert labels.count("test") == n_test and labels.count("val") == n_val


def test_assert_no_leak_names_the_image_in_two_splits():
    def split(name, ids):
        return AlignmentSplit(
            name, [Block("s", np.zeros((len(ids), 2)), np.zeros((len(ids), 2)), np.array(ids), np.ones(len(ids), int))]
        )

    assert_no_leak(split("train", ["a", "b"]), split("test", ["c"]))
    with pytest.raises(LeakageError, match="'b' is in both train and test"):
        assert_no_leak(split("train", ["a", "b"]), split("test", ["b"]))
