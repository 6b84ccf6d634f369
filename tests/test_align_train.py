"""align/train: alignment training as the platform runs it, a Ray Train ``TorchTrainer`` on the session cluster,
tracked in MLflow with its figures and a weights-only model that reloads to the same embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.align import N_TEST, config
from neurobridge.align.encoder_train import load_aligned_model
from neurobridge.align.experiment import run_alignment
from neurobridge.align.projector import project

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ray_train_alignment_beats_chance_tenfold_and_tracks_figures_and_a_loadable_model(visual, tmp_path):
    from mlflow.tracking import MlflowClient

    st_ = visual["settings"]
    cfg = config(
        visual,
        name="ray",
        projector={"epochs": 10, "patience": 5},
        scaling={"backend": "ray", "num_workers": 1},
        region_sets={"all": None},
    )
    result = run_alignment(cfg, st_)
    s = result.summary()["all"]
    assert s["n_candidates"] == N_TEST and s["image_top1"] >= 10 * s["image_chance1"]
    client = MlflowClient(st_.mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["all.fit.tokens_per_s"] == s["tokens_per_s"] > 0
    epochs = client.get_metric_history(result.run_id, "all.train.loss")  # logged live by rank 0, once per epoch
    assert sorted(m.step for m in epochs) == [h["epoch"] for h in result.results["all"].fit.history]
    arts = {a.path for folder in ("plots", "model") for a in client.list_artifacts(result.run_id, folder)}
    assert {
        "plots/all_retrieval.png",
        "plots/all_reconstruction.png",
        "model/projector_all.pt",
        "model/align_model.json",
    } <= arts
    card = json.loads(
        Path(client.download_artifacts(result.run_id, "model/align_model.json", str(tmp_path))).read_text()
    )
    assert card["files"] == {"all": "projector_all.pt"} and card["config"]["scaling"]["backend"] == "ray"
    assert card["test"]["all"]["image_top1"] == s["image_top1"]
    assert list(Path(st_.store, "runs").glob("ray-all-*/checkpoint_*")), "rank 0's checkpoint under <store>/runs"
    weights = client.download_artifacts(result.run_id, "model/projector_all.pt", str(tmp_path))
    again = load_aligned_model(weights)  # torch.load(weights_only=True) inside
    test = result.data.test
    assert np.allclose(project(again, test)[0], project(result.results["all"].fit.model, test)[0], atol=1e-6)
