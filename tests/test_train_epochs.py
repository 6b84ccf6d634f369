"""train/epochs: a worker's batches per epoch — a seeded permutation of rows kept in memory when the epoch is
cached, Ray Data's shuffled stream otherwise; both yield whole, collated batches of the shard's windows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.models.vocab import Vocabularies
from neurobridge.train.batches import CollateWindows
from neurobridge.train.epochs import ShardBatches, permuted


def _rows(n: int, units: int = 3, bins: int = 4) -> list[dict]:
    return [
        {
            "sample_id": f"w{i}",
            "session": "s1",
            "n_units": units,
            "n_bins": bins,
            "counts": np.full(units * bins, i % 5, dtype=np.uint16),
            "mua": None,
            "unit_regions": ["CA1"] * units,
            "unit_ids": [f"u{j}" for j in range(units)],
        }
        for i in range(n)
    ]


def _collate() -> CollateWindows:
    return CollateWindows(Vocabularies(), neurons_per_token=2)


def _ids(batches) -> list[list[str]]:
    return [sorted(b.sample_ids) for b in batches]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), batch=st.integers(1, 9), seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_an_epoch_is_whole_batches_of_distinct_rows_in_an_order_fixed_by_seed_and_epoch(n, batch, seed, epoch):
    rows = _rows(n)
    got = _ids(permuted(rows, batch, _collate(), seed, epoch))
    assert len(got) == n // batch and all(len(b) == batch for b in got)
    flat = [s for b in got for s in b]
    assert len(set(flat)) == len(flat)  # no window twice in an epoch
    assert got == _ids(permuted(rows, batch, _collate(), seed, epoch))  # a resumed run replays the same order


def test_epochs_reshuffle_over_all_rows_not_a_window_of_them():
    rows = _rows(64)
    first, second = (_ids(permuted(rows, 8, _collate(), 0, e)) for e in (0, 1))
    assert first != second
    # a global permutation: the first batch draws from the whole epoch, not from the first rows read
    assert max(int(s[1:]) for s in first[0]) >= 16


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{**r, "counts": r["counts"].tolist()} for r in rows])


def test_a_cached_epoch_is_read_once_and_permuted_in_memory(ray_cluster):
    import ray.data

    ds = ray.data.from_arrow(_table(_rows(40))).materialize()
    source = ShardBatches(ds, _collate(), batch_size=8, seed=3, cached=True)
    epochs = [_ids(source(e)) for e in range(2)]
    rows = source._rows
    assert len(rows) == 40 and source.rows() is rows  # the read happened once
    assert epochs[0] != epochs[1] and all(len(e) == 5 for e in epochs)
    assert sorted(s for b in epochs[0] for s in b) == sorted(f"w{i}" for i in range(40))


def test_a_streamed_epoch_uses_ray_datas_shuffle_and_yields_whole_batches(ray_cluster):
    import ray.data

    ds = ray.data.from_arrow(_table(_rows(30)))
    got = _ids(ShardBatches(ds, _collate(), batch_size=8, seed=3, cached=False)(0))
    assert [len(b) for b in got] == [8, 8, 8]  # drop_last: the 6 left over wait for the next epoch
    assert len({s for b in got for s in b}) == 24


def test_collation_errors_name_the_window():
    bad = _rows(2)
    bad[1]["counts"] = np.zeros(5, dtype=np.uint16)
    with pytest.raises(ValueError, match="w1"):
        list(permuted(bad, 2, _collate(), 0, 0))
