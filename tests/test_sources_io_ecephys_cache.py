"""sources/io/ecephys_cache: Allen Visual Coding Neuropixels: a simulated cache in a public moto bucket lists and
ingests (NWB reader, Allen unit filters) as pynwb reads it, unsigned beside a signed store; allensdk lists the same."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import REPO
from neurobridge.catalog import CatalogEntry, IngestConfig, load_file
from neurobridge.config import get_settings
from neurobridge.ingest.item import process_item
from neurobridge.ingest.pipeline import ingest
from neurobridge.sim.allen import AllenSimConfig, simulate_allen_cache
from neurobridge.sources import discover, open_source
from neurobridge.storage import filesystem, join

PREFIX = "visual-coding-neuropixels/ecephys-cache"


def allen_entry(uri: str, **nwb_cache) -> CatalogEntry:
    """The real catalog entry (catalog/allen_vcn.yaml), pointed at a test copy of the cache."""
    (entry,) = load_file(REPO / "catalog" / "allen_vcn.yaml")
    data = entry.model_dump(exclude={"source_file"})
    data["uri"] = uri
    data["nwb"]["cache"].update(nwb_cache)
    return CatalogEntry.of(**data)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Two natural-scenes sessions and one functional-connectivity session, Allen cache layout, on local disk."""
    root = tmp_path_factory.mktemp("allen") / "ecephys-cache"
    truth = simulate_allen_cache(str(root), AllenSimConfig(seed=3))
    return root, truth


@pytest.fixture(scope="module")
def bucket(tree, s3_endpoint):
    """The tree uploaded to a bucket laid out like Allen's: public-read objects (anonymous GET works), except the
    LFP files, which stay private so that reading one anonymously would fail."""
    root, truth = tree
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    name = f"allen-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    fs.put(str(root) + "/", f"{name}/{PREFIX}/", recursive=True)
    fs.chmod(name, "public-read")  # anonymous listing (after the upload: moto lets objects inherit it otherwise)
    lfp = {f"{name}/{PREFIX}/{p}" for s in truth["sessions"] for p in s["lfp"]}
    for key in fs.find(f"{name}/{PREFIX}"):
        if key not in lfp:
            fs.chmod(key, "public-read")
    return name, lfp


def pynwb_truth(path: Path) -> dict:
    """What pynwb (an independent reader) says about a session: unit → region via peak channel id, metrics,
    presentations, spike times."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        units = nwb.units.to_dataframe()
        elec = nwb.electrodes.to_dataframe()
        label = "ecephys_structure_acronym" if "ecephys_structure_acronym" in elec else "location"
        regions = {str(u): str(elec.loc[c, label]) for u, c in zip(units.index, units["peak_channel_id"], strict=True)}
        ns = nwb.intervals.get("natural_scenes_presentations")
        pres = None if ns is None else ns.to_dataframe()[["start_time", "frame"]]
        return {"units": units, "regions": regions, "presentations": pres, "session": nwb.session_id}


def passes_allen_defaults(units) -> np.ndarray:
    """allensdk 2.16's default filters, written out independently of the reader (NaN fails)."""
    return (
        (units["quality"] == "good").to_numpy()
        & (units["isi_violations"] <= 0.5).to_numpy()
        & (units["amplitude_cutoff"] <= 0.1).to_numpy()
        & (units["presence_ratio"] >= 0.95).to_numpy()
    )


def read_rows(report, settings) -> list[dict]:
    rows = []
    for part in report.card.files:
        fs, p = filesystem(join(report.path, part), settings)
        with fs.open(p, "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return rows


def test_allen_cache_in_a_public_bucket_ingests_through_ray(ray_cluster, tree, bucket, s3_endpoint, tmp_path):
    root, truth = tree
    name, lfp = bucket
    store_bucket = f"store-{uuid.uuid4().hex[:8]}"  # private: the store's requests must be signed
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True).mkdir(store_bucket)
    settings = get_settings(store=f"s3://{store_bucket}/store", s3_endpoint=s3_endpoint, raw_root=str(tmp_path))
    entry = allen_entry(f"s3://{name}/{PREFIX}/", session_types=[])  # list every session, even without scenes
    entry = entry.model_copy(update={"storage": entry.storage.model_copy(update={"endpoint_url": s3_endpoint})})

    report = ingest(entry, settings, progress=False)

    # listing: exactly the session files named by sessions.csv; the private LFP objects were never touched
    sessions = {s["path"]: s for s in truth["sessions"]}
    fs, vdir = filesystem(join(report.path, "_items"), settings)
    records = {r["rel"]: r for r in (json.loads(fs.cat(p)) for p in fs.glob(f"{vdir}/*.json"))}
    assert set(records) == set(sessions)
    assert not any("lfp" in r["uri"] for r in records.values()) and lfp
    # the functional_connectivity session fails alone, naming the missing table and what the file has
    (fc,) = [s for s in truth["sessions"] if s["session_type"] == "functional_connectivity"]
    assert [f.uri for f in report.failed] == [f"s3://{name}/{PREFIX}/{fc['path']}"]
    error = report.failed[0].error
    assert "natural_scenes_presentations" in error and "drifting_gratings_75_repeats_presentations" in error
    assert records[fc["path"]]["meta"]["session_type"] == "functional_connectivity"

    blanks = sum(f == -1 for s in truth["sessions"] if s["frames"] for f in s["frames"])
    assert report.card.counts.excluded_windows == blanks > 0
    rows = read_rows(report, settings)
    by_session = defaultdict(list)
    for r in rows:
        by_session[r["session"]].append(r)
    natural = [s for s in truth["sessions"] if s["session_type"] == "brain_observatory_1.1"]
    assert set(by_session) == {str(s["id"]) for s in natural}
    split_of: dict[str, set] = defaultdict(set)
    for s in natural:
        ref = pynwb_truth(root / s["path"])
        rec = records[s["path"]]
        sid = ref["session"]
        got = sorted(by_session[sid], key=lambda r: r["t_start"])
        units = ref["units"]
        keep = passes_allen_defaults(units)
        # quality filter: the kept units are exactly those passing every default, and the record counts each rule
        kept_ids = {str(u) for u in units.index[keep]}
        assert {u.rsplit("/", 1)[1] for u in got[0]["unit_ids"]} == kept_ids
        assert 0 < len(kept_ids) < len(units)
        removed = rec["stats"]["unit_filter"]["removed_by"]
        assert removed["quality"] == int((units["quality"] != "good").sum())
        assert removed["amplitude_cutoff"] == int((~(units["amplitude_cutoff"] <= 0.1)).sum())  # NaN removed
        assert removed["presence_ratio"] == int((units["presence_ratio"] < 0.95).sum())
        assert removed["isi_violations"] == int((units["isi_violations"] > 0.5).sum())
        assert rec["stats"]["unit_filter"]["units_kept"] == len(kept_ids) == rec["units"]
        # regions: each unit's peak channel id → electrodes row with that id → its structure (grey → unknown)
        expected = {f"allen_vcn/{sid}/{u}": ref["regions"][u].replace("grey", "unknown") for u in kept_ids}
        assert dict(zip(got[0]["unit_ids"], got[0]["unit_regions"], strict=True)) == expected
        # blanks (frame -1) dropped and counted; one row per image presentation, in time order
        pres = ref["presentations"]
        shown = pres[pres["frame"] >= 0]
        assert rec["excluded_windows"] == int((pres["frame"] == -1).sum()) > 0
        assert len(got) == len(shown) == rec["rows"]
        assert np.allclose([r["t_start"] for r in got], shown["start_time"])
        ids = [f"allen_ns/frame_{int(f):03d}" for f in shown["frame"]]
        assert [r["stimulus_id"] for r in got] == ids
        seen: Counter = Counter()
        for r, i in zip(got, ids, strict=True):
            assert r["repeat"] == seen[i]  # occurrence number of this image in the session
            seen[i] += 1
            split_of[i].add(r["split"])
        # counts: each kept unit's spikes in [start, start + 12 × 20 ms), straight from pynwb's spike times
        order = [u.rsplit("/", 1)[1] for u in got[0]["unit_ids"]]
        for r in got[:: max(1, len(got) // 4)]:
            grid = np.asarray(r["counts"]).reshape(r["n_units"], r["n_bins"])
            for row, u in enumerate(order):
                t = np.asarray(units.loc[int(u), "spike_times"])
                assert grid[row].sum() == int(((t >= r["t_start"]) & (t < r["t_start"] + 0.24)).sum())
    # splits by stimulus id: no image in two splits, across sessions
    assert all(len(v) == 1 for v in split_of.values())
    assert len({next(iter(v)) for v in split_of.values()}) >= 2


@pytest.fixture()
def no_aws_credentials(monkeypatch, tmp_path):
    """No credentials anywhere in the provider chain; s3fs instances made meanwhile are dropped afterwards, so
    that later tests do not inherit a credential-less client."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_allen_reads_are_unsigned_while_the_store_stays_signed(bucket, s3_endpoint, tmp_path, no_aws_credentials):
    """With no credentials anywhere, the Allen entry still lists and opens sessions (its reads are unsigned),
    while the store, which keeps its own signed requests, cannot be reached."""
    name, lfp = bucket
    settings = get_settings(store=f"s3://{name}-store/store", s3_endpoint=s3_endpoint, raw_root=str(tmp_path))
    entry = allen_entry(f"s3://{name}/{PREFIX}/")
    entry = entry.model_copy(update={"storage": entry.storage.model_copy(update={"endpoint_url": s3_endpoint})})
    src_settings = entry.settings_for(settings)

    items = discover(entry, src_settings)
    assert [i.extra["meta"]["session_type"] for i in items] == ["brain_observatory_1.1"] * 2  # catalog skips fc
    with open_source(entry, items[0], src_settings) as src:
        assert len(src.unit_ids) > 0 and src.intervals("natural_scenes_presentations") is not None
    assert src_settings.storage_options(items[0].uri)["anon"] is True
    assert "anon" not in src_settings.storage_options(settings.store)
    fs, store = filesystem(settings.store, src_settings)
    with pytest.raises(Exception, match="credentials"):
        fs.pipe(f"{store}/probe", b"x")
    # the bucket really enforces access: a private object (an LFP file) is refused to anonymous readers
    anon, _ = filesystem(f"s3://{sorted(lfp)[0]}", src_settings)
    with pytest.raises(PermissionError):
        anon.cat(sorted(lfp)[0])
    # as catalogued (endpoint_url: aws), Allen reads go to AWS unsigned while the store keeps the local endpoint
    real = allen_entry("s3://allen-brain-observatory/visual-coding-neuropixels/ecephys-cache/").settings_for(settings)
    assert real.storage_options("s3://allen-brain-observatory/visual-coding-neuropixels/ecephys-cache/x.nwb") == {
        "anon": True
    }
    assert real.storage_options(settings.store) == {"client_kwargs": {"endpoint_url": s3_endpoint}}
    # and without the entry's anon option, the same listing needs credentials that do not exist
    signed = entry.model_copy(update={"storage": entry.storage.model_copy(update={"anon": False})})
    with pytest.raises(Exception, match="credentials"):
        discover(signed, signed.settings_for(settings))


def test_cache_listing_carries_session_metadata_and_names_missing_files(tree, tmp_path):
    root, truth = tree
    copy = tmp_path / "cache"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("probe_*"))
    gone = truth["sessions"][1]
    (copy / gone["path"]).unlink()
    settings = get_settings(store=str(tmp_path / "store"), raw_root=str(tmp_path))
    entry = allen_entry(str(copy))

    items = discover(entry, settings)
    assert [i.rel for i in items] == [s["path"] for s in truth["sessions"][:2]]  # fc skipped by session_types
    meta = items[0].extra["meta"]
    assert meta["session_type"] == "brain_observatory_1.1" and meta["specimen_id"] == str(
        truth["sessions"][0]["specimen_id"]
    )
    rec = process_item(entry, items[1], str(tmp_path / "store" / "v"), settings)
    assert rec.status == "failed" and "listed in the session table (sessions.csv) but no such file" in rec.error

    (copy / "sessions.csv").unlink()  # no table: fall back to the include glob (all sessions present)
    assert [i.rel for i in discover(entry, settings)] == [truth["sessions"][0]["path"], truth["sessions"][2]["path"]]


def test_unit_filter_and_peak_channel_errors_name_the_column(tree, tmp_path):
    root, truth = tree
    settings = get_settings(store=str(tmp_path / "store"), raw_root=str(tmp_path))
    path = tmp_path / "s.nwb"
    shutil.copy(root / truth["sessions"][0]["path"], path)
    entry = allen_entry(str(path))
    item = discover(entry.model_copy(update={"nwb": None}), settings)[0]

    def run(e) -> dict:
        return process_item(e, item, str(tmp_path / "store" / uuid.uuid4().hex), settings).model_dump()

    ingest_cfg = entry.ingest.model_dump()
    ingest_cfg["unit_filter"]["waveform_spread"] = {"max": 100}
    rec = run(entry.model_copy(update={"ingest": IngestConfig(**ingest_cfg)}))
    assert rec["status"] == "failed" and "unit_filter names column 'waveform_spread'" in rec["error"]
    ingest_cfg["unit_filter"]["waveform_spread"]["optional"] = True
    rec = run(entry.model_copy(update={"ingest": IngestConfig(**ingest_cfg)}))
    assert rec["status"] == "ok" and rec["stats"]["unit_filter"]["skipped_rules"] == ["waveform_spread"]

    with h5py.File(path, "r+") as f:  # a peak channel that is not in the electrodes table is an error, not a guess
        f["units/peak_channel_id"][2] = 123
    rec = run(entry)
    assert (
        rec["status"] == "failed" and "peak_channel_id of 1 unit(s)" in rec["error"] and "channel 123" in rec["error"]
    )


# ---------------------------------------------------------------------------------------------------------------
# allensdk, in its own environment
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def allensdk_python():
    """The allensdk venv, installed once per machine/CI run under ~/.cache/neurobridge (or $NB_ALLENSDK_ENV)."""
    from neurobridge.sources.io.allensdk_env import default_env_dir, ensure_env

    t0 = time.perf_counter()
    try:
        python = ensure_env(default_env_dir())
    except RuntimeError as err:
        if "No matching distribution" in str(err) or "ResolutionImpossible" in str(err):
            pytest.skip(f"allensdk cannot be installed on this Python: {str(err)[-300:]}")
        raise
    print(f"allensdk env ready in {time.perf_counter() - t0:.1f} s: {python}")
    return str(python)


def test_allensdk_lists_the_sessions_the_core_ingests(ray_cluster, allensdk_python, tree, tmp_path):
    root, truth = tree
    cache_dir = tmp_path / "cache"
    shutil.copytree(root, cache_dir)
    build = (
        "import sys\n"
        "from allensdk.brain_observatory.ecephys.ecephys_project_api import EcephysProjectFixedApi\n"
        "from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache\n"
        "def refuse(*a, **k):\n    raise RuntimeError('offline')\n"
        "EcephysProjectCache(fetch_api=EcephysProjectFixedApi(), stream_writer=refuse, manifest=sys.argv[1])\n"
    )
    subprocess.run([allensdk_python, "-I", "-c", build, str(cache_dir / "manifest.json")], check=True, timeout=120)
    settings = get_settings(store=str(tmp_path / "store"), raw_root=str(tmp_path))
    via_csv = allen_entry(str(cache_dir), session_types=[])
    via_sdk = allen_entry(str(cache_dir), session_types=[], manifest="manifest.json", allensdk_python=allensdk_python)

    a, b = discover(via_csv, settings), discover(via_sdk, settings)
    assert [(i.key, i.uri, i.rel, i.fingerprint) for i in a] == [(i.key, i.uri, i.rel, i.fingerprint) for i in b]
    for x, y in zip(a, b, strict=True):
        keys = ("session_id", "session_type", "specimen_id", "sex", "age_in_days")
        assert {k: x.extra["meta"][k] for k in keys} == {k: y.extra["meta"][k] for k in keys}

    from neurobridge.sources.io.allensdk_env import list_sessions

    listing = list_sessions(via_sdk.nwb.cache, str(cache_dir))
    assert listing["allensdk"] == "2.16.2"
    report = ingest(via_sdk, settings, progress=False)
    fs, vdir = filesystem(join(report.path, "_items"), settings)
    units = {json.loads(fs.cat(p))["meta"]["session_id"]: json.loads(fs.cat(p)) for p in fs.glob(f"{vdir}/*.json")}
    for s in listing["sessions"]:
        rec = units[str(s["id"])]
        if s["session_type"] == "brain_observatory_1.1":  # allensdk's unit_count uses its default unit filters
            assert rec["status"] == "ok" and rec["units"] == s["unit_count"] > 0
        else:
            assert rec["status"] == "failed"
