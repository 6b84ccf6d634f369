"""storage: fsspec locations, local and S3 alike (moto's HTTP server: the same rows either way, reruns no-ops),
atomic commits that never leave a partial file looking complete, and paths confined to the store."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import IBL_EXCERPT, MC_MAZE, needs_real_data
from neurobridge.catalog import CatalogEntry
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest
from neurobridge.storage import StoreError, filesystem, join, open_atomic
from neurobridge.store.versions import resolve_dataset
from neurobridge.workflows.inspect import session_summaries


@pytest.fixture()
def s3(s3_endpoint):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    bucket = f"nb-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    return fs, bucket


def counts_by_sample(path, settings):
    ref = resolve_dataset(settings, path)
    out = {}
    for part in ref.card.files:
        from neurobridge.storage import filesystem, join

        fs, p = filesystem(join(ref.path, part), settings)
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=["sample_id", "counts"])
        for sid, c in zip(t["sample_id"].to_pylist(), t["counts"].to_pylist(), strict=True):
            out[sid.split("/", 1)[1]] = np.asarray(c)
    return out


@needs_real_data
def test_nwb_and_alf_stream_from_s3_into_an_s3_store(ray_cluster, s3, s3_endpoint, tmp_path):
    fs, bucket = s3
    fs.put(str(MC_MAZE), f"{bucket}/raw/nlb/{MC_MAZE.name}")
    fs.put(str(IBL_EXCERPT), f"{bucket}/raw/ibl/", recursive=True)
    remote = get_settings(store=f"s3://{bucket}/store", s3_endpoint=s3_endpoint, raw_root=f"s3://{bucket}/raw")
    local = get_settings(store=str(tmp_path / "store"))
    nwb = dict(name="mc", kind="nwb", ingest={"window": {"mode": "intervals", "post_s": 0.7}})
    alf = dict(name="ibl", kind="alf", ingest={"window": {"mode": "chunks"}})

    r_nwb = ingest(CatalogEntry.of(**nwb, uri="nlb"), remote, progress=False)  # relative: under NB_RAW on S3
    r_alf = ingest(CatalogEntry.of(**alf, uri=f"s3://{bucket}/raw/ibl"), remote, progress=False)
    assert r_nwb.ok and r_alf.ok, (r_nwb.failed, r_alf.failed)
    assert r_nwb.path.startswith(f"s3://{bucket}/store/tokens/mc/")
    assert fs.exists(f"{bucket}/store/tokens/mc/{r_nwb.version}/_dataset.json")
    assert r_nwb.card.counts.spikes == 32_324 and r_alf.card.counts.spikes == 124_905

    # identical rows to a local ingest of the same files
    l_nwb = ingest(CatalogEntry.of(**nwb, uri=str(MC_MAZE.parent)), local, progress=False)
    a, b = counts_by_sample("mc", remote), counts_by_sample("mc", local)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert l_nwb.card.counts == r_nwb.card.counts

    again = ingest(CatalogEntry.of(**nwb, uri="nlb"), remote, progress=False)
    assert (again.version, again.processed) == (r_nwb.version, 0)
    sessions = session_summaries(resolve_dataset(remote, "ibl"), remote)
    assert sum(s.spikes for s in sessions) == 124_905


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
