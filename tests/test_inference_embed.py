"""inference/embed: `neurobridge embed` with a registered encoder writes one embedding per window of a split,
reproducibly, each equal to the registered pyfunc on that window alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from neurobridge.inference import registrable
from neurobridge.inference.embed import EmbedConfig, embed, read_embeddings
from neurobridge.store.read import iter_local, sources
from neurobridge.store.rows import ROW_COLUMNS
from neurobridge.tracking import registry
from neurobridge.tracking.registry import Promotion


@pytest.fixture(scope="module")
def store(registry_store):
    """This file's store: two simulated reaching sessions ingested as r_nwb, with MLflow (conftest)."""
    return registry_store


@pytest.fixture(scope="module", autouse=True)
def staging_alias_removed_afterwards(store, registered):
    """The test below promotes version 1 to staging; the registry tests expect only their own aliases, so the
    alias goes again when this file is done (the registry is session-wide)."""
    yield
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.mlflow_uri)
    if "staging" in client.get_registered_model("encoder").aliases:
        client.delete_registered_model_alias("encoder", "staging")


def test_embed_writes_one_embedding_per_window_reproducibly(store, registered):
    registrable.promote(Promotion("encoder", "staging", "1"), store)  # an ungated alias: no evaluation needed
    cfg = EmbedConfig(model="models:/encoder@staging", dataset="r_nwb", split="test", name="emb", batch_size=16)
    first = embed(cfg, store, progress=False)
    table, card = read_embeddings(store, "emb")
    src = sources(store, ["r_nwb"])[0]
    windows = pa.Table.from_batches(list(iter_local(store, src, "test", ROW_COLUMNS)))
    expected = sorted(windows.column("sample_id").to_pylist())
    assert sorted(table.column("sample_id").to_pylist()) == expected  # each test window exactly once
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert vectors.shape == (len(expected), 32) and np.isfinite(vectors).all()
    assert card["dim"] == 32 and card["model"]["version"] == "1" and card["counts"]["windows"] == len(expected)
    assert set(table.column("model_version").to_pylist()) == {"1"}
    assert card["counts"]["new_sessions"] == ["monkey00_s01"]  # held out of pretraining: added as fine-tuning does
    assert first.windows_per_s > 0
    model, _ = registry.load("models:/encoder/1", store)  # each window alone through the pyfunc: the same vector
    order = {s: i for i, s in enumerate(table.column("sample_id").to_pylist())}
    alone = model.predict(windows.slice(0, 5).to_pandas())
    rows = [order[s] for s in windows.column("sample_id").to_pylist()[:5]]
    np.testing.assert_allclose(vectors[rows], alone, rtol=1e-4, atol=1e-5)
    embed(cfg, store, progress=False)
    again, card2 = read_embeddings(store, "emb")
    assert card2["files"] != card["files"]  # a new run's parts replaced the old ones
    np.testing.assert_array_equal(np.array(again.column("embedding").to_pylist(), dtype=np.float32), vectors)
