"""Raw inputs and catalog entries that the ingest, source and CLI tests share: copies of the real MC_Maze file
broken in each way a file can be, the real excerpts' entries, and a two-kind catalog over a small simulation."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import polars as pl
from conftest import MC_MAZE
from neurobridge.catalog import CatalogEntry


def broken_nwb_folder(root):
    """The real MC_Maze file, and copies of it broken in each way the issue lists."""
    root.mkdir(parents=True)
    good = root / "good.nwb"
    shutil.copy(MC_MAZE, good)
    good.chmod(0o644)
    (root / "truncated.nwb").write_bytes(good.read_bytes()[:200_000])

    def broken(name, edit):
        path = root / name
        shutil.copy(good, path)
        with h5py.File(path, "r+") as f:
            edit(f)

    def set_value(i, value):
        return lambda f: f["units/spike_times"].__setitem__(i, value)

    def swap(f):
        st = f["units/spike_times"]
        st[3], st[4] = st[4], st[3]

    broken("no_index.nwb", lambda f: f["units"].__delitem__("spike_times_index"))
    broken("nan.nwb", set_value(7, np.nan))
    broken("negative.nwb", set_value(0, -0.5))
    broken("unsorted.nwb", swap)
    return root


def entry_for(root) -> dict:
    """The catalog entry (as a dict) over a folder of ``broken_nwb_folder``."""
    return {
        "name": "broken",
        "kind": "nwb",
        "uri": str(root),
        "ingest": {"window": {"mode": "intervals", "post_s": 0.7}},
    }


def mc_maze_entry(uri: str) -> CatalogEntry:
    """MC_Maze (NLB) trials as 0.7 s windows of 20 ms bins."""
    return CatalogEntry.of(
        name="mc_maze_medium",
        kind="nwb",
        uri=uri,
        species="Macaca mulatta",
        ingest={"bin_ms": 20, "window": {"mode": "intervals", "align": "start_time", "post_s": 0.7}},
    )


def report_rows(report) -> pl.DataFrame:
    """Every row of the version an ingest report points at."""
    return pl.read_parquet(f"{report.path}/part-*.parquet")


def entries(root):
    """Entries over a simulation (conftest.mixed_sim): its NWB and ALF sessions, and a folder that is not there."""
    return [
        {
            "name": "mix_nwb",
            "kind": "nwb",
            "uri": str(root / "nwb"),
            "ingest": {"window": {"mode": "chunks", "chunk_s": 1.0}},
        },
        {
            "name": "mix_alf",
            "kind": "alf",
            "uri": str(root / "alf"),
            "one": {"mode": "local"},
            "ingest": {"window": {"mode": "chunks", "chunk_s": 1.0}},
        },
        {"name": "mix_missing", "kind": "nwb", "uri": str(root / "nowhere")},
    ]
