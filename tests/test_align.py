"""Alignment on the simulator: token store rows → region-windowed responses → projector → retrieval.

The simulator's images have known embeddings, so retrieval must beat chance by a wide margin, and which region
carries the image identity is a property of the simulated data (its per-region gains), not of the code: flipping
the gains flips the ordering.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.align.config import AlignConfig, AlignDataConfig, ProjectorConfig
from neurobridge.align.dataset import build_alignment_data, to_arrow
from neurobridge.align.embeddings import EmbeddingTable, simulation_embeddings
from neurobridge.align.examples import (
    AlignDataError,
    AlignmentSplit,
    Block,
    DimensionMismatch,
    LeakageError,
    MissingEmbeddings,
)
from neurobridge.align.experiment import run_alignment
from neurobridge.align.projector import _batches, fit_projector, info_nce, load_projector, save_projector
from neurobridge.align.responses import window_bins
from neurobridge.align.retrieval import nearest_train_reconstruction, retrieval_scores
from neurobridge.align.splits import assert_no_leak, assign_splits
from neurobridge.catalog import CatalogEntry
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest
from neurobridge.sim import SimConfig, simulate
from neurobridge.sim.tvsd import SIM_REGIONS, TvsdSimConfig, write_files

REGIONS = ["V1", "V4", "IT"]
WINDOWS = {"V1": [40, 190], "V4": [60, 210], "IT": [80, 230]}  # the simulator's latencies + response_ms
FAST = {"epochs": 40, "patience": 10}
LOCAL = {"backend": "local"}  # this file tests the data, loss and retrieval; Ray Train's path is test_align_train.py


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small MLPs: one thread is fastest, and spinning OpenMP threads only slow a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def visual_entry(name: str, root, salt: str = "neurobridge") -> CatalogEntry:
    return CatalogEntry.of(
        name=name,
        kind="nwb",
        uri=str(root / "visual"),
        ingest={
            "bin_ms": 20,
            "split": {"salt": salt},
            "window": {
                "mode": "intervals",
                "intervals": "natural_scenes_presentations",
                "align": "start_time",
                "pre_s": 0.0,
                "post_s": 0.25,
                "stimulus_column": "frame",
                "stimulus_prefix": "sim_ns",
            },
        },
    )


def simulate_visual(root, n_images: int, repeats: int, gain: tuple[float, float]) -> None:
    cfg = SimConfig(
        nwb_subjects=0,
        alf_subjects=0,
        visual_sessions=1,
        n_images=n_images,
        image_repeats=repeats,
        visual_regions=REGIONS,
        visual_latency_ms=[40.0, 60.0, 80.0],
        visual_gain=gain,
        write_truth=False,
        write_images=False,
    )
    simulate(str(root), cfg, progress=False)


@pytest.fixture(scope="module")
def store(ray_cluster, tmp_path_factory):
    """Two simulated V1/V4/IT sessions ingested through Ray: IT carries the embedding most (the simulator's
    default, gain rising along the hierarchy), and the reverse (V1 most), written with another split salt."""
    base = tmp_path_factory.mktemp("align")
    st_ = get_settings(
        store=str(base / "store"), raw_root=str(base / "raw"), mlflow_uri=f"sqlite:///{base / 'mlflow.db'}"
    )
    simulate_visual(base / "it", 500, 5, (0.7, 1.5))
    simulate_visual(base / "v1", 200, 4, (1.5, 0.4))
    for name, root, salt in (("vis_it", base / "it", "neurobridge"), ("vis_v1", base / "v1", "other")):
        report = ingest(visual_entry(name, root, salt), st_, progress=False)
        assert report.ok
    return {"settings": st_, "it": base / "it", "v1": base / "v1"}


def data_cfg(dataset: str, sim_root, **kw) -> AlignDataConfig:
    ids = [f"frame_{i:03d}" for i in range(len(np.load(sim_root / "visual/images/embeddings.npy")))]
    base = {
        "datasets": [dataset],
        "windows": WINDOWS,
        "embeddings": {"npy": str(sim_root / "visual/images/embeddings.npy"), "ids": ids, "id_prefix": "sim_ns"},
        "split": {"rule": "hash", "n_test": 100, "n_val": 50},
    }
    return AlignDataConfig.model_validate({**base, **kw})


# ---------------------------------------------------------------------------------------------------- end to end


def test_all_regions_find_the_true_image_far_above_chance_and_it_beats_v1(store, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a SQLite store is ./mlruns
    st_ = store["settings"]
    cfg = AlignConfig(
        name="sim",
        data=data_cfg("vis_it", store["it"]),
        projector=ProjectorConfig(**FAST),
        scaling=LOCAL,
        region_sets={"all": None, "V1": ["V1"], "IT": ["IT"]},
    )
    emb = simulation_embeddings(str(store["it"]), st_)  # knows the PNG paths for the figures
    result = run_alignment(cfg, st_, embeddings=emb)
    s = result.summary()
    assert s["all"]["n_candidates"] == 100 and s["all"]["image_chance1"] == pytest.approx(0.01)
    assert s["all"]["image_top1"] >= 10 * s["all"]["image_chance1"]
    assert s["all"]["image_top5"] >= s["all"]["image_top1"] and s["all"]["brain_top1"] >= 10 * 0.01
    assert s["all"]["image_top1_lo_n50"] <= s["all"]["image_top1_n50"] <= s["all"]["image_top1_hi_n50"]
    assert s["all"]["image_chance1_n50"] == pytest.approx(0.02)
    assert s["IT"]["image_top1"] > s["V1"]["image_top1"]  # the simulator gives IT the largest gain
    assert s["all"]["recon_cosine"] > s["all"]["recon_cosine_chance"] + 0.2
    assert s["all"]["recon_two_way"] > 0.8 and s["all"]["tokens_per_s"] > 0
    run = mlflow.tracking.MlflowClient(st_.mlflow_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["all.test.image_top1"] == s["all"]["image_top1"]
    arts = {a.path for a in mlflow.tracking.MlflowClient(st_.mlflow_uri).list_artifacts(result.run_id, "plots")}
    assert {"plots/all_retrieval.png", "plots/IT_reconstruction.png"} <= arts
    _registered_projectors_embed_like_the_fitted_ones(st_, result, monkeypatch)


def _registered_projectors_embed_like_the_fitted_ones(st_, result, monkeypatch):
    """The align run → a registered pyfunc (code + weights-only projectors) whose output is the fitted
    projector's, per region set; embedding windows with it is refused (it maps response vectors)."""
    import pandas as pd
    from neurobridge.align.projector import project
    from neurobridge.inference import registrable
    from neurobridge.inference.embed import EmbedConfig, embed
    from neurobridge.tracking import registry

    info = registrable.register(result.run_id, "sim-align", settings=st_)
    assert info.tags["kind"] == "align" and info.aliases == ["candidate"]
    assert float(info.tags["metric.IT.test.image_top1"]) == pytest.approx(result.summary()["IT"]["image_top1"])
    model, _ = registry.load("models:/sim-align@candidate", st_)
    assert model.metadata.get_input_schema().input_names() == ["session", "features", "region_set"]
    for name, regions in (("IT", ["IT"]), ("all", None)):
        test = result.data.select_regions(regions).test
        want = project(result.results[name].fit.model, test)
        for block, expected in zip(test.blocks, want, strict=True):
            frame = pd.DataFrame(
                {"session": block.session, "features": list(block.x.astype(float)), "region_set": name}
            )
            np.testing.assert_allclose(model.predict(frame), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(registry.RegistryError, match="align"):
        embed(EmbedConfig(model="models:/sim-align@candidate", dataset="vis_it"), st_, progress=False)
    from neurobridge.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("NB_STORE", st_.store)
    monkeypatch.setenv("NB_MLFLOW_URI", st_.mlflow_uri)
    out = CliRunner().invoke(app, ["registry", "load", "models:/sim-align@candidate"])
    assert out.exit_code == 0 and "projector IT: regions ['IT']" in out.output, out.output


def test_region_ordering_comes_from_the_data_not_the_code(store):
    """Same code, the simulator's gains reversed (V1 strongest): now V1 beats IT."""
    cfg = AlignConfig(
        data=data_cfg("vis_v1", store["v1"], split={"rule": "hash", "n_test": 50, "n_val": 20}),
        projector=ProjectorConfig(**FAST),
        scaling=LOCAL,
        region_sets={"V1": ["V1"], "IT": ["IT"]},
    )
    s = run_alignment(cfg, store["settings"], track=False, figures=False).summary()
    assert s["V1"]["image_top1"] > s["IT"]["image_top1"]


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


def test_reconstruction_by_nearest_training_image_scores_against_chance_and_ceiling():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 16))
    true = train[:20] + 0.1 * rng.standard_normal((20, 16))  # test images close to training images
    good, nearest = nearest_train_reconstruction(true, true, train)
    assert (nearest == np.arange(20)).all() and good["recon_two_way"] == 1.0
    assert good["recon_cosine"] == pytest.approx(good["recon_cosine_ceiling"])
    bad, _ = nearest_train_reconstruction(rng.standard_normal((20, 16)), true, train)
    assert bad["recon_cosine"] < good["recon_cosine"] and abs(bad["recon_cosine_chance"]) < 0.1


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


# ---------------------------------------------------------------------------------------------------- encoder


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


def test_the_demo_step_aligns_every_region_and_prints_retrieval_beside_chance(store, tmp_path, monkeypatch):
    from neurobridge.workflows.demo_align import DemoAlignOptions, run_align_demo
    from rich.console import Console

    monkeypatch.chdir(tmp_path)  # MLflow artifacts
    console = Console(record=True, width=140)
    options = DemoAlignOptions(dataset="vis_v1", n_test=40, windows=WINDOWS)
    result = run_align_demo(store["settings"], str(store["v1"]), options, console)
    assert set(result.results) == {"all", "V1", "V4", "IT"}
    text = console.export_text()
    assert "retrieval among 40 test images" in text and "0.025" in text  # chance beside each row
