"""Real recordings no one here wrote ingest exactly: every window holds exactly its unit's spikes."""

from __future__ import annotations

import h5py
import numpy as np
import polars as pl
import pytest
from conftest import IBL_EXCERPT, MC_MAZE
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.pipeline import ingest
from neurobridge.store.versions import resolve_dataset
from neurobridge.workflows.inspect import plot, rate_percentiles, session_summaries

pytestmark = pytest.mark.skipif(not MC_MAZE.exists(), reason="shared real-data excerpts not present")


def mc_maze_entry(uri: str) -> CatalogEntry:
    return CatalogEntry.of(
        name="mc_maze_medium",
        kind="nwb",
        uri=uri,
        species="Macaca mulatta",
        ingest={"bin_ms": 20, "window": {"mode": "intervals", "align": "start_time", "post_s": 0.7}},
    )


def ibl_entry(uri: str) -> CatalogEntry:
    return CatalogEntry.of(
        name="ibl_excerpt", kind="alf", uri=uri, ingest={"window": {"mode": "chunks", "chunk_s": 1.0}}
    )


def nwb_spikes_by_unit(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        times = f["units/spike_times"][:]
        ends = f["units/spike_times_index"][:].astype(int)
        ids = f["units/id"][:]
    starts = np.concatenate([[0], ends[:-1]])
    return {str(i): times[a:b] for i, a, b in zip(ids, starts, ends, strict=True)}


def rows_of(report) -> pl.DataFrame:
    return pl.read_parquet(f"{report.path}/part-*.parquet")


def test_mc_maze_windows_hold_exactly_each_units_spikes(ray_cluster, settings):
    report = ingest(mc_maze_entry(str(MC_MAZE.parent)), settings, progress=False)
    assert report.ok, report.failed
    c = report.card.counts
    assert (c.items_ok, c.rows, c.units, c.spikes) == (1, 100, 114, 32_324)
    spikes = nwb_spikes_by_unit(MC_MAZE)
    df = rows_of(report)
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


def test_ibl_alf_excerpt_chunks_hold_exactly_each_clusters_spikes(ray_cluster, settings):
    report = ingest(ibl_entry(str(IBL_EXCERPT)), settings, progress=False)
    assert report.ok, report.failed
    times = np.load(IBL_EXCERPT / "spikes.times.npy")
    clusters = np.load(IBL_EXCERPT / "spikes.clusters.npy")
    assert report.card.counts.spikes == len(times) == 124_905
    assert report.card.counts.units == len(np.unique(clusters)) == 289
    df = rows_of(report).sort("t_start")
    starts = df["t_start"].to_numpy()
    ends = np.append(starts[1:], starts[-1] + 1.0)  # fixed chunks tile the session
    for row, end in zip(df.iter_rows(named=True), ends, strict=True):
        grid = np.array(row["counts"]).reshape(row["n_units"], row["n_bins"])
        m = (times >= row["t_start"]) & (times < end)
        ids = np.array([int(u.rsplit("/", 1)[1]) for u in row["unit_ids"]])
        want = np.bincount(clusters[m], minlength=clusters.max() + 1)[ids]
        assert np.array_equal(grid.sum(axis=1), want), row["sample_id"]


def test_rerun_is_a_no_op_and_inspect_reads_the_version(ray_cluster, settings, tmp_path):
    entry = mc_maze_entry(str(MC_MAZE.parent))
    first = ingest(entry, settings, progress=False)
    part = next(p for p in (tmp_path / "store").rglob("part-*.parquet"))
    mtime = part.stat().st_mtime_ns
    again = ingest(entry, settings, progress=False)
    assert (again.version, again.processed, again.skipped) == (first.version, 0, 1)
    assert part.stat().st_mtime_ns == mtime
    ref = resolve_dataset(settings, "mc_maze_medium")
    assert ref.version == first.version
    sessions = session_summaries(ref, settings)
    assert [(s.units, s.windows, s.spikes) for s in sessions] == [(114, 100, 32_324)]
    duration = 100 * 0.7
    assert np.isclose(sessions[0].rates_hz.sum() * duration, 32_324)
    assert 0 < rate_percentiles(sessions)["p50"] < 100
    png = plot(ref, settings, str(tmp_path / "fig.png"), sessions)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_changed_ingest_config_is_a_new_version(ray_cluster, settings):
    a = ingest(mc_maze_entry(str(MC_MAZE.parent)), settings, progress=False)
    entry = mc_maze_entry(str(MC_MAZE.parent))
    entry.ingest.bin_ms = 10
    b = ingest(entry, settings, progress=False)
    assert a.version != b.version
    assert rows_of(b)["n_bins"].unique().to_list() == [70]
