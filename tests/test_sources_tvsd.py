"""sources/tvsd: TVSD end to end. A simulated DataLad dataset is cloned and fetched selectively, ingested through
Ray into rows equal to an independent numpy binning of the .mat files; splits, image ids, side tables, bad files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
from conftest import REPO
from neurobridge.catalog import CatalogEntry, TvsdConfig, resolve
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest
from neurobridge.sim import SimConfig, simulate
from neurobridge.sim.tvsd import SIM_REGIONS, TvsdSimConfig, make_dataset, write_files, write_monkey
from neurobridge.sources import discover, open_source

MONKEYS = ("monkeyF", "monkeyN")


def region_of(monkey: str, channel: int, maps=SIM_REGIONS) -> str:
    return next(r for a, b, r in maps[monkey] if a <= channel <= b)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """`simulate` with only the TVSD dataset: a real DataLad dataset at <raw>/sim/tvsd."""
    raw = tmp_path_factory.mktemp("tvsd") / "raw"
    simulate(str(raw / "sim"), SimConfig(nwb_subjects=0, alf_subjects=0, visual_sessions=0, tvsd=True), progress=False)
    return raw


@pytest.fixture(scope="module")
def ingested(ray_cluster, sim):
    """The shipped sim_tvsd catalog entry, ingested once: it clones sim/tvsd into <raw>/sim_tvsd."""
    st_ = get_settings(store=str(sim.parent / "store"), raw_root=str(sim))
    entry = resolve("sim_tvsd", REPO / "catalog")[0]
    report = ingest(entry, st_, progress=False)
    rows = pl.read_parquet(f"{report.path}/part-*.parquet")
    return {"raw": sim, "settings": st_, "entry": entry, "report": report, "rows": rows}


def mat(monkey_dir: Path):
    """Everything a reader needs from the source files, read independently of the reader (MATLAB order)."""
    with h5py.File(monkey_dir / "THINGS_MUA_trials.mat", "r") as f:
        mua = f["ALLMUA"][()].transpose(2, 1, 0)  # on disk (time, trial, electrode) → [electrode, trial, time]
        tb = f["tb"][()].ravel()
        allmat = f["ALLMAT"][()].T
    with h5py.File(monkey_dir / "_logs" / "things_imgs.mat", "r") as f:
        paths = {
            name: ["".join(map(chr, f[r][()].ravel())) for r in f[name]["things_path"][()].ravel()]
            for name in ("train_imgs", "test_imgs")
        }
    return mua, tb, allmat, paths


def test_ingest_clones_the_dataset_and_fetches_only_the_selected_files(ingested):
    raw, report = ingested["raw"], ingested["report"]
    assert report.ok and report.card.counts.items_ok == 2
    clone = raw / "sim_tvsd"
    assert (clone / ".git").exists()
    origin = subprocess.run(["git", "-C", str(clone), "config", "remote.origin.url"], capture_output=True, text=True)
    assert origin.stdout.strip() == str(raw / "sim" / "tvsd")
    for m in MONKEYS:
        for name in ("THINGS_MUA_trials.mat", "THINGS_normMUA.mat", "_logs/things_imgs.mat"):
            assert (clone / m / name).exists(), name  # content fetched
        dummy = clone / m / "RAW" / f"{m}_raw_dummy.ns6"
        assert os.path.islink(dummy) and not dummy.exists()  # annexed RAW: listed, content never fetched


def test_rows_equal_an_independent_numpy_binning_of_the_mat_files(ingested):
    """Exact float32 equality: both sides sum the 10 float32 samples of a bin in float64 (exact for these
    magnitudes) and divide once, so the order of summation cannot change the result."""
    rows, raw = ingested["rows"], ingested["raw"]
    for m in MONKEYS:
        mua, tb, allmat, _ = mat(raw / "sim" / "tvsd" / m)
        kept = np.flatnonzero(allmat[:, 5] == 1)
        window = (tb >= 0) & (tb < 200)
        x = mua[:, kept][:, :, window]  # [electrode, trial, 200]
        expected = x.reshape(*x.shape[:2], 20, 10).astype(np.float64).sum(-1) / 10
        channels = np.arange(1, mua.shape[0] + 1)
        order = sorted(channels, key=lambda c: (region_of(m, c), c))
        expected = expected[np.array(order) - 1].astype(np.float32).transpose(1, 0, 2)  # [trial, unit, bin]
        got = rows.filter(pl.col("session") == m).sort("sample_id")
        assert got["sample_id"].to_list() == [
            f"sim_tvsd/{got['sample_id'][0].split('/')[1]}/trial_{i + 1:06d}" for i in kept
        ]
        values = np.stack(got["mua"].to_numpy()).reshape(len(kept), len(order), 20)
        np.testing.assert_array_equal(values, expected)
        assert got["counts"].null_count() == len(got) and got["t_start"].is_nan().all()
        assert (got["bin_ms"] == 10).all() and (got["n_bins"] == 20).all()


def test_region_labels_follow_each_monkeys_channel_map(ingested):
    rows = ingested["rows"]
    for m in MONKEYS:
        first = rows.filter(pl.col("session") == m).row(0, named=True)
        channels = [int(u.rsplit("/", 1)[1]) for u in first["unit_ids"]]
        assert sorted(channels) == list(range(1, 65))
        assert first["unit_regions"] == [region_of(m, c) for c in channels]
        assert first["unit_regions"] == sorted(first["unit_regions"])  # region-ordered for region-pure patches


def test_the_published_channel_maps_are_the_defaults(tmp_path):
    """1024-channel files read with the default config: monkeyF's IT sits between V1 and V4, monkeyN's after V4."""
    real = {m: [(r.first, r.last, r.region) for r in rs] for m, rs in TvsdConfig().regions.items()}
    cfg = TvsdSimConfig(monkeys=real, n_train=3, n_test=1, test_repeats=2, normalized=False, tb_ms=(0, 20))
    for i, m in enumerate(MONKEYS):
        write_monkey(tmp_path / m, cfg, m, i)
    entry = CatalogEntry.of(
        name="real_maps",
        kind="tvsd",
        uri=str(tmp_path),
        tvsd={"datalad": {"url": None}, "responses": False},
        ingest={"bin_ms": 10, "window": {"post_s": 0.02}},
    )
    st_ = get_settings(raw_root=str(tmp_path), store=str(tmp_path / "store"))
    for item in discover(entry, st_):
        with open_source(entry, item, st_) as src:
            labels = dict(zip(src.unit_ids.astype(int), src.unit_regions, strict=True))
            m = item.extra["subject"]
            assert all(labels[c] == region_of(m, c, real) for c in range(1, 1025))
            if m == "monkeyF":
                assert (labels[512], labels[513], labels[832], labels[833]) == ("V1", "IT", "IT", "V4")
            else:
                assert (labels[512], labels[513], labels[768], labels[769]) == ("V1", "V4", "V4", "IT")


def test_image_ids_survive_with_their_repeats(ingested):
    rows, raw = ingested["rows"], ingested["raw"]
    for m in MONKEYS:
        _, _, allmat, paths = mat(raw / "sim" / "tvsd" / m)
        kept = allmat[allmat[:, 5] == 1]
        ids = [
            f"things/{paths['test_imgs'][int(t) - 1]}" if t > 0 else f"things/{paths['train_imgs'][int(r) - 1]}"
            for r, t in kept[:, 1:3]
        ]
        got = rows.filter(pl.col("session") == m).sort("sample_id")
        assert got["stimulus_id"].to_list() == ids
        assert got["repeat"].to_list() == kept[:, 3].astype(int).tolist()
        test = got.filter(pl.col("stimulus_id").str.contains("simtest"))
        assert test.group_by("stimulus_id").agg(pl.col("repeat").sort())["repeat"].to_list() == [list(range(1, 11))] * 8


def test_official_test_images_stay_in_test_and_no_image_is_in_two_splits(ingested):
    rows = ingested["rows"]
    is_test = rows["stimulus_id"].str.contains("/simtest")
    assert (rows.filter(is_test)["split"] == "test").all()
    assert (rows.filter(~is_test)["split"] != "test").all()
    assert set(rows.filter(~is_test)["split"]) == {"train", "val"}
    per_image = rows.group_by("stimulus_id").agg(pl.col("split").n_unique().alias("n"))
    assert per_image["n"].max() == 1  # across both monkeys too


def test_responses_side_table_matches_the_normalised_file(ingested):
    report, raw = ingested["report"], ingested["raw"]
    resp = pl.read_parquet(f"{report.path}/tvsd_responses/*.parquet")
    units = pl.read_parquet(f"{report.path}/tvsd_units/*.parquet")
    rows = ingested["rows"]
    for m in MONKEYS:
        with h5py.File(raw / "sim" / "tvsd" / m / "THINGS_normMUA.mat", "r") as f:
            train, test = f["train_MUA"][()].T, f["test_MUA"][()].T  # [channel, image]
            reps, reliab = f["test_MUA_reps"][()].transpose(2, 1, 0), f["reliab"][()].T[:, 0]
        u = units.filter(pl.col("session") == m).sort("position")
        order = np.array(u["channel"].to_list()) - 1
        assert u["unit_id"].to_list() == rows.filter(pl.col("session") == m)["unit_ids"][0].to_list()
        np.testing.assert_array_equal(np.concatenate(u["reliab"].to_list()), reliab[order].astype(np.float32))
        r = resp.filter(pl.col("session") == m)
        avg = r.filter(pl.col("repeat").is_null())
        got_train = np.stack(avg.filter(pl.col("split") != "test")["response"].to_numpy())
        np.testing.assert_array_equal(got_train, train[order].T)
        np.testing.assert_array_equal(
            np.stack(avg.filter(pl.col("split") == "test")["response"].to_numpy()), test[order].T
        )
        for k in (1, 10):
            got = np.stack(r.filter(pl.col("repeat") == k)["response"].to_numpy())
            np.testing.assert_array_equal(got, reps[order][:, :, k - 1].T)
        # the side table's splits agree with the rows' splits for the same image
        joined = avg.join(rows.select("stimulus_id", "split").unique(), on="stimulus_id", suffix="_rows")
        assert len(joined) and (joined["split"] == joined["split_rows"]).all()


def test_a_rerun_is_a_no_op(ingested):
    again = ingest(ingested["entry"], ingested["settings"], progress=False)
    assert again.version == ingested["report"].version and again.processed == 0 and again.skipped == 2


def test_bad_files_fail_alone_with_a_named_reason(ray_cluster, tmp_path):
    src = tmp_path / "src"
    cfg = TvsdSimConfig(
        monkeys={"monkeyN": SIM_REGIONS["monkeyN"]}, n_train=12, n_test=2, test_repeats=2, raw_kb=4, tb_ms=(-20, 220)
    )
    write_files(src, cfg)
    for bad in ("monkeyNoMUA", "monkeyTrunc", "monkeyFlat", "monkeyNoMap"):
        shutil.copytree(src / "monkeyN", src / bad)
    with h5py.File(src / "monkeyNoMUA" / "THINGS_MUA_trials.mat", "r+") as f:
        del f["ALLMUA"]
    trunc = src / "monkeyTrunc" / "THINGS_MUA_trials.mat"
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    with h5py.File(src / "monkeyFlat" / "THINGS_MUA_trials.mat", "r+") as f:
        allmat = f["ALLMAT"][()]
        del f["ALLMAT"]
        f["ALLMAT"] = allmat.T  # [n_trials, 7] written untransposed
    make_dataset(src)
    regions = {"monkeyN": [{"first": a, "last": b, "region": r} for a, b, r in SIM_REGIONS["monkeyN"]]}
    for m in ("monkeyNoMUA", "monkeyTrunc", "monkeyFlat"):
        regions[m] = regions["monkeyN"]
    entry = CatalogEntry.of(
        name="bad_tvsd",
        kind="tvsd",
        uri=str(tmp_path / "clone"),
        tvsd={"datalad": {"url": str(src)}, "regions": regions},
        ingest={"bin_ms": 20, "window": {"post_s": 0.2}},
    )
    report = ingest(entry, get_settings(store=str(tmp_path / "store"), raw_root=str(tmp_path)), progress=False)
    failed = {f.rel.split("/")[0]: f.error for f in report.failed}
    assert set(failed) == {"monkeyNoMUA", "monkeyTrunc", "monkeyFlat", "monkeyNoMap"}
    assert "no 'ALLMUA' variable" in failed["monkeyNoMUA"]
    assert "cannot be opened as MATLAB v7.3/HDF5 (truncated" in failed["monkeyTrunc"]
    assert "ALLMAT has on-disk shape" in failed["monkeyFlat"] and "untransposed" in failed["monkeyFlat"]
    assert "no channel → region map for 'monkeyNoMap'" in failed["monkeyNoMap"]
    for m, msg in failed.items():
        assert f"{m}/THINGS_MUA_trials.mat" in msg
    assert report.card.counts.items_ok == 1 and report.card.counts.rows == 12 + 2 * 2
