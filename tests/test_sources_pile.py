"""sources/pile: Neural Pile shards, re-windowed exactly from local disk and S3, in bounded memory, bad rows named."""

from __future__ import annotations

import tracemalloc
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.catalog import CatalogEntry
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest
from neurobridge.sim.pile import PileRow, nested_counts, write_demo_shards, write_shard
from neurobridge.sources import SourceError, discover
from neurobridge.sources.pile import PileSource, shard_fingerprint, shard_split, window_blocks
from neurobridge.storage import filesystem, join
from neurobridge.store.card import load_item_records

HUMAN = {"sim_human_b": "Homo sapiens"}


def pile_entry(uri: str, **extra) -> CatalogEntry:
    return CatalogEntry.of(
        name=extra.pop("name", "pile"),
        kind="pile",
        uri=uri,
        species="Macaca mulatta",
        ingest={"bin_ms": 20, "window": {"mode": "chunks", "chunk_s": 1.0}, "split": {"val_fraction": 0.5}},
        pile={"species_map": HUMAN, **extra.pop("pile", {})},
        **extra,
    )


def read_rows(report, settings) -> pa.Table:
    tables = []
    for part in report.card.files:
        fs, path = filesystem(join(report.path, part), settings)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables)


def source_by_session(shards: dict) -> dict[str, tuple[str, PileRow, np.ndarray]]:
    out = {}
    for name, pairs in shards.items():
        for row, counts in pairs:
            out[f"{row.source_dataset}/{row.subject_id}/{row.session_id}/{row.segment_id}"] = (name, row, counts)
    return out


def check_rows_equal_source(rows: pa.Table, shards: dict) -> None:
    """Every cell of every kept window equals the source slice; window counts are floor(T / 50) per row."""
    src = source_by_session(shards)
    assert set(rows["session"].to_pylist()) == set(src)  # same ids in two source datasets stay two sessions
    per_session: dict[str, list] = {}
    for r in rows.to_pylist():
        per_session.setdefault(r["session"], []).append(r)
    for session, windows in per_session.items():
        name, row, counts = src[session]
        assert len(windows) == row.n_bins // 50
        splits = {w["split"] for w in windows}
        assert len(splits) == 1  # a segment's windows never straddle splits
        assert splits <= ({"test"} if "test-" in name else {"train", "val"})
        for w in windows:
            first = int(round(w["t_start"] / 0.02))
            assert first % 50 == 0 and (w["n_units"], w["n_bins"]) == (row.n_units, 50)
            got = np.asarray(w["counts"], dtype=np.uint16).reshape(row.n_units, 50)
            assert np.array_equal(got, counts[:, first : first + 50])
            assert w["species"] == HUMAN.get(row.source_dataset, "Macaca mulatta")
            assert w["subject"] == f"{row.source_dataset}/{row.subject_id}"
            assert set(w["unit_regions"]) == {"unknown"}


def test_local_and_s3_shards_ingest_exactly_with_counted_tails_and_reruns_are_noops(ray_cluster, s3_endpoint, tmp_path):
    shards = write_demo_shards(str(tmp_path / "pile"), seed=3)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    bucket = f"pile-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    remote = get_settings(store=f"s3://{bucket}/store", s3_endpoint=s3_endpoint)
    write_demo_shards(f"s3://{bucket}/raw/pile", seed=3, settings=remote)
    local = get_settings(store=str(tmp_path / "store"))

    r_local = ingest(pile_entry(str(tmp_path / "pile")), local, progress=False)
    r_s3 = ingest(pile_entry(f"s3://{bucket}/raw/pile"), remote, progress=False)
    assert r_local.ok and r_s3.ok, (r_local.failed, r_s3.failed)
    assert r_s3.path.startswith(f"s3://{bucket}/store/tokens/pile/")

    rows = read_rows(r_local, local)
    check_rows_equal_source(rows, shards)
    s3_rows = read_rows(r_s3, remote).sort_by("sample_id")
    assert s3_rows["counts"].equals(rows.sort_by("sample_id")["counts"])

    records = load_item_records(r_local.path, local)
    all_rows = [row for pairs in shards.values() for row, _ in pairs]
    assert sum(r.stats["pile_tail_bins_dropped"] for r in records.values()) == sum(r.n_bins % 50 for r in all_rows)
    assert sum(r.stats["pile_tail_cells_dropped"] for r in records.values()) == sum(
        (r.n_bins % 50) * r.n_units for r in all_rows
    )
    assert r_local.card.counts.rows == sum(r.n_bins // 50 for r in all_rows)
    assert set(r_local.card.splits) == {"train", "val", "test"}  # val carved out of train by segment

    again = ingest(pile_entry(str(tmp_path / "pile")), local, progress=False)
    assert (again.version, again.processed, again.skipped) == (r_local.version, 0, 3)


@settings(max_examples=60, deadline=None)
@given(
    n_units=st.integers(0, 7),
    n_native=st.integers(0, 400),
    n_bins=st.integers(1, 30),
    k=st.integers(1, 3),
    max_cells=st.integers(1, 500),
    seed=st.integers(0, 2**16),
)
def test_rewindowing_reproduces_the_row_prefix_exactly_in_bounded_blocks(n_units, n_native, n_bins, k, max_cells, seed):
    counts = np.random.default_rng(seed).integers(0, 256, (n_units, n_native)).astype(np.uint8)
    blocks = list(window_blocks(counts, n_bins, k, max_cells))
    n_windows = n_native // (n_bins * k) if n_units else 0
    assert [w0 for w0, _ in blocks] == list(np.cumsum([0] + [len(b) for _, b in blocks])[:-1])
    assert sum(len(b) for _, b in blocks) == n_windows
    for _, b in blocks:
        assert b.shape[1:] == (n_units, n_bins)
        assert b.size <= max(max_cells, n_units * n_bins)  # one window may exceed a tiny budget, never more
    if n_windows:
        cat = np.concatenate([b for _, b in blocks])  # [W, U, n_bins], windows never cross the row end
        joined = cat.transpose(1, 0, 2).reshape(n_units, n_windows * n_bins)
        used = counts[:, : n_windows * n_bins * k].astype(np.int64)
        expected = used.reshape(n_units, n_windows * n_bins, k).sum(axis=2)  # k = 1: the cells themselves
        assert np.array_equal(joined, expected)


def test_a_shard_is_read_one_row_at_a_time_and_cut_into_blocks_bounded_by_the_budget(tmp_path):
    """Memory by construction: while a block is out, Arrow holds one decoded row (not the shard's row group) and
    NumPy holds about one block; neither grows with the number of rows in the shard."""
    rng = np.random.default_rng(0)
    n_rows, n_units, n_bins = 60, 32, 4_000
    rows = [
        (PileRow("s", "x", str(i), "d", n_units, n_bins), rng.poisson(0.5, (n_units, n_bins)).astype(np.uint8))
        for i in range(n_rows)
    ]
    path = tmp_path / "data" / "train-0.parquet"
    write_shard(str(path), rows, row_group_rows=n_rows)  # one row group holding every row, like hub-written shards
    row_cells, shard_cells = n_units * n_bins, n_rows * n_units * n_bins
    block_cells = n_units * 50 * 10
    entry = pile_entry(str(tmp_path), pile={"block_cells": block_cells})
    arrow_held, n_blocks = [], 0
    tracemalloc.start()
    tracemalloc.reset_peak()
    with PileSource(str(path), entry, get_settings()) as src:
        for block in src.blocks(entry.ingest):
            assert block.values.nbytes <= block_cells
            arrow_held.append(pa.total_allocated_bytes())
            n_blocks += 1
        stats = src.stats()
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n_blocks == n_rows * 8 and stats["pile_rows_read"] == n_rows
    # A decoded row group costs at least 1 byte per cell of every row; Arrow's nested decoder keeps ~16-25
    # bytes per cell of the current row only (levels and values), measured here.
    assert max(arrow_held) < shard_cells
    assert max(arrow_held) < 30 * row_cells + 2_000_000
    assert max(arrow_held) - min(arrow_held) < 2 * row_cells  # flat across 60 rows (holding them: +60 rows)
    assert numpy_peak < 4 * block_cells + 1_000_000  # the [U, T] row is an Arrow view; only blocks are copied


def bad_shard(path, counts_array: pa.Array, drop: str | None = None, n: int | None = None) -> None:
    n = n or len(counts_array)
    cols = {
        "spike_counts": counts_array,
        "subject_id": pa.array(["a"] * n),
        "session_id": pa.array([f"s{i}" for i in range(n)]),
        "segment_id": pa.array(["0"] * n),
    }
    if drop:
        cols.pop(drop)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def test_bad_rows_fail_their_shard_with_file_row_and_reason_while_other_shards_ingest(ray_cluster, tmp_path):
    root = tmp_path / "pile" / "data"
    good = np.arange(3 * 120, dtype=np.uint8).reshape(3, 120)
    ok_row = nested_counts(good)
    write_shard(str(root / "train-good.parquet"), [(PileRow("a", "s", "0", "d", 3, 120), good)])
    ragged = pa.array([[[1, 2, 3], [4, 5]]], type=pa.list_(pa.list_(pa.uint8())))
    bad_shard(root / "train-ragged.parquet", pa.concat_arrays([ok_row, ok_row, ragged]))
    bad_shard(root / "train-floats.parquet", pa.array([[[0.5, 1.0]]], type=pa.list_(pa.list_(pa.float32()))))
    negative = pa.array([[[1, 2, 3], [4, -5, 6]]], type=pa.list_(pa.list_(pa.int16())))
    bad_shard(root / "train-negative.parquet", pa.concat_arrays([nested_counts(good, pa.int16()), negative]))
    bad_shard(root / "train-nosession.parquet", ok_row, drop="session_id")
    expected = {
        "train-ragged.parquet": "row 2: ragged spike_counts: unit 1 has 2 bins but unit 0 has 3",
        "train-floats.parquet": "spike_counts has type list<element: list<element: float>>",
        "train-negative.parquet": "row 1: negative spike count -5 at unit 1, bin 1",
        "train-nosession.parquet": "missing column(s) session_id",
    }

    report = ingest(pile_entry(str(tmp_path / "pile")), get_settings(store=str(tmp_path / "s")), progress=False)
    errors = {f.uri.rsplit("/", 1)[1]: f.error for f in report.failed}
    assert set(errors) == set(expected)
    for name, reason in expected.items():
        assert errors[name].startswith(str(root / name)) and reason in errors[name], errors[name]
    assert report.card.counts.rows == 2  # the good shard's two windows

    skip = pile_entry(str(tmp_path / "pile"), pile={"on_bad_row": "skip"})
    report = ingest(skip, get_settings(store=str(tmp_path / "s2")), progress=False)
    records = {
        r.rel: {**r.model_dump(), **r.stats}
        for r in load_item_records(report.path, get_settings(store=str(tmp_path / "s2"))).values()
    }
    assert records["data/train-ragged.parquet"]["status"] == "ok"
    assert records["data/train-ragged.parquet"]["pile_rows_skipped"] == 1
    assert "row 2: ragged" in records["data/train-ragged.parquet"]["pile_bad_rows"][0]
    assert records["data/train-ragged.parquet"]["rows"] == 4  # the two good rows' windows are kept
    assert records["data/train-floats.parquet"]["status"] == "failed"  # schema problems fail even when skipping


def test_coarser_bins_sum_native_bins_exactly_and_non_multiples_are_refused(tmp_path):
    counts = np.random.default_rng(1).integers(0, 9, (5, 1_000)).astype(np.uint8)
    path = tmp_path / "data" / "test-0.parquet"
    write_shard(str(path), [(PileRow("a", "s", "0", "d", 5, 1_000), counts)])
    entry = CatalogEntry.of(
        name="p", kind="pile", uri=str(tmp_path), ingest={"bin_ms": 40, "window": {"mode": "chunks", "chunk_s": 1.0}}
    )
    with PileSource(str(path), entry, get_settings(), split="test") as src:
        blocks = list(src.blocks(entry.ingest))
    values = np.concatenate([b.values for b in blocks])
    assert values.shape == (20, 5, 25) and {s for b in blocks for s in b.split} == {"test"}
    assert np.array_equal(values[3], counts[:, 150:200].reshape(5, 25, 2).sum(axis=2))  # 1 s = 50 native bins
    assert np.allclose(np.concatenate([b.t_start for b in blocks]), np.arange(20) * 1.0)

    bad = CatalogEntry.of(name="p", kind="pile", uri=str(tmp_path), ingest={"bin_ms": 30})
    with pytest.raises(SourceError, match="bin_ms is 30 but Neural Pile counts are binned at 20 ms"):
        discover(bad, get_settings())


@pytest.mark.parametrize(
    ("rel", "split"),
    [
        ("data/train-00003-of-00012.parquet", "train"),
        ("data/test-00000-of-00001.parquet", "test"),
        ("validation/part-0.parquet", "val"),
        ("data/contest-0.parquet", None),  # a word merely containing 'test' is not a split
    ],
)
def test_the_split_comes_from_the_shard_name(rel, split):
    assert shard_split(rel) == split


def test_fingerprints_use_the_listing_content_tag_of_each_store():
    s3 = {"size": 10, "ETag": '"abc"'}
    hub = {"size": 10, "blob_id": "b1", "lfs": {"sha256": "f00d", "size": 10}}
    assert shard_fingerprint(s3) == "10:abc"
    assert shard_fingerprint(hub) == "10:f00d"
    assert shard_fingerprint({**hub, "lfs": {"sha256": "beef"}}) != shard_fingerprint(hub)
    assert shard_fingerprint({"size": 10, "blob_id": "b2", "lfs": None}) == "10:b2"
