"""train/pretrain: pretraining on Ray Train from an ingested store, tracked in MLflow: a run whose worker is killed
resumes onto a clean run's loss curve, and the model of the best validation pass is the one exported.

The training worker process really dies mid-run (``os._exit``); FailureConfig resumes it from the last checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.train import small_cfg
from neurobridge.tracking import mlflow_run
from neurobridge.train.pretrain import pretrain


@pytest.fixture(scope="module")
def store(pretrain_store):
    """This file's store: simulated reaching sessions pinned as mixture 'tiny' (conftest)."""
    return pretrain_store


def test_ray_train_resumes_after_a_worker_is_killed_and_mlflow_holds_the_run(store, tmp_path):
    cfg = small_cfg(name="killed", **{"validation.every": 4})
    drill = store.model_copy(update={"train_fault": f"6:{tmp_path / 'killed.marker'}"})  # NB_FAULT_KILL_WORKER_AT_STEP
    result = pretrain(cfg, drill)
    assert (tmp_path / "killed.marker").read_text().startswith("killed at step 6")  # the worker really died
    assert result.metrics["step"] == 12

    clean = pretrain(small_cfg(name="clean", **{"validation.every": 4}), store)
    killed_hist = dict(mlflow_run.metric_history(store.mlflow_uri, result.run_id, "loss"))
    clean_hist = dict(mlflow_run.metric_history(store.mlflow_uri, clean.run_id, "loss"))
    for step in (8, 10, 12):  # after the restart from the step-4 checkpoint: the same curve as a clean run
        assert killed_hist[step] == pytest.approx(clean_hist[step], rel=1e-4)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset.t_nwb"].startswith("v-") and run.data.tags["git_commit"]
    assert run.data.params["optim.max_steps"] == "12"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for d in ("plots", "model") for a in client.list_artifacts(result.run_id, d)
    }
    assert {"config.json", "plots/loss.png", "model/model.pt"} <= artifacts
    val = dict(mlflow_run.metric_history(store.mlflow_uri, clean.run_id, "val_loss"))
    assert sorted(val) == [4, 8, 12] and all(np.isfinite(v) for v in val.values())  # val passes on rank 0
    exported = torch.load(client.download_artifacts(clean.run_id, "model/model.pt", str(tmp_path)), weights_only=True)
    assert exported["extra"]["step"] == min(val, key=val.get)  # the model of the best val pass is the one exported
    assert exported["extra"]["last_step"] == 12
    assert clean.summary() == (
        f"model: step {exported['extra']['step']} of 12 (lowest val loss {exported['extra']['val_loss']:.4f})"
    )

    # MLflow's own records: the token-store version read, the model as a logged model at the kept step
    run = client.get_run(clean.run_id)
    used = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}  # every version of the mixture
    assert "t_nwb" in used and used == {
        k.removeprefix("dataset."): v for k, v in run.data.tags.items() if k.startswith("dataset.")
    }
    (out,) = run.outputs.model_outputs
    assert out.step == exported["extra"]["step"]
    logged = client.get_logged_model(out.model_id)
    assert logged.status == "READY" and logged.source_run_id == clean.run_id and logged.model_type == "pretrain"
    assert [f.path for f in client.list_logged_model_artifacts(out.model_id)] == ["model.pt"]


def test_two_workers_with_batch_b_train_like_one_worker_with_batch_2b(store):
    """Data-parallel training through Ray Train (2 gloo workers on CPU): each step's loss is one mean over both
    workers' cells (counts and sums all-reduced), so 2 × B follows the loss curve of 1 × 2B within sampling noise
    (different windows and masks per run), and both learn."""
    over = {"optim.max_steps": 20, "optim.warmup_steps": 4, "log_every": 2, "checkpoint_every": 20}
    two = pretrain(small_cfg(name="ddp2", **over, **{"optim.batch_size": 8, "scaling.num_workers": 2}), store)
    one = pretrain(small_cfg(name="ddp1", **over, **{"optim.batch_size": 16, "scaling.num_workers": 1}), store)
    curves = [dict(mlflow_run.metric_history(store.mlflow_uri, r.run_id, "loss")) for r in (two, one)]
    assert all(sorted(c) == list(range(2, 21, 2)) for c in curves)  # rank 0 reported every logged step
    late = [np.mean([c[s] for s in range(12, 21, 2)]) for c in curves]
    early = [np.mean([c[s] for s in (2, 4)]) for c in curves]
    assert late[0] == pytest.approx(late[1], rel=0.12)  # the same objective at the same scale
    assert late[0] < early[0] and late[1] < early[1]  # and both learn


def test_a_config_resolves_to_kernels_in_bins_and_an_epoch_of_at_least_min_epoch_steps_batches(store):
    """What the Ray run, `bench train` and in-process Tune trials all train from (``resolve``): no rows read."""
    from neurobridge.train.pretrain import resolve

    cfg = small_cfg(**{"model.output_smoothing_ms": 60.0, "data.min_epoch_steps": 10_000, "data.heldout_fraction": 0.4})
    r = resolve(cfg, store)
    bin_ms = float(r.srcs[0].ref.card.bin_ms)
    assert r.cfg.model.output_smoothing == pytest.approx(60.0 / bin_ms)  # the kernel the model applies, in bins
    assert cfg.model.output_smoothing == 0.0  # the caller's config is not changed
    assert r.mixing.epoch_rows == 10_000 * cfg.optim.batch_size * cfg.scaling.num_workers
    assert r.mixing.exclude_sessions == frozenset(cfg.data.holdout_sessions)
    assert r.heldout.fraction == 0.4  # the config's held-out fraction, not the default
    assert r.mixing.fractions == {}


def test_a_train_fraction_reaches_the_mixing_and_a_wrong_one_is_named(store):
    from neurobridge.config import ConfigError
    from neurobridge.storage import StoreError
    from neurobridge.train.pretrain import resolve

    name = resolve(small_cfg(), store).srcs[0].name
    assert resolve(small_cfg(**{"data.train_fraction": {name: 0.5}}), store).mixing.fractions == {name: 0.5}
    with pytest.raises(StoreError, match="no_such_dataset"):
        resolve(small_cfg(**{"data.train_fraction": {"no_such_dataset": 0.5}}), store)
    with pytest.raises(ConfigError, match=r"train_fraction shares must lie in \(0, 1\]"):
        small_cfg(**{"data.train_fraction": {name: 1.5}})
