"""tune/local_data: in-process trials train on exactly the rows the Ray Data pipeline mixes, for each mixing rule."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def store(ablation_store):
    """This file's store: simulated reaching sessions pinned as mixture 'demo' (conftest)."""
    return ablation_store


@pytest.mark.parametrize(("rule", "part"), [("sqrt", 1.0), ("proportional", 1.0), ("sqrt", 0.4)])
def test_in_process_trials_train_on_exactly_the_rows_the_ray_data_pipeline_mixes(store, rule, part):
    """Also when one dataset trains on part of its rows (``data.train_fraction``): it is then mixed as a dataset of
    that many rows."""
    from collections import Counter

    from neurobridge.store.read import Mixing, epoch_plan, planned_rows, ray_dataset, sources
    from neurobridge.store.rows import ROW_COLUMNS
    from neurobridge.tune.local_data import mixed_rows

    srcs = sources(store, [], "demo")
    mixing = Mixing(rule, None, 5, fractions={srcs[0].name: part} if part < 1 else {})
    local = mixed_rows(store, srcs, mixing)
    ray_rows = ray_dataset(store, srcs, "train", mixing, ROW_COLUMNS).to_pandas()
    assert Counter(local.column("sample_id").to_pylist()) == Counter(ray_rows["sample_id"])
    rows = planned_rows(srcs, "train", mixing.fractions)
    assert rows[srcs[0].name] == round(part * srcs[0].rows("train"))
    plan = epoch_plan(rows, rule)
    got = Counter(local.column("dataset").to_pylist())
    for name, n in rows.items():
        assert got[name] == pytest.approx(plan[name] * n, rel=0.15)
