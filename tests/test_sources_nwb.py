"""sources/nwb: NWB files (NLB, DANDI). The file's split, held-out units and hand kinematics survive ingest, real
MC_Maze windows hold exactly each unit's spikes, and each broken file fails alone with a named reason."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import MC_MAZE, needs_real_data
from helpers.ingest import broken_nwb_folder, entry_for, mc_maze_entry, report_rows
from helpers.sim import small_sim
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.pipeline import ingest
from neurobridge.sim import simulate
from neurobridge.store.versions import resolve_dataset

# ---------------------------------------------------------------- NLB conventions (simulated)


@pytest.fixture(scope="module")
def nlb_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("nlb")
    index = simulate(str(out), small_sim(nwb=(1, 1), units_min=30, units_max=40, minutes=1.0), progress=False)
    return out, index["sessions"][0]


def nlb_entry(uri, **ingest_over) -> CatalogEntry:
    window = {"mode": "intervals", "intervals": "trials", "align": "move_onset_time", "pre_s": 0.25, "post_s": 0.45}
    ingest = {"bin_ms": 20, "window": window, "split": {"rule": "column"}, **ingest_over}
    return CatalogEntry.of(name="nlb_test", kind="nwb", uri=str(uri), ingest=ingest)


def read_parts(report, sub=""):
    return pq.ParquetDataset(sorted(Path(report.path, sub).glob("part-*.parquet"))).read().to_pylist()


def test_hand_velocity_is_binned_beside_the_spikes(ray_cluster, settings, nlb_sim):
    out, session = nlb_sim
    report = ingest(nlb_entry(out / "nwb"), settings, progress=False)
    assert report.ok, report.failed
    rows = read_parts(report)
    with h5py.File(out / session["path"], "r") as f:
        stamps = f["processing/behavior/hand_vel/timestamps"][:]
        vel = f["processing/behavior/hand_vel/data"][:]
        move = f["intervals/trials/move_onset_time"][:]
        split = f["intervals/trials/split"][:].astype(str)
    assert len(rows) == len(move)
    by_start = {round(r["t_start"], 9): r for r in rows}
    for i, m in enumerate(move):
        row = by_start[round(m - 0.25, 9)]
        assert row["split"] == split[i]  # NLB's own split, never a hash
        assert row["behavior_names"] == ["hand_vel.0", "hand_vel.1"]
        got = np.array(row["behavior"], dtype=np.float32).reshape(35, 2)
        edges = row["t_start"] + np.arange(36) * 0.02
        for b in range(35):
            inside = (stamps >= edges[b]) & (stamps < edges[b + 1])
            np.testing.assert_allclose(got[b], vel[inside].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_held_out_units_are_kept_in_the_units_table_in_grid_order(ray_cluster, settings, nlb_sim):
    out, session = nlb_sim
    report = ingest(nlb_entry(out / "nwb"), settings, progress=False)
    units = read_parts(report, "units")
    row = read_parts(report)[0]
    with h5py.File(out / session["path"], "r") as f:
        heldout = dict(zip(f["units/id"][:].astype(str), f["units/heldout"][:].astype(bool), strict=True))
    assert [u["unit_id"] for u in units] == row["unit_ids"]  # the units table follows the token grid
    assert [u["index"] for u in units] == list(range(len(units)))
    assert [u["region"] for u in units] == row["unit_regions"]
    assert {u["raw_id"]: u["heldout"] for u in units} == heldout
    assert 0 < sum(heldout.values()) < len(heldout)
    assert report.card.side_outputs["units"].rows == len(units)


@pytest.mark.skipif(not MC_MAZE.exists(), reason="shared real-data excerpts not present")
def test_real_mc_maze_test_split_keeps_its_held_in_flags_and_has_no_behaviour(ray_cluster, settings):
    window = {"mode": "intervals", "align": "start_time", "post_s": 0.7}
    entry = CatalogEntry.of(name="mc_maze_real", kind="nwb", uri=str(MC_MAZE.parent), ingest={"window": window})
    report = ingest(entry, settings, progress=False)
    assert report.ok, report.failed
    rows, units = read_parts(report), read_parts(report, "units")
    assert len(rows) == 100 and all(r["behavior"] is None and r["behavior_names"] is None for r in rows)
    # NLB's test file carries only held-in units (the held-out ones are withheld): every flag is False.
    assert len(units) == 114 and all(u["heldout"] is False for u in units)


def test_a_requested_behaviour_series_that_is_absent_fails_the_item_by_name(ray_cluster, settings, nlb_sim):
    out, _ = nlb_sim
    report = ingest(nlb_entry(out / "nwb", behavior=["cursor_pos"]), settings, progress=False)
    assert len(report.failed) == 1
    assert "cursor_pos" in report.failed[0].error and "hand_vel" in report.failed[0].error


# ---------------------------------------------------------------- a real recording no one here wrote


def nwb_spikes_by_unit(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        times = f["units/spike_times"][:]
        ends = f["units/spike_times_index"][:].astype(int)
        ids = f["units/id"][:]
    starts = np.concatenate([[0], ends[:-1]])
    return {str(i): times[a:b] for i, a, b in zip(ids, starts, ends, strict=True)}


@needs_real_data
def test_mc_maze_windows_hold_exactly_each_units_spikes(ray_cluster, settings):
    report = ingest(mc_maze_entry(str(MC_MAZE.parent)), settings, progress=False)
    assert report.ok, report.failed
    c = report.card.counts
    assert (c.items_ok, c.rows, c.units, c.spikes) == (1, 100, 114, 32_324)
    spikes = nwb_spikes_by_unit(MC_MAZE)
    df = report_rows(report)
    assert df["n_bins"].unique().to_list() == [35] and df["counts"].dtype == pl.List(pl.UInt16)
    for row in df.iter_rows(named=True):
        grid = np.array(row["counts"]).reshape(row["n_units"], row["n_bins"])
        t0, t1 = row["t_start"], row["t_start"] + 0.7
        raw_ids = [u.rsplit("/", 1)[1] for u in row["unit_ids"]]
        want = [np.count_nonzero((spikes[u] >= t0) & (spikes[u] < t1)) for u in raw_ids]
        assert grid.sum(axis=1).tolist() == want, row["sample_id"]
    regions = df["unit_regions"][0].to_list()
    assert regions == sorted(regions) and set(regions) == {"PMd"}  # units ordered by region
    assert df["sample_id"].n_unique() == len(df)
    assert set(df["split"].unique()) <= {"train", "val", "test"}


# ---------------------------------------------------------------- broken files


EXPECTED = {
    "truncated.nwb": "cannot open as HDF5/NWB",
    "no_index.nwb": "spike_times_index' is missing",
    "nan.nwb": "not finite",
    "negative.nwb": "is negative",
    "unsorted.nwb": "are not sorted",
}


@needs_real_data
def test_each_bad_file_fails_alone_with_a_named_reason(ray_cluster, settings, tmp_path):
    root = broken_nwb_folder(tmp_path / "raw" / "broken")
    report = ingest(CatalogEntry.of(**entry_for(root)), settings, progress=False)
    failed = {f.rel: f.error for f in report.failed}
    assert set(failed) == set(EXPECTED)
    for rel, needle in EXPECTED.items():
        assert needle in failed[rel] and rel in failed[rel], failed[rel]
    assert re.search(r"spike times of unit \S+ are not sorted: spike \d+", failed["unsorted.nwb"]), failed[
        "unsorted.nwb"
    ]
    card = report.card
    assert card.counts.items_ok == 1 and card.counts.rows == 100
    assert card.files == [f"part-{next(r['item'] for r in [_ok(report)])}.parquet"]
    # the reasons are in the manifest too, and inspect reports them
    from neurobridge.workflows.inspect import failed_items

    ref = resolve_dataset(settings, "broken")
    assert {r["rel"] for r in failed_items(ref, settings)} == set(EXPECTED)


def _ok(report) -> dict:
    from neurobridge.store.card import load_item_records

    return next(r.model_dump() for r in load_item_records(report.path, get_settings_of(report)).values() if r.ok)


def get_settings_of(report):
    from neurobridge.config import get_settings

    store = report.path.split("/tokens/")[0]
    return get_settings(store=store)
