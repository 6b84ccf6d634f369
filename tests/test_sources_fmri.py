"""The fmri source kind: a simulated THINGS-fMRI subject in both layouts → rows that equal an independent pandas
reading of the files; the table and the volumes give identical rows; splits by image; side tables; bad inputs fail
alone, naming the file and the problem."""

from __future__ import annotations

import pickle
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import polars as pl
import pytest
from helpers.fmri import ROIS, fmri_entry, ingest_local, small_config
from hypothesis import given
from hypothesis import strategies as st
from neurobridge.catalog import CatalogEntry
from neurobridge.config import get_settings
from neurobridge.sim.fmri_writers import simulate_fmri
from neurobridge.sources.io.pandas_hdf import pickled_labels
from neurobridge.store.card import load_item_records


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmri") / "sim_things"
    summary = simulate_fmri(root, small_config(), mua=False)
    return root, summary


@pytest.fixture(scope="module")
def both(sim, tmp_path_factory):
    """The subject ingested twice under one name: table layout and volume layout (two versions)."""
    root, _ = sim
    settings = get_settings(store=str(tmp_path_factory.mktemp("store")), raw_root=str(root))
    table = ingest_local(fmri_entry(root), settings)
    volume = ingest_local(fmri_entry(root, layout="volume"), settings)
    read = lambda r: pl.read_parquet(f"{r.path}/part-*.parquet").sort("sample_id")  # noqa: E731
    return {"table": table, "volume": volume, "rows": read(table), "vrows": read(volume), "root": root}


def test_table_and_volume_layouts_give_identical_rows(both):
    assert both["table"].ok and both["volume"].ok, (both["table"].failed, both["volume"].failed)
    assert both["table"].version != both["volume"].version  # the layout is part of the version
    assert len(both["rows"]) == 240
    assert both["rows"].equals(both["vrows"])


def test_rows_equal_an_independent_pandas_reading_of_the_table(both):
    """pandas reads the HDF table and the two CSVs; the expected betas are computed from those alone."""
    root, rows = both["root"] / "fmri", both["rows"]
    table = pd.read_hdf(root / "sub-01_ResponseData.h5")
    voxels = pd.read_csv(root / "sub-01_VoxelMetadata.csv")
    trials = pd.read_csv(root / "sub-01_StimulusMetadata.csv")
    member = voxels[ROIS].to_numpy() > 0
    keep = member.any(axis=1)
    region = np.array(ROIS)[member.argmax(axis=1)][keep]  # the first listed ROI wins (lFFA voxels are also IT)
    ids = voxels["voxel_id"].to_numpy()[keep]
    order = np.lexsort((ids, region))  # the token grid: by region, then numerically by id
    betas = table.loc[keep, trials["trial_id"].tolist()].to_numpy(np.float32)[order]  # [units, trials]
    first = rows.row(0, named=True)
    assert first["unit_ids"] == [f"sim_fmri/sub-01/{i}" for i in ids[order]]
    assert first["unit_regions"] == region[order].tolist()
    assert (rows["n_bins"] == 1).all() and rows["counts"].null_count() == len(rows)
    got = np.stack(rows["mua"].to_numpy())  # rows sorted by sample id = by trial id
    np.testing.assert_array_equal(got, betas.T)
    expect_ids = "things/" + trials["concept"] + "/" + trials["stimulus"]
    assert rows["stimulus_id"].to_list() == expect_ids.tolist()
    assert rows["sample_id"][0].endswith("/trial_00000")


def test_test_images_stay_test_repeat_and_no_image_is_in_two_splits(both):
    rows = both["rows"]
    per = rows.group_by("stimulus_id").agg(pl.col("split").n_unique().alias("n"), pl.col("repeat").max().alias("r"))
    assert (per["n"] == 1).all()
    test = rows.filter(pl.col("split") == "test")
    assert test["stimulus_id"].str.ends_with("s.jpg").all() and len(test) == 20 * 3
    assert sorted(test.group_by("stimulus_id").agg(pl.col("repeat").sort())["repeat"][0].to_list()) == [1, 2, 3]
    assert set(rows["split"]) == {"train", "val", "test"}  # val carved out of training images, by image


def test_units_table_holds_coordinates_ceilings_and_every_roi(both):
    root, report = both["root"] / "fmri", both["table"]
    units = pl.read_parquet(f"{report.path}/units/*.parquet")
    voxels = pd.read_csv(root / "sub-01_VoxelMetadata.csv").set_index("voxel_id")
    assert units["unit_id"].to_list() == both["rows"]["unit_ids"][0].to_list()
    v = voxels.loc[units["raw_id"].cast(pl.Int64).to_list()]
    np.testing.assert_array_equal(units["x"].to_numpy(), v["voxel_x"].to_numpy())
    np.testing.assert_allclose(units["nc_testset"].to_numpy(), v["nc_testset"].to_numpy(), rtol=1e-6)
    lffa = units.filter(pl.col("region") == "lFFA")
    assert len(lffa) == 20 and all(r.to_list() == ["lFFA", "IT"] for r in lffa["rois"])
    stimuli = pl.read_parquet(f"{report.path}/stimuli/*.parquet")
    assert (stimuli["stimulus_id"].str.split("/").list.get(1) == stimuli["concept"]).all()
    assert stimuli.filter(pl.col("split") == "test")["presentations"].to_list() == [3] * 20


def test_noise_ceiling_rule_and_roi_priority(sim, tmp_path):
    root, _ = sim
    settings = get_settings(store=str(tmp_path / "store"), raw_root=str(root))
    rep = ingest_local(fmri_entry(root, rois=["IT", "lFFA"], noise_ceiling={"min": 45.0}), settings)
    units = pl.read_parquet(f"{rep.path}/units/*.parquet")
    assert set(units["region"]) == {"IT"}  # IT listed first: lFFA voxels (also IT) take its name
    assert (units["nc_testset"] >= 45.0).all() and 0 < len(units) < 50
    assert rep.card.counts.rows == 240


@given(st.lists(st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=12)), min_size=1, max_size=300))
def test_pickled_label_arrays_are_read_from_opcodes_without_unpickling(labels):
    raw = pickle.dumps(np.array(labels, dtype=object), protocol=5)
    assert pickled_labels(raw) in (labels, None)  # None only for what the opcodes cannot say (memoised repeats)
    if len(set(map(repr, labels))) == len(labels):
        assert pickled_labels(raw) == labels


# -- bad input: each fails its item with the file and the problem named -------------------------------------------


@pytest.fixture()
def copy(sim, tmp_path):
    root, _ = sim
    dst = tmp_path / "sim_things"
    shutil.copytree(root, dst)
    return dst


def _failed(entry: CatalogEntry, tmp_path) -> str:
    rep = ingest_local(entry, get_settings(store=str(tmp_path / "store"), raw_root=str(tmp_path)))
    assert len(rep.failed) == 1, "the bad item must fail"
    return rep.failed[0].error


def test_a_table_whose_voxel_count_disagrees_with_its_metadata(copy, tmp_path):
    path = copy / "fmri" / "sub-01_VoxelMetadata.csv"
    pd.read_csv(path).iloc[:-1].to_csv(path, index=False)
    err = _failed(fmri_entry(copy), tmp_path)
    assert "sub-01_ResponseData.h5" in err and "voxel rows" in err and "sub-01_VoxelMetadata.csv" in err


def test_a_volume_whose_affine_or_shape_disagrees_with_the_mask(copy, tmp_path):
    run = next((copy / "fmri" / "betas_vol").rglob("*run-02_betas.nii.gz"))
    img = nib.load(run)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine * np.diag([1.5, 1, 1, 1])), run)
    err = _failed(fmri_entry(copy, layout="volume"), tmp_path)
    assert run.name in err and "differs from the brain mask" in err
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), run)
    assert run.name in _failed(fmri_entry(copy, layout="volume"), tmp_path / "again")


def test_a_stimulus_listed_twice_with_different_concepts(copy, tmp_path):
    path = copy / "fmri" / "sub-01_StimulusMetadata.csv"
    df = pd.read_csv(path)
    twice = df["stimulus"].iloc[0]
    df.loc[df.index[-1], ["stimulus", "concept"]] = [twice, "somethingelse"]
    df.to_csv(path, index=False)
    err = _failed(fmri_entry(copy), tmp_path)
    assert "sub-01_StimulusMetadata.csv" in err and twice in err and "different concepts" in err


def test_an_roi_name_that_does_not_exist_lists_the_ones_that_do(copy, tmp_path):
    err = _failed(fmri_entry(copy, rois=["IT", "FFA"]), tmp_path)
    assert "sub-01_VoxelMetadata.csv" in err and "'FFA'" in err
    assert "V1, hV4, lFFA, IT" in err and "glasser-* parcels" in err


def test_nan_betas_are_counted_and_fail_the_item_above_the_allowed_fraction(tmp_path):
    root = tmp_path / "sim_things"
    simulate_fmri(root, small_config(nan_fraction=0.02, volumes=False), mua=False)
    err = _failed(fmri_entry(root, max_nan_fraction=0.01), tmp_path)
    assert "sub-01_ResponseData.h5" in err and "NaN betas" in err and "max_nan_fraction 0.01" in err
    rep = ingest_local(fmri_entry(root, max_nan_fraction=0.05), get_settings(store=str(tmp_path / "ok")))
    assert rep.ok and rep.card is not None
    rows = pl.read_parquet(f"{rep.path}/part-*.parquet")
    values = np.concatenate(rows["mua"].to_numpy())
    assert not np.isnan(values).any()  # written as nan_fill
    (record,) = load_item_records(rep.path, get_settings(store=str(tmp_path / "ok"))).values()
    assert record.stats["nan_cells"] == int((values == 0.0).sum()) > 0.015 * len(values)  # every one counted


def test_one_bad_subject_never_kills_the_others(tmp_path):
    root = tmp_path / "sim_things"
    simulate_fmri(root, small_config(subjects=2, volumes=False), mua=False)
    path = root / "fmri" / "sub-02_StimulusMetadata.csv"
    pd.read_csv(path).drop(columns=["concept"]).to_csv(path, index=False)
    rep = ingest_local(fmri_entry(root), get_settings(store=str(tmp_path / "store")))
    assert [r.rel for r in rep.failed] == ["sub-02_ResponseData.h5"]
    assert "sub-02_StimulusMetadata.csv" in rep.failed[0].error and "concept" in rep.failed[0].error
    assert rep.card.counts.items_ok == 1 and rep.card.counts.rows == 240
