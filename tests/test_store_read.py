"""store/read: training reads the store through dataset versions and mixtures; datasets mix by √N unless told
otherwise (small ones repeat, deterministically), and a missing version or card is a clear error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from helpers.sim import small_sim
from hypothesis import given
from hypothesis import strategies as st
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.pipeline import ingest_many
from neurobridge.sim import simulate
from neurobridge.storage import StoreError
from neurobridge.store.mixtures import write_mixture
from neurobridge.store.read import (
    Mixing,
    epoch_plan,
    iter_local,
    kept,
    mix_rows,
    mixing_weights,
    ray_dataset,
    repeats,
    sources,
)


@pytest.fixture(scope="module")
def store(pretrain_store):
    """This file's store: simulated reaching sessions pinned as mixture 'tiny' (conftest)."""
    return pretrain_store


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers(1, 10**9), min_size=1, max_size=6))
def test_sqrt_weights_sit_between_uniform_and_proportional(rows):
    w = mixing_weights(rows, "sqrt")
    p, u = mixing_weights(rows, "proportional"), mixing_weights(rows, "uniform")
    assert np.isclose(sum(w.values()), 1.0)
    big, small = max(rows, key=rows.get), min(rows, key=rows.get)
    assert u[big] - 1e-12 <= w[big] <= p[big] + 1e-12 and p[small] - 1e-12 <= w[small] <= u[small] + 1e-12
    assert np.allclose([w[k] / w[big] for k in rows], [np.sqrt(rows[k] / rows[big]) for k in rows])


def test_unknown_rule_and_empty_data_are_refused():
    with pytest.raises(ValueError, match="not one of"):
        mixing_weights({"a": 1}, "cubic")
    with pytest.raises(StoreError, match="no rows"):
        mixing_weights({"a": 0}, "sqrt")


def test_sqrt_mixing_weights_and_deterministic_repeats():
    w = mixing_weights({"big": 10_000, "small": 100}, "sqrt")
    assert w["big"] / w["small"] == pytest.approx(10.0)
    assert mixing_weights({"a": 30, "b": 10}, "proportional")["a"] == pytest.approx(0.75)
    plan = epoch_plan({"big": 10_000, "small": 100}, "sqrt")
    assert plan["small"] > 1 > plan["big"]  # the small dataset repeats, the big one is subsampled
    ids = [f"s{i}" for i in range(20_000)]
    r = repeats(ids, 2.3, seed=1)
    assert set(np.unique(r)) == {2, 3} and abs(r.mean() - 2.3) < 0.02
    np.testing.assert_array_equal(r, repeats(ids, 2.3, seed=1))


@given(st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_a_smaller_train_fraction_keeps_a_subset_of_a_larger_ones_rows(a, b):
    """Data-scaling curves compare nested corpora: the rows kept at the smaller share are all kept at the larger."""
    ids = [f"w{i}" for i in range(4000)]
    small, large = kept(ids, min(a, b)), kept(ids, max(a, b))
    assert not (small & ~large).any()
    assert abs(small.mean() - min(a, b)) < 0.04 and kept(ids, 1.0).all()


def test_a_train_fraction_drops_rows_of_its_dataset_only_and_the_same_ones_for_every_seed():
    names = ["a"] * 300 + ["b"] * 200
    table = pa.table({"sample_id": [f"w{i}" for i in range(500)], "dataset": names, "session": ["s"] * 500})
    picked = [mix_rows(table, {"a": 1.0, "b": 1.0}, seed, frozenset(), {"a": 0.25}) for seed in (0, 1)]
    for got in picked:
        ds = got.column("dataset").to_pylist()
        assert ds.count("b") == 200 and 45 < ds.count("a") < 110
    assert picked[0].column("sample_id").to_pylist() == picked[1].column("sample_id").to_pylist()
    a_ids = [i for i, d in zip(table.column("sample_id").to_pylist(), names, strict=True) if d == "a"]
    expected = {i for i, k in zip(a_ids, kept(a_ids, 0.25), strict=True) if k}
    ids, datasets = (picked[0].column(c).to_pylist() for c in ("sample_id", "dataset"))
    assert {i for i, d in zip(ids, datasets, strict=True) if d == "a"} == expected


def test_missing_version_and_missing_card_are_clear_errors(store):
    with pytest.raises(StoreError, match="t_nwb"):
        sources(store, ["t_nwb@v-doesnotexist"])
    with pytest.raises(StoreError):
        sources(store, ["no_such_dataset"])


def test_a_mixture_reads_back_as_mixed_ray_rows(ray_cluster, settings, tmp_path):
    simulate(str(tmp_path / "sim"), small_sim(nwb=(1, 1), alf=(1, 1), units_max=25), progress=False)
    entries = [
        CatalogEntry.of(
            name="big",
            kind="nwb",
            uri=str(tmp_path / "sim/nwb"),
            ingest={"window": {"mode": "chunks", "chunk_s": 0.25}},
        ),
        CatalogEntry.of(
            name="small",
            kind="alf",
            uri=str(tmp_path / "sim/alf"),
            one={"mode": "local"},
            ingest={"window": {"mode": "chunks", "chunk_s": 1.0}},
        ),
    ]
    write_mixture(settings, "m", ingest_many(entries, settings, progress=False))
    srcs = sources(settings, mixture="m")
    rows = {s.name: s.rows("train") for s in srcs}
    assert rows["big"] > 3 * rows["small"] > 0
    local = sum(b.num_rows for s in srcs for b in iter_local(settings, s, "train", ["split"]))
    assert local == sum(rows.values())
    plan = epoch_plan(rows, "sqrt")
    ds = ray_dataset(settings, srcs, "train", Mixing("sqrt"), columns=["dataset", "split"])
    got = {}
    for r in ds.iter_rows():
        assert r["split"] == "train"
        got[r["dataset"]] = got.get(r["dataset"], 0) + 1
    for name, n in rows.items():  # repeats are exact; the fractional part is a random sample
        assert abs(got[name] - plan[name] * n) <= max(3, 0.35 * plan[name] * n)
    assert got["small"] / got["big"] > rows["small"] / rows["big"]  # √N mixing lifts the small dataset
