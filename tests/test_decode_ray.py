"""Simulated THINGS-fMRI through the real stack: Ray Data ingest of the shipped catalog entries (both layouts and
the MUA of the same images) → decode on Ray Train → the existing alignment on fMRI → MLflow; the shipped Optuna
and cross-modal ablation specs on Ray Tune."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import REPO
from helpers.fmri import small_config
from neurobridge.catalog import resolve
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest_many
from neurobridge.sim.fmri_writers import simulate_fmri


@pytest.fixture(scope="module")
def world(ray_cluster, tmp_path_factory):
    raw = tmp_path_factory.mktemp("things") / "raw"
    simulate_fmri(raw / "sim_things", small_config(), mua=True)
    home = raw.parent
    settings = get_settings(store=str(home / "store"), raw_root=str(raw), mlflow_uri=f"sqlite:///{home}/mlflow.db")
    entries = [resolve(n, REPO / "catalog")[0] for n in ("sim_fmri", "sim_fmri_volumes", "sim_things_mua")]
    reports = ingest_many(entries, settings, progress=False)
    assert all(r.ok for r in reports), [r.failed for r in reports]
    things = raw / "sim_things"
    paths = {
        "data.embeddings.npy": str(things / "truth/things/embeddings.npy"),
        "data.embeddings.ids": str(things / "truth/things/stimulus_ids.json"),
    }
    labels = {
        "labels.properties": str(things / "things/properties.tsv"),
        "labels.reliability": str(things / "things/property_reliability.tsv"),
    }
    return {
        "settings": settings,
        "reports": dict(zip(["table", "volume", "mua"], reports, strict=True)),
        "paths": paths,
        "labels": labels,
    }


def test_both_layouts_ingest_on_ray_to_the_same_betas(world):
    rows = {
        k: pl.read_parquet(f"{world['reports'][k].path}/part-*.parquet").sort("sample_id") for k in ("table", "volume")
    }
    a, b = rows["table"], rows["volume"]
    assert len(a) == 240 and a["stimulus_id"].equals(b["stimulus_id"]) and a["split"].equals(b["split"])
    np.testing.assert_array_equal(np.stack(a["mua"].to_numpy()), np.stack(b["mua"].to_numpy()))
    assert [u.rsplit("/", 1)[1] for u in a["unit_ids"][0]] == [u.rsplit("/", 1)[1] for u in b["unit_ids"][0]]


def test_decode_on_ray_train_then_align_both_tracked_in_mlflow(world):
    from mlflow.tracking import MlflowClient
    from neurobridge.align.config import AlignConfig
    from neurobridge.align.experiment import run_alignment
    from neurobridge.config import load_yaml
    from neurobridge.decode.config import load_decode_config
    from neurobridge.decode.experiment import run_decode

    settings = world["settings"]
    cfg = load_decode_config(
        REPO / "jobs/configs/decode_fmri_demo.yaml",
        {**world["paths"], **world["labels"], "region_sets": {"IT": ["IT"]}, "net.epochs": 3, "projector.epochs": 3},
    )
    assert cfg.scaling.backend == "ray"
    res = run_decode(cfg, settings)
    client = MlflowClient(settings.mlflow_uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["IT.concept.ridge.chance5"] == pytest.approx(5 / 60)
    assert metrics["IT.retrieval.ridge.image_top1"] > metrics["IT.retrieval.ridge.image_chance1"]
    assert any(k.startswith("IT.concept.mlp.train.") for k in metrics)  # rank 0 logged the epochs live
    assert "plots/decode.png" in {a.path for a in client.list_artifacts(res.run_id, "plots")}

    acfg = load_yaml(
        AlignConfig,
        REPO / "jobs/configs/align_fmri_demo.yaml",
        {**world["paths"], "region_sets": {"IT": ["IT"]}, "projector.epochs": 5},
    )
    aligned = run_alignment(acfg, settings, figures=False)
    m = aligned.results["IT"].test["mean"]
    assert m["n_candidates"] == 20 and m["image_top1"] > m["image_chance1"]
    assert client.get_run(aligned.run_id).info.status == "FINISHED"


def test_the_optuna_spec_searches_on_ray_tune(world):
    from neurobridge.tune.runner import run_ablation
    from neurobridge.tune.spec import load_spec

    spec = load_spec(
        REPO / "jobs/ablations/optuna_vit3d.yaml",
        {
            "name": "optuna-test",
            "search.num_samples": 3,
            **{f"base_overrides.{k}": v for k, v in world["labels"].items()},
            "base_overrides.net.epochs": 2,
        },
    )
    out = run_ablation(spec, world["settings"], echo=lambda _: None)
    df = out.table
    assert len(df) == 3 and (df["status"] == "ok").all(), df[["trial", "status", "error"]]
    assert df["net.lr"].nunique() == 3 and df["properties.vit3d.r2_mean"].notna().all()


def test_the_crossmodal_spec_puts_fmri_rois_and_mua_regions_side_by_side(world):
    from neurobridge.tune.runner import run_ablation
    from neurobridge.tune.spec import load_spec

    spec = load_spec(
        REPO / "jobs/ablations/crossmodal_things.yaml",
        {
            "name": "crossmodal-test",
            "axes.region": [
                {"label": "fMRI-IT", "overrides": {"data.datasets": ["sim_fmri"], "region_sets": {"IT": ["IT"]}}},
                {"label": "MUA-IT", "overrides": {"data.datasets": ["sim_things_mua"], "region_sets": {"IT": ["IT"]}}},
            ],
            **{f"base_overrides.{k}": v for k, v in {**world["paths"], **world["labels"]}.items()},
        },
    )
    df = run_ablation(spec, world["settings"], echo=lambda _: None).table.set_index("region")
    assert (df["status"] == "ok").all(), df[["status", "error"]]
    for region in ("fMRI-IT", "MUA-IT"):
        row = df.loc[region]
        assert row["retrieval.ridge.image_top1"] > row["retrieval.ridge.image_chance1"]
        assert np.isfinite(row["properties.ridge.r2_mean"])
