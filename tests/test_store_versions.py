"""store/versions: a dataset version is a content hash of what decides its rows (another ingest config: a new one)."""

from __future__ import annotations

from conftest import MC_MAZE, needs_real_data
from helpers.ingest import mc_maze_entry, report_rows
from neurobridge.ingest.pipeline import ingest


@needs_real_data
def test_a_changed_ingest_config_is_a_new_version(ray_cluster, settings):
    a = ingest(mc_maze_entry(str(MC_MAZE.parent)), settings, progress=False)
    entry = mc_maze_entry(str(MC_MAZE.parent))
    entry.ingest.bin_ms = 10
    b = ingest(entry, settings, progress=False)
    assert a.version != b.version
    assert report_rows(b)["n_bins"].unique().to_list() == [70]
