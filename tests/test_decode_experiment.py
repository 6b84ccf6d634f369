"""Semantic decoding on simulated THINGS-fMRI with known answers: the targets (concept top-5 against chance, property
R² against the simulator's oracle, retrieval following the signal the simulator put in each ROI), every decoder,
and the MLflow run with its figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.fmri import fmri_entry, ingest_local, small_config
from neurobridge.config import get_settings
from neurobridge.decode.config import DecodeConfig
from neurobridge.decode.experiment import run_decode
from neurobridge.sim.fmri import FmriSimConfig, RoiSim, default_rois
from neurobridge.sim.fmri_writers import simulate_fmri
from neurobridge.sim.things import ThingsSimConfig


def _decode_cfg(root, names, **kw) -> DecodeConfig:
    base = {
        "data": {
            "datasets": ["sim_fmri"],
            "embeddings": {
                "npy": str(root / "truth/things/embeddings.npy"),
                "ids": str(root / "truth/things/stimulus_ids.json"),
            },
        },
        "labels": {
            "properties": str(root / "things/properties.tsv"),
            "reliability": str(root / "things/property_reliability.tsv"),
        },
        "decoders": ["ridge"],
        "region_sets": {n: [n] for n in names},
        "scaling": {"backend": "local"},
        "linear": {"logistic_decays": [1e-3]},
    }
    return DecodeConfig.model_validate({**base, **kw})


def _subject(tmp_path, cfg: FmriSimConfig, names: list[str]):
    root = tmp_path / "sim_things"
    summary = simulate_fmri(root, cfg, mua=False)
    settings = get_settings(
        store=str(tmp_path / "store"), raw_root=str(root), mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db"
    )
    assert ingest_local(fmri_entry(root, rois=names), settings).ok
    return root, settings, summary["subjects"][0]


def _order_sim(ceilings: list[float]) -> FmriSimConfig:
    centres = [(0.3, 0.3, 0.5), (0.7, 0.3, 0.5), (0.3, 0.7, 0.5), (0.7, 0.7, 0.5)]
    rois = [
        RoiSim(name=n, voxels=40, noise_ceiling=nc, centre=c)
        for n, nc, c in zip("ABCD", ceilings, centres, strict=True)
    ]
    things = ThingsSimConfig(concepts=150, train_images=4, test_concepts=100)
    return FmriSimConfig(grid=(14, 16, 12), sessions=4, rois=rois, volumes=False, things=things)


@pytest.mark.parametrize("ceilings", [[3, 8, 20, 50], [50, 20, 8, 3]], ids=["rising", "reversed"])
def test_retrieval_across_rois_follows_the_signal_the_simulator_put_there(tmp_path, ceilings):
    """Four ROIs carry the image embedding alone at noise ceilings 3 → 50 %; reversing the ceilings reverses the
    ranking of ridge retrieval (top-5 among the 100 test images)."""
    root, settings, _ = _subject(tmp_path, _order_sim(ceilings), list("ABCD"))
    res = run_decode(_decode_cfg(root, "ABCD", tasks=["retrieval"]), settings, track=False, figures=False)
    top5 = {n: res.get(n, "retrieval", "ridge").mean["image_top5"] for n in "ABCD"}
    by_signal = [n for _, n in sorted(zip(ceilings, "ABCD", strict=True))]
    assert [top5[n] for n in by_signal] == sorted(top5.values()), (ceilings, top5)
    assert top5[by_signal[-1]] > 5 * res.get("A", "retrieval", "ridge").mean["image_chance5"]


@pytest.mark.slow
def test_concepts_and_properties_reach_their_targets_against_chance_and_the_oracle(tmp_path):
    """The default ROIs, 300 concepts × 8 training images: IT's concept top-5 is ≥ 10× chance, and lFFA's
    strongest property (the one the oracle decodes best) is within 0.1 of the oracle's R²."""
    things = ThingsSimConfig(concepts=300, train_images=8, test_concepts=100)
    cfg = FmriSimConfig(grid=(14, 16, 12), sessions=4, rois=default_rois(), volumes=False, things=things)
    names = ["V1", "hV4", "lFFA", "IT"]
    root, settings, truth = _subject(tmp_path, cfg, names)
    res = run_decode(_decode_cfg(root, names, tasks=["concept", "properties"]), settings, track=False, figures=False)
    it = res.get("IT", "concept", "ridge").mean
    assert it["n_classes"] == 300 and it["top5"] >= 10 * it["chance5"], it
    oracle = truth["oracle_r2"]["lFFA"]
    best = max(oracle, key=oracle.get)
    got = res.get("lFFA", "properties", "ridge").properties[best]
    assert got["r2"] == pytest.approx(oracle[best], abs=0.1), (best, got, oracle[best])
    assert got["reliability"] == pytest.approx(truth["reliability"][best])


def _tiny_encoder(settings, path) -> str:
    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.models.config import ModelConfig
    from neurobridge.models.ndt import MaskedNeuralModel
    from neurobridge.store.read import sources
    from neurobridge.train.pretrain import vocabularies

    vocabs = vocabularies(sources(settings, ["sim_fmri"]), (), settings)
    model = MaskedNeuralModel(
        ModelConfig(neurons_per_token=8, d_model=16, depth=1, heads=2, decoder_d_model=16), vocabs
    )
    save_checkpoint(str(path), model, vocabs, {"step": 0})
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("tuned", [False, True], ids=["frozen", "tuned"])
def test_every_decoder_runs_and_the_run_is_tracked_with_one_figure(tmp_path, tuned):
    root, settings, _ = _subject(tmp_path, small_config(), ["V1", "hV4", "lFFA", "IT"])
    ckpt = _tiny_encoder(settings, tmp_path / "encoder.pt")
    cfg = _decode_cfg(
        root,
        ["IT"],
        decoders=["ridge", "mlp", "encoder", "cnn3d", "vit3d"],
        encoder={"checkpoint": ckpt, "init": "random", "train": "last_layers" if tuned else "frozen"},
        net={"epochs": 3, "patience": None},
        projector={"epochs": 3, "patience": None},
        volume={"embed_dim": 16, "heads": 2, "depth": 1, "cnn_channels": [4]},
        region_sets={"IT": ["IT"], "all": None},
    )
    res = run_decode(cfg, settings)
    done = [(n, r) for n, rs in res.results.items() for r in rs]
    assert len(done) == 2 * 3 * 5 and not [r for _, r in done if r.skipped]
    for _, r in done:
        head = {"concept": "top5", "properties": "r2_mean", "retrieval": "image_top1"}[r.task]
        assert np.isfinite(r.mean[head]), (r.task, r.decoder)
    vit = res.get("all", "properties", "vit3d").attention
    assert set(vit) == {"V1", "hV4", "lFFA", "IT"} and sum(vit.values()) == pytest.approx(1.0)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "decode"
    assert "IT.concept.encoder.top5" in run.data.metrics and "IT.concept.encoder.chance5" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(res.run_id)} | {
        a.path for f in ("plots", "model") for a in client.list_artifacts(res.run_id, f)
    }
    assert {"plots/decode.png", "decode_summary.json", "model/decoders_IT.pt"} <= artifacts
    summary = json.loads(Path(client.download_artifacts(res.run_id, "decode_summary.json")).read_text())
    assert summary["results"]["IT"][0]["mean"]["chance1"] == pytest.approx(1 / 60)


def test_spike_datasets_decode_the_same_way_and_unanswerable_tasks_say_why(tmp_path):
    """Allen-style natural-scene spikes (the simulator's visual session): retrieval from the last visual area beats
    chance; each image is its own concept there, so concept decoding of unseen test images is skipped, named."""
    from conftest import REPO
    from neurobridge.catalog import resolve
    from neurobridge.sim import SimConfig, simulate

    raw = tmp_path / "raw"
    sim = SimConfig(
        nwb_subjects=0, alf_subjects=0, visual_sessions=1, tvsd=False, pile=False, write_images=False, minutes=1.0
    )
    simulate(str(raw / "sim"), sim, progress=False)
    settings = get_settings(store=str(tmp_path / "store"), raw_root=str(raw))
    assert ingest_local(resolve("sim_visual", REPO / "catalog")[0], settings).ok
    cfg = DecodeConfig.model_validate(
        {
            "data": {
                "datasets": ["sim_visual"],
                "embeddings": {"simulation": "sim"},
                "split": {"rule": "hash", "n_test": 8, "n_val": 4},
            },
            "tasks": ["concept", "retrieval"],
            "decoders": ["ridge"],
            "region_sets": {"VISam": ["VISam"]},
            "scaling": {"backend": "local"},
        }
    )
    res = run_decode(cfg, settings, track=False, figures=False)
    m = res.get("VISam", "retrieval", "ridge").mean
    assert m["n_candidates"] == 8 and m["image_top1"] > 2 * m["image_chance1"]
    assert "never training classes" in res.get("VISam", "concept", "ridge").skipped
