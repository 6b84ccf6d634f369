"""tracking/registry: a finished pretrain run → a registered version with its lineage, marked candidate, promoted
and loaded by alias; a failed run, a missing alias and a tracking server that is down are refused clearly.

The runs are made the way ``train.pretrain`` makes one (helpers.registry.pretrain_run), without Ray Train's start-up."""

from __future__ import annotations

import socket
import time

import numpy as np
import pyarrow as pa
import pytest
from helpers.registry import pretrain_run
from neurobridge.inference import registrable
from neurobridge.inference.embed import EmbedConfig, embed
from neurobridge.store.read import iter_local, sources
from neurobridge.store.rows import ROW_COLUMNS
from neurobridge.tracking import registry
from neurobridge.tracking.mlflow_run import TrackingError
from neurobridge.tracking.registry import RegistryError


@pytest.fixture(scope="module")
def store(registry_store):
    """This file's store: two simulated reaching sessions ingested as r_nwb, with MLflow (conftest)."""
    return registry_store


def test_register_tags_lineage_and_marks_the_candidate(store, registered):
    run_id, info = registered
    assert info.version == "1" and info.aliases == ["candidate"] and info.run_id == run_id
    version = sources(store, ["r_nwb"])[0].ref.version
    assert info.tags["dataset.r_nwb"] == version and info.tags["kind"] == "pretrain"
    assert len(info.tags["config_hash"]) == 16 and info.tags["git_commit"]
    assert float(info.tags["metric.loss"]) > 0 and info.tags["metric.step"] == "4"
    listed = registry.list_versions(store)
    assert [(v.name, v.version, v.aliases) for v in listed] == [("encoder", "1", ["candidate"])]


def test_promote_then_load_by_alias_embeds_windows(store, registered):
    second = registrable.register(pretrain_run(store, "reg-b"), "encoder", settings=store)
    assert second.version == "2" and second.aliases == ["candidate"]  # the alias moved to the new version
    champ = registry.promote("encoder", "champion", version="1", settings=store)
    assert champ.version == "1" and "champion" in champ.aliases
    model, info = registry.load("models:/encoder@champion", store)
    assert info.version == "1"
    src = sources(store, ["r_nwb"])[0]
    rows = pa.Table.from_batches(list(iter_local(store, src, "test", ROW_COLUMNS))).slice(0, 3).to_pandas()
    out = model.predict(rows)
    assert out.shape == (3, 32) and np.isfinite(out).all()


def test_a_failed_run_is_refused(store):
    run_id = pretrain_run(store, "reg-failed", ok=False)
    with pytest.raises(RegistryError, match=r"is FAILED: only FINISHED runs"):
        registrable.register(run_id, "encoder", settings=store)


def test_a_missing_alias_lists_the_ones_that_exist(store, registered):
    with pytest.raises(RegistryError, match=r"encoder has no alias 'prod'; its aliases: @candidate → v\d"):
        registry.load("models:/encoder@prod", store)
    with pytest.raises(RegistryError, match=r"no registered model 'nope'; registered: encoder"):
        registry.resolve("models:/nope@champion", store)


def test_a_tracking_server_that_is_down_fails_at_start(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    down = store.model_copy(update={"mlflow_uri": f"http://127.0.0.1:{port}"})
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port} is not reachable"):
        registry.list_versions(down)
    assert time.perf_counter() - t0 < 10  # not MLflow's minutes of retries
    with pytest.raises(TrackingError, match="not reachable"):
        embed(EmbedConfig(model="models:/encoder@champion", dataset="r_nwb"), down, progress=False)
