"""The THINGS-fMRI look-alike: files in the real layouts, noise ceilings that the data bear out, ratings whose
reliability follows the rater noise, the oracle, and MUA of the same images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers.fmri import small_config
from neurobridge.catalog import CatalogEntry
from neurobridge.config import get_settings
from neurobridge.sim.fmri import ceiling_snr
from neurobridge.sim.fmri_writers import simulate_fmri
from neurobridge.sim.things import ThingsSimConfig
from neurobridge.sources import discover, open_source


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("simfmri") / "sim_things"
    cfg = small_config(sessions=6, things=ThingsSimConfig(concepts=80, train_images=2, test_concepts=80))
    return root, simulate_fmri(root, cfg, mua=True), cfg


def test_the_table_is_a_pandas_frame_with_voxel_ids_and_one_column_per_trial(sim):
    root, summary, _ = sim
    frame = pd.read_hdf(root / "fmri" / "sub-01_ResponseData.h5", "ResponseData")
    voxels = pd.read_csv(root / "fmri" / "sub-01_VoxelMetadata.csv")
    trials = pd.read_csv(root / "fmri" / "sub-01_StimulusMetadata.csv")
    assert list(frame.columns) == ["voxel_id", *trials["trial_id"].tolist()]
    assert frame["voxel_id"].tolist() == voxels["voxel_id"].tolist()
    assert frame.shape == (summary["subjects"][0]["voxels"], len(trials) + 1)
    assert set(trials["trial_type"]) == {"train", "test"}
    assert {"nc_singletrial", "nc_testset", "prf-eccentricity", "V1", "lFFA", "IT", "glasser-IT"} <= set(voxels)


def test_noise_ceilings_are_what_the_simulated_repeats_show(sim):
    """NSD/THINGS estimate from the data: ncsnr² = (var of image means − noise var / n) / noise var."""
    root, _, cfg = sim
    frame = pd.read_hdf(root / "fmri" / "sub-01_ResponseData.h5", "ResponseData")
    voxels = pd.read_csv(root / "fmri" / "sub-01_VoxelMetadata.csv")
    trials = pd.read_csv(root / "fmri" / "sub-01_StimulusMetadata.csv")
    test = trials[trials["trial_type"] == "test"].sort_values(["stimulus", "session"])
    n = cfg.sessions
    x = frame[test["trial_id"].tolist()].to_numpy().reshape(len(frame), -1, n)  # [voxels, images, repeats]
    noise = x.var(axis=2, ddof=1).mean(axis=1)
    signal = np.maximum(x.mean(axis=2).var(axis=1, ddof=1) - noise / n, 0)
    snr2 = signal / noise
    estimated = 100 * snr2 / (snr2 + 1 / n)
    for roi in ("V1", "lFFA"):
        sel = voxels[roi].to_numpy() > 0
        assert estimated[sel].mean() == pytest.approx(voxels.loc[sel, "nc_testset"].mean(), rel=0.25), roi
    assert ceiling_snr(np.array([50.0]), 1)[0] == pytest.approx(1.0)


def test_ratings_are_as_reliable_as_their_rater_noise_allows(sim):
    root, _, _ = sim
    rel = pd.read_csv(root / "things" / "property_reliability.tsv", sep="\t").set_index("property")["split_half_r"]
    assert rel["size"] > rel["preciousness"] > rel["arousal"]
    ratings = pd.read_csv(root / "things" / "properties.tsv", sep="\t")
    assert ratings["uniqueID"].is_unique and len(ratings) == 80


def test_the_truth_holds_ceilings_and_the_oracle(sim):
    root, _, _ = sim
    truth = json.loads((root / "truth" / "fmri" / "sub-01.json").read_text())
    assert truth["rois"]["IT"]["mean_nc_testset"] == pytest.approx(50, rel=0.2)
    lffa = truth["oracle_r2"]["lFFA"]
    assert max(lffa, key=lffa.get) == "size"  # the property the simulator put there
    assert truth["bayes_r2"]["lFFA"]["size"] >= lffa["size"] - 1e-9  # knowing the test averaging can only help


def test_the_mua_shows_the_same_test_images(sim, tmp_path):
    root, _, _ = sim
    entry = CatalogEntry.of(
        name="mua",
        kind="tvsd",
        uri=str(root / "mua"),
        tvsd={
            "datalad": {"url": None},
            "regions": {
                "monkeyN": [
                    {"first": 1, "last": 32, "region": "V1"},
                    {"first": 33, "last": 48, "region": "V4"},
                    {"first": 49, "last": 64, "region": "IT"},
                ]
            },
        },
        ingest={"bin_ms": 10, "window": {"pre_s": 0.0, "post_s": 0.2, "stimulus_prefix": "things"}},
    )
    settings = get_settings(store=str(tmp_path / "store"), raw_root=str(root))
    (item,) = discover(entry, settings)
    with open_source(entry, item, settings) as src:
        mua_test = set(src.test_ids.tolist())
    trials = pd.read_csv(root / "fmri" / "sub-01_StimulusMetadata.csv")
    test = trials[trials["trial_type"] == "test"]
    assert mua_test == set(("things/" + test["concept"] + "/" + test["stimulus"]).tolist())


def test_a_seed_gives_the_same_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        simulate_fmri(out, small_config(volumes=False), mua=False)
    assert (a / "fmri" / "sub-01_StimulusMetadata.csv").read_bytes() == (
        b / "fmri" / "sub-01_StimulusMetadata.csv"
    ).read_bytes()
    fa = pd.read_hdf(a / "fmri" / "sub-01_ResponseData.h5")
    pd.testing.assert_frame_equal(fa, pd.read_hdf(b / "fmri" / "sub-01_ResponseData.h5"))
