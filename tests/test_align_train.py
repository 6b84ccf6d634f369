"""Alignment training as the platform runs it: a Ray Train ``TorchTrainer`` on the session cluster, tracked in
MLflow with the figures and a weights-only model; and an encoder trained with the projector (its last layers, or
all of it from scratch) on the raw stimulus windows, where exactly the weights meant to train are the ones that move.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from neurobridge.align.config import AlignConfig, ConfigError, EncoderSpec, load_yaml
from neurobridge.align.dataset import build_alignment_data
from neurobridge.align.encoder_train import build_encoder_projector, load_aligned_model, session_specs
from neurobridge.align.experiment import run_alignment
from neurobridge.align.projector import fit_projector, project
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest
from test_align import WINDOWS, simulate_visual, visual_entry

N_IMAGES, REPEATS, N_TEST, N_VAL = 200, 3, 40, 20


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def visual(ray_cluster, tmp_path_factory):
    """One simulated V1/V4/IT session (IT carries the embedding most), ingested; a small masked model checkpoint
    whose vocabularies know the session (the 'pretrained' encoder)."""
    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.models.config import ModelConfig
    from neurobridge.models.ndt import MaskedNeuralModel
    from neurobridge.models.vocab import Vocabularies

    base = tmp_path_factory.mktemp("align_train")
    st_ = get_settings(
        store=str(base / "store"), raw_root=str(base / "raw"), mlflow_uri=f"sqlite:///{base / 'mlflow.db'}"
    )
    simulate_visual(base / "sim", N_IMAGES, REPEATS, (0.7, 1.5))
    assert ingest(visual_entry("vis", base / "sim"), st_, progress=False).ok
    vocabs = Vocabularies()
    vocabs.session.add(["vismouse00_s00"])
    vocabs.subject.add(["vismouse00"])
    vocabs.region.add(["V1", "V4", "IT"])
    vocabs.dataset.add(["vis"])
    torch.manual_seed(123)  # not the scratch seed: a 'pretrained' encoder is never the fresh init
    model = MaskedNeuralModel(ModelConfig(neurons_per_token=4, d_model=16, depth=2, heads=2), vocabs)
    save_checkpoint(str(base / "model.pt"), model, vocabs)
    return {"settings": st_, "sim": base / "sim", "model": base / "model.pt"}


def config(visual, **kw) -> AlignConfig:
    ids = [f"frame_{i:03d}" for i in range(N_IMAGES)]
    data = {
        "datasets": ["vis"],
        "windows": WINDOWS,
        "embeddings": {"npy": str(visual["sim"] / "visual/images/embeddings.npy"), "ids": ids, "id_prefix": "sim_ns"},
        "split": {"rule": "hash", "n_test": N_TEST, "n_val": N_VAL},
        **kw.pop("data", {}),
    }
    return AlignConfig.model_validate({"data": data, "subset_candidates": [20], "subset_draws": 20, **kw})


# ---------------------------------------------------------------------------------------------------- Ray Train


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


# ---------------------------------------------------------------------------------------------------- encoder


def _encoder_fit(visual, train: str, regions=None, epochs: int = 6):
    st_ = visual["settings"]
    cfg = config(
        visual,
        data={"encoder": {"checkpoint": str(visual["model"]), "train": train, "device": "cpu"}},
        projector={"epochs": epochs, "patience": None, "batch_size": 64},
    )
    data = build_alignment_data(cfg.data, st_).select_regions(regions)
    model = build_encoder_projector(
        data.train,
        session_specs(data, data.train),
        data.dim,
        cfg.data.encoder,
        cfg.projector,
        visual["model"].read_bytes(),
    )
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    fit = fit_projector(data.train, data.val, cfg.projector, device="cpu", model=model)
    after = model.encoder.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    return data, fit, before, moved


def test_last_layers_moves_only_the_last_encoder_layer_and_the_loss_falls(visual):
    data, fit, _, moved = _encoder_fit(visual, "last_layers")
    (session,) = data.sessions.values()
    n_units = len(session.unit_regions)
    assert data.train.blocks[0].x.shape[1] == n_units * session.context["n_bins"]  # raw windows, not pooled
    assert moved and all(k.startswith(("encoder.layers.1.", "enc_norm.")) for k in moved)
    assert not any(k.startswith(("encoder.layers.0.", "in_proj.", "region_emb.")) for k in moved)
    losses = [h["loss"] for h in fit.history]
    assert losses[-1] < losses[0]


def test_scratch_starts_from_a_random_init_and_trains_the_whole_encoder_but_not_the_decoder(visual):
    from neurobridge.models.checkpoint import load_checkpoint

    _, fit, before, moved = _encoder_fit(visual, "scratch", regions=["IT"], epochs=4)
    pretrained, _, _ = load_checkpoint(str(visual["model"]))
    assert not torch.equal(before["in_proj.weight"], pretrained.state_dict()["in_proj.weight"])
    assert {"in_proj.weight", "encoder.layers.0.linear1.weight", "encoder.layers.1.linear1.weight"} <= moved
    assert not any(k.startswith(("decoder.", "count_head.", "mua_head.")) for k in moved)
    assert fit.history[-1]["loss"] < fit.history[0]["loss"]


def test_an_encoder_trained_with_its_projector_saves_weights_only_and_reloads_identically(visual, tmp_path):
    from neurobridge.align.encoder_train import save_encoder_projector

    data, fit, _, _ = _encoder_fit(visual, "last_layers", regions=["V4", "IT"], epochs=1)
    save_encoder_projector(fit.model, str(tmp_path / "m.pt"))
    again = load_aligned_model(str(tmp_path / "m.pt"))
    assert np.allclose(project(again, data.test)[0], project(fit.model, data.test)[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------------- config, CLI


def test_config_errors_name_the_key_and_the_nearest_valid_one(tmp_path):
    path = tmp_path / "align.yaml"
    path.write_text("data: {datasets: [vis], embeddings: {simulation: sim}}\n")
    with pytest.raises(ConfigError, match="backnd.*backend"):
        load_yaml(AlignConfig, path, {"scaling.backnd": "local"})
    with pytest.raises(ConfigError, match="train"):
        load_yaml(AlignConfig, path, {"data.encoder": {"checkpoint": "m.pt", "train": "partly"}})
    assert load_yaml(AlignConfig, path).scaling.backend == "ray"  # the CLI and jobs train on Ray Train
    assert EncoderSpec(checkpoint="m.pt", train="scratch").init == "random"


def test_the_align_command_prints_retrieval_beside_chance_and_refuses_a_misspelt_key(visual, tmp_path, monkeypatch):
    from neurobridge.cli import app
    from typer.testing import CliRunner

    st_ = visual["settings"]
    for var, value in (
        ("NB_STORE", st_.store),
        ("NB_RAW", str(visual["sim"].parent)),
        ("NB_MLFLOW_URI", st_.mlflow_uri),
    ):
        monkeypatch.setenv(var, value)
    path = tmp_path / "align.yaml"
    path.write_text(
        f"name: cli\ndata:\n  datasets: [vis]\n  embeddings: {{simulation: sim}}\n  windows: {json.dumps(WINDOWS)}\n"
        f"  split: {{rule: hash, n_test: {N_TEST}, n_val: {N_VAL}}}\nregion_sets: {{all: null, IT: [IT]}}\n"
        "subset_candidates: [20]\n"
    )
    runner = CliRunner()
    ok = runner.invoke(
        app, ["align", "--config", str(path), "--set", "scaling.backend=local", "--set", "projector.epochs=10"]
    )
    assert ok.exit_code == 0, ok.output
    assert f"retrieval among {N_TEST} test images" in ok.output and f"{1 / N_TEST:.3f}" in ok.output
    bad = runner.invoke(app, ["align", "--config", str(path), "--set", "projectr.epochs=1"])
    assert bad.exit_code == 2 and "projectr" in bad.output and "projector" in bad.output
