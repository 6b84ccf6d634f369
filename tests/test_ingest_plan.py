"""ingest/plan: which items of an entry need work. A rerun redoes only the failed items, and a rerun of an
unchanged entry is a no-op whose version `inspect` reads back."""

from __future__ import annotations

import numpy as np
from conftest import MC_MAZE, needs_real_data
from helpers.ingest import broken_nwb_folder, entry_for, mc_maze_entry
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.pipeline import ingest
from neurobridge.store.versions import resolve_dataset
from neurobridge.workflows.inspect import plot, rate_percentiles, session_summaries


@needs_real_data
def test_rerun_retries_only_failed_items(ray_cluster, settings, tmp_path):
    root = broken_nwb_folder(tmp_path / "raw" / "broken")
    entry = CatalogEntry.of(**entry_for(root))
    first = ingest(entry, settings, progress=False)
    again = ingest(entry, settings, progress=False)
    assert again.version == first.version
    assert (again.processed, again.skipped) == (5, 1)  # the good item is not redone


@needs_real_data
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
