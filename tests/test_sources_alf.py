"""sources/alf: IBL sessions through ONE. MtM trial windows and whole-session chunks, quality and region labels in
every layout the Brain-wide Map uses, behaviour beside the spikes, real IBL spikes exactly, bad arrays refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import IBL_EXCERPT, needs_real_data
from helpers.ingest import report_rows
from helpers.sim import small_sim
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.pipeline import ingest
from neurobridge.sim import build_one_cache, simulate
from neurobridge.sources import discover
from neurobridge.store.versions import resolve_dataset

TRIAL_BEHAVIOUR = [
    "trial.choice",
    "trial.feedbackType",
    "trial.contrastLeft",
    "trial.contrastRight",
    "trial.probabilityLeft",
]


@pytest.fixture(scope="module")
def ibl_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("ibl")
    index = simulate(str(out), small_sim(alf=(1, 2), units_min=30, units_max=40, minutes=1.0), progress=False)
    return out, [s for s in index["sessions"] if s["format"] == "alf"]


def entry(root, **over) -> CatalogEntry:
    spec = {
        "name": "ibl_test",
        "kind": "alf",
        "uri": str(root),
        "one": {"mode": "local"},
        "ingest": {
            "good_units_only": True,
            "window": {
                "mode": "intervals",
                "intervals": "trials",
                "align": "stimOn_times",
                "pre_s": 0.5,
                "post_s": 1.5,
            },
        },
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return CatalogEntry.of(**spec)


def rows_of(settings, name):
    ref = resolve_dataset(settings, name)
    return pq.ParquetDataset(sorted(Path(ref.path).glob("part-*.parquet"))).read().to_pylist()


def test_trial_windows_follow_the_mtm_convention_with_good_units_and_behaviour(ray_cluster, settings, ibl_sim):
    out, sessions = ibl_sim
    report = ingest(entry(out / "alf"), settings, progress=False)
    assert report.ok, report.failed
    rows = rows_of(settings, "ibl_test")
    for s in sessions:
        folder = out / s["path"]
        alf = folder.parent
        label = np.load(folder / "clusters.label.npy")
        stim_on = np.load(alf / "trials.stimOn_times.npy")
        mine = sorted(
            (r for r in rows if r["session"].endswith(s["session_id"].rsplit("_", 1)[0] + "_probe00")),
            key=lambda r: r["t_start"],
        )
        assert len(mine) == len(stim_on)
        assert {r["n_bins"] for r in mine} == {100} and {r["bin_ms"] for r in mine} == {20.0}
        assert {r["n_units"] for r in mine} == {int((label == 1.0).sum())}  # good = all metrics passed
        np.testing.assert_allclose([r["t_start"] for r in mine], stim_on - 0.5)
        r0 = mine[0]
        assert r0["behavior_names"] == ["wheel.velocity", *TRIAL_BEHAVIOUR]
        beh = np.array([r["behavior"] for r in mine]).reshape(len(mine), 100, 6)
        for k, name in enumerate(("choice", "feedbackType", "contrastLeft", "contrastRight", "probabilityLeft"), 1):
            expected = np.load(alf / f"trials.{name}.npy").astype(np.float32)
            assert np.array_equal(beh[:, 0, k], expected, equal_nan=True), name
            assert np.array_equal(beh[:, -1, k], expected, equal_nan=True), name  # the same over every bin
        # Wheel velocity per bin = displacement over the bin / bin length, from the raw encoder samples.
        pos, ts = np.load(alf / "wheel.position.npy"), np.load(alf / "wheel.timestamps.npy")
        edges = stim_on[:, None] - 0.5 + np.arange(101) * 0.02
        inside = (edges[:, :-1] >= ts[0]) & (edges[:, 1:] <= ts[-1] - 0.01)
        displacement = (np.interp(edges[:, 1:], ts, pos) - np.interp(edges[:, :-1], ts, pos)) / 0.02
        scale = np.abs(displacement[inside]).max()
        assert np.abs(beh[:, :, 0][inside] - displacement[inside]).max() < 0.05 * scale


def test_whole_session_chunks_for_pretraining_keep_the_wheel_but_not_trial_values(ray_cluster, settings, ibl_sim):
    out, sessions = ibl_sim
    e = entry(out / "alf", name="ibl_chunks", ingest={"window": {"mode": "chunks", "chunk_s": 2.0}})
    report = ingest(e, settings, progress=False)
    assert report.ok, report.failed
    rows = rows_of(settings, "ibl_chunks")
    per_session = {}
    for r in rows:
        per_session.setdefault(r["session"], []).append(r)
    assert len(per_session) == len(sessions)
    for chunk_rows in per_session.values():
        starts = np.sort([r["t_start"] for r in chunk_rows])
        assert np.allclose(np.diff(starts), 2.0) and starts[0] <= 0.0 + 2.0 and starts[-1] + 2.0 >= 58.0
        assert {r["n_bins"] for r in chunk_rows} == {100}
        assert chunk_rows[0]["behavior_names"] == ["wheel.velocity"]
    assert sum(r["counts"] is not None and sum(r["counts"]) for r in rows) == report.card.counts.spikes


def bwm_layout(src, dst):
    """A session rewritten the way Brain-wide Map releases store it: CCF ids per channel, labels in Parquet."""
    shutil.copytree(src, dst)
    acronyms = np.load(dst / "clusters.brainLocationAcronyms_ccf_2017.npy")
    label = np.load(dst / "clusters.label.npy")
    (dst / "clusters.brainLocationAcronyms_ccf_2017.npy").unlink()
    (dst / "clusters.label.npy").unlink()
    names = sorted(set(acronyms))
    ccf = {name: 1000 + i for i, name in enumerate(names)}
    channels = np.arange(len(acronyms)) * 2  # two channels per cluster, the cluster on the even one
    per_channel = np.zeros(2 * len(acronyms), dtype=np.int64)
    per_channel[channels] = [ccf[a] for a in acronyms]
    np.save(dst / "clusters.channels.npy", channels)
    np.save(dst / "channels.brainLocationIds_ccf_2017.npy", per_channel)
    pq.write_table(pa.table({"cluster_id": np.arange(len(label)), "label": label}), dst / "clusters.metrics.pqt")
    return acronyms, label, ccf


def test_bwm_layout_ccf_ids_map_through_channels_and_a_region_table(ray_cluster, settings, ibl_sim, tmp_path):
    out, sessions = ibl_sim
    s = sessions[0]
    session_src = (out / s["path"]).parents[1]
    dst_session = tmp_path / "bwm" / "mouse" / "2024-01-01" / "001"
    shutil.copytree(session_src, dst_session)
    probe = dst_session / "alf" / "probe00"
    shutil.rmtree(probe)
    acronyms, label, ccf = bwm_layout(out / s["path"], probe)
    unmapped = sorted(ccf)[-1]
    table = tmp_path / "structures.csv"
    table.write_text("id,acronym,name\n" + "".join(f"{i},{a},x\n" for a, i in ccf.items() if a != unmapped))
    e = entry(tmp_path / "bwm", name="bwm", one=None, region_table=str(table))
    report = ingest(e, settings, progress=False)
    assert report.ok, report.failed
    row = rows_of(settings, "bwm")[0]
    good = label >= 1.0
    expected = [a if a != unmapped else str(ccf[a]) for a in acronyms[good]]
    ids = [int(u.rsplit("/", 1)[1]) for u in row["unit_ids"]]
    assert ids == sorted(ids, key=lambda i: (row["unit_regions"][ids.index(i)], i))  # region-ordered
    assert sorted(zip(ids, row["unit_regions"], strict=True)) == sorted(
        zip(np.flatnonzero(good).tolist(), expected, strict=True)
    )


def test_good_units_only_without_any_quality_label_is_a_named_error(ray_cluster, settings, ibl_sim, tmp_path):
    out, sessions = ibl_sim
    folder = tmp_path / "nolabel" / "mouse" / "2024-01-01" / "001" / "alf" / "probe00"
    shutil.copytree(out / sessions[0]["path"], folder)
    (folder / "clusters.label.npy").unlink()
    report = ingest(entry(tmp_path / "nolabel", name="nolabel", one=None), settings, progress=False)
    assert len(report.failed) == 1
    assert "no quality labels" in report.failed[0].error and "probe00" in report.failed[0].error


def test_one_collection_globs_select_probe_collections(settings, ibl_sim, tmp_path):
    out, sessions = ibl_sim
    root = tmp_path / "two_probes"
    shutil.copytree(out / "alf", root)
    for s in sessions:
        probe00 = root / s["path"].split("/", 1)[1]
        shutil.copytree(probe00, probe00.parent / "probe01")
    for f in root.glob("*.pqt"):
        f.unlink()
    build_one_cache(root)
    exact = discover(entry(root, one={"mode": "local", "collection": "alf/probe00"}), settings)
    both = discover(entry(root, one={"mode": "local", "collection": "alf/probe0?"}), settings)
    assert {i.extra["collection"] for i in exact} == {"alf/probe00"} and len(exact) == len(sessions)
    assert {i.extra["collection"] for i in both} == {"alf/probe00", "alf/probe01"} and len(both) == 2 * len(sessions)


# ---------------------------------------------------------------- real IBL spikes


def ibl_entry(uri: str) -> CatalogEntry:
    return CatalogEntry.of(
        name="ibl_excerpt", kind="alf", uri=uri, ingest={"window": {"mode": "chunks", "chunk_s": 1.0}}
    )


@needs_real_data
def test_ibl_alf_excerpt_chunks_hold_exactly_each_clusters_spikes(ray_cluster, settings):
    report = ingest(ibl_entry(str(IBL_EXCERPT)), settings, progress=False)
    assert report.ok, report.failed
    times = np.load(IBL_EXCERPT / "spikes.times.npy")
    clusters = np.load(IBL_EXCERPT / "spikes.clusters.npy")
    assert report.card.counts.spikes == len(times) == 124_905
    assert report.card.counts.units == len(np.unique(clusters)) == 289
    df = report_rows(report).sort("t_start")
    starts = df["t_start"].to_numpy()
    ends = np.append(starts[1:], starts[-1] + 1.0)  # fixed chunks tile the session
    for row, end in zip(df.iter_rows(named=True), ends, strict=True):
        grid = np.array(row["counts"]).reshape(row["n_units"], row["n_bins"])
        m = (times >= row["t_start"]) & (times < end)
        ids = np.array([int(u.rsplit("/", 1)[1]) for u in row["unit_ids"]])
        want = np.bincount(clusters[m], minlength=clusters.max() + 1)[ids]
        assert np.array_equal(grid.sum(axis=1), want), row["sample_id"]


@needs_real_data
def test_unsorted_nan_and_mismatched_alf_arrays_are_refused(ray_cluster, settings, tmp_path):
    root = tmp_path / "raw" / "alf"
    for name, edit in {
        "mismatched": lambda t, c: (t, c[:-10]),
        "unsorted": lambda t, c: (t[::-1].copy(), c),
        "nan": lambda t, c: (np.where(np.arange(len(t)) == 5, np.nan, t), c),
        "good": lambda t, c: (t, c),
    }.items():
        d = root / name
        d.mkdir(parents=True)
        t, c = edit(np.load(IBL_EXCERPT / "spikes.times.npy"), np.load(IBL_EXCERPT / "spikes.clusters.npy"))
        np.save(d / "spikes.times.npy", t)
        np.save(d / "spikes.clusters.npy", c)
    entry = CatalogEntry.of(name="alf_bad", kind="alf", uri=str(root), ingest={"window": {"mode": "chunks"}})
    report = ingest(entry, settings, progress=False)
    failed = {f.rel: f.error for f in report.failed}
    assert set(failed) == {"mismatched", "unsorted", "nan"}
    assert "spikes.clusters has shape" in failed["mismatched"]
    assert "not sorted" in failed["unsorted"] and "not finite" in failed["nan"]
    assert report.card.counts.items_ok == 1
