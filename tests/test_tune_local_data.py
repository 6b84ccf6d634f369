"""tune/local_data: in-process trials train on exactly the rows the Ray Data pipeline mixes, for each mixing rule."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def store(ablation_store):
    """This file's store: simulated reaching sessions pinned as mixture 'demo' (conftest)."""
    return ablation_store


@pytest.mark.parametrize("rule", ["sqrt", "proportional"])
def test_in_process_trials_train_on_exactly_the_rows_the_ray_data_pipeline_mixes(store, rule):
    from collections import Counter

    from neurobridge.store.read import Mixing, epoch_plan, ray_dataset, sources
    from neurobridge.store.rows import ROW_COLUMNS
    from neurobridge.tune.local_data import mixed_rows

    srcs = sources(store, [], "demo")
    local = mixed_rows(store, srcs, Mixing(rule, None, seed=5))
    ray_rows = ray_dataset(store, srcs, "train", Mixing(rule, None, 5), ROW_COLUMNS).to_pandas()
    assert Counter(local.column("sample_id").to_pylist()) == Counter(ray_rows["sample_id"])
    rows = {s.name: s.rows("train") for s in srcs}
    plan = epoch_plan(rows, rule)
    got = Counter(local.column("dataset").to_pylist())
    for name, n in rows.items():
        assert got[name] == pytest.approx(plan[name] * n, rel=0.15)
