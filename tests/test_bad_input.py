"""Bad input fails alone, with the item and the problem named; nothing partial is ever visible as complete."""

from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest
import yaml
from conftest import IBL_EXCERPT, MC_MAZE
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.pipeline import ingest
from neurobridge.storage import StoreError, filesystem, join, open_atomic
from neurobridge.store.versions import resolve_dataset
from typer.testing import CliRunner

pytestmark = pytest.mark.skipif(not MC_MAZE.exists(), reason="shared real-data excerpts not present")


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


EXPECTED = {
    "truncated.nwb": "cannot open as HDF5/NWB",
    "no_index.nwb": "spike_times_index' is missing",
    "nan.nwb": "not finite",
    "negative.nwb": "is negative",
    "unsorted.nwb": "are not sorted",
}


def entry_for(root) -> dict:
    return {
        "name": "broken",
        "kind": "nwb",
        "uri": str(root),
        "ingest": {"window": {"mode": "intervals", "post_s": 0.7}},
    }


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


def test_rerun_retries_only_failed_items(ray_cluster, settings, tmp_path):
    root = broken_nwb_folder(tmp_path / "raw" / "broken")
    entry = CatalogEntry.of(**entry_for(root))
    first = ingest(entry, settings, progress=False)
    again = ingest(entry, settings, progress=False)
    assert again.version == first.version
    assert (again.processed, again.skipped) == (5, 1)  # the good item is not redone


def test_cli_exits_non_zero_and_says_how_many_failed(ray_cluster, tmp_path, monkeypatch):
    from neurobridge.cli import app

    root = broken_nwb_folder(tmp_path / "raw" / "broken")
    cat = tmp_path / "broken.yaml"
    cat.write_text(yaml.safe_dump(entry_for(root)))
    monkeypatch.setenv("NB_STORE", str(tmp_path / "store"))
    result = CliRunner().invoke(app, ["ingest", str(cat), "--no-progress"])
    assert result.exit_code == 1
    assert "5 item(s) failed" in result.output and "_manifest.parquet" in result.output
    assert "truncated.nwb" in result.output


def test_a_crash_mid_write_leaves_nothing_that_looks_complete(tmp_path, settings):
    fs, path = filesystem(str(tmp_path / "part-x.parquet"))
    with pytest.raises(RuntimeError), open_atomic(fs, path) as f:
        f.write(b"half a file")
        raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []
    # a version directory with rows but no card does not exist for readers
    vdir = tmp_path / "store" / "tokens" / "ds" / "v-123"
    vdir.mkdir(parents=True)
    (vdir / "part-a.parquet").write_bytes(b"PAR1")
    with pytest.raises(StoreError, match="no complete version"):
        resolve_dataset(settings, "ds")


def test_paths_escaping_the_store_are_refused(settings):
    for bad in ("../etc", "a/../../b", "/abs"):
        with pytest.raises(StoreError):
            join(settings.store, bad)
    with pytest.raises(StoreError):
        resolve_dataset(settings, "../../etc")
    with pytest.raises(ValueError, match="not a valid store name"):
        CatalogEntry.of(name="../evil", kind="nwb", uri="x")
