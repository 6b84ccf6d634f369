"""NLB / DANDI NWB: the file's split, its held-out units and its hand kinematics survive ingest; DANDI assets
resolve to the public bucket."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import MC_MAZE
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.pipeline import ingest
from neurobridge.sim import SimConfig, simulate
from neurobridge.sources import SourceError
from neurobridge.sources.io.dandi import asset_item, blob_uri


@pytest.fixture(scope="module")
def nlb_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("nlb")
    cfg = SimConfig(
        nwb_subjects=1,
        nwb_sessions_per_subject=1,
        alf_subjects=0,
        visual_sessions=0,
        units_min=30,
        units_max=40,
        minutes=1.0,
        write_images=False,
    )
    index = simulate(str(out), cfg, progress=False)
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


def test_dandi_assets_resolve_to_the_public_bucket_and_read_anonymously(settings):
    url = "https://dandiarchive.s3.amazonaws.com/blobs/0a1/b2c/0a1b2c3d-0000-4000-8000-000000000000"
    item = asset_item(
        "sub-Jenkins/sub-Jenkins_ses-full_desc-train_behavior+ecephys.nwb",
        123,
        "ab" * 32,
        ["https://api.dandiarchive.org/api/assets/x/download/", url],
        "000128",
    )
    assert item.uri == "s3://dandiarchive/blobs/0a1/b2c/0a1b2c3d-0000-4000-8000-000000000000"
    assert item.rel.startswith("sub-Jenkins/") and item.fingerprint == f"123:{'ab' * 32}"
    with pytest.raises(SourceError, match="not a DANDI S3 blob URL"):
        blob_uri("https://example.org/blobs/x")
    with pytest.raises(SourceError, match="no S3 content URL"):
        asset_item("a.nwb", 1, None, ["https://api.dandiarchive.org/api/assets/x/download/"], "000128")
    entry = CatalogEntry.of(
        name="dandi_test", kind="nwb", uri="dandi/000128", dandi={"dandiset": "000128", "version": "0.220113.0400"}
    )
    tuned = entry.settings_for(settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:9"}))
    blob = tuned.storage_options(item.uri)
    assert blob["anon"] is True and "client_kwargs" not in blob  # AWS itself, unsigned
    store = tuned.storage_options("s3://my-store/tokens")
    assert "anon" not in store and store["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
