"""align/experiment: an alignment experiment on the simulator: every region set finds the true image far above
chance, the best region is a property of the data (flip the gains, flip the order), and the run registers."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.align import FAST, data_cfg
from neurobridge.align.config import AlignConfig, ProjectorConfig
from neurobridge.align.embeddings import simulation_embeddings
from neurobridge.align.experiment import run_alignment

pytestmark = pytest.mark.usefixtures("one_torch_thread")


LOCAL = {"backend": "local"}  # projectors fitted in this process; Ray Train's path is test_align_train.py


@pytest.fixture(scope="module")
def store(align_store):
    """This file's store: two simulated V1/V4/IT sessions, vis_it and vis_v1 (conftest)."""
    return align_store


def test_all_regions_find_the_true_image_far_above_chance_and_it_beats_v1(store, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a SQLite store is ./mlruns
    st_ = store["settings"]
    cfg = AlignConfig(
        name="sim",
        data=data_cfg("vis_it", store["it"]),
        projector=ProjectorConfig(**FAST),
        scaling=LOCAL,
        region_sets={"all": None, "V1": ["V1"], "IT": ["IT"]},
    )
    emb = simulation_embeddings(str(store["it"]), st_)  # knows the PNG paths for the figures
    result = run_alignment(cfg, st_, embeddings=emb)
    s = result.summary()
    assert s["all"]["n_candidates"] == 100 and s["all"]["image_chance1"] == pytest.approx(0.01)
    assert s["all"]["image_top1"] >= 10 * s["all"]["image_chance1"]
    assert s["all"]["image_top5"] >= s["all"]["image_top1"] and s["all"]["brain_top1"] >= 10 * 0.01
    assert s["all"]["image_top1_lo_n50"] <= s["all"]["image_top1_n50"] <= s["all"]["image_top1_hi_n50"]
    assert s["all"]["image_chance1_n50"] == pytest.approx(0.02)
    assert s["IT"]["image_top1"] > s["V1"]["image_top1"]  # the simulator gives IT the largest gain
    assert s["all"]["recon_cosine"] > s["all"]["recon_cosine_chance"] + 0.2
    assert s["all"]["recon_two_way"] > 0.8 and s["all"]["tokens_per_s"] > 0
    run = mlflow.tracking.MlflowClient(st_.mlflow_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["all.test.image_top1"] == s["all"]["image_top1"]
    arts = {a.path for a in mlflow.tracking.MlflowClient(st_.mlflow_uri).list_artifacts(result.run_id, "plots")}
    assert {"plots/all_retrieval.png", "plots/IT_reconstruction.png"} <= arts
    _registered_projectors_embed_like_the_fitted_ones(st_, result, monkeypatch)


def _registered_projectors_embed_like_the_fitted_ones(st_, result, monkeypatch):
    """The align run → a registered pyfunc (code + weights-only projectors) whose output is the fitted
    projector's, per region set; embedding windows with it is refused (it maps response vectors)."""
    import pandas as pd
    from neurobridge.align.projector import project
    from neurobridge.inference import registrable
    from neurobridge.inference.embed import EmbedConfig, embed
    from neurobridge.tracking import registry

    info = registrable.register(result.run_id, "sim-align", settings=st_)
    assert info.tags["kind"] == "align" and info.aliases == ["candidate"]
    assert float(info.tags["metric.IT.test.image_top1"]) == pytest.approx(result.summary()["IT"]["image_top1"])
    model, _ = registry.load("models:/sim-align@candidate", st_)
    assert model.metadata.get_input_schema().input_names() == ["session", "features", "region_set"]
    for name, regions in (("IT", ["IT"]), ("all", None)):
        test = result.data.select_regions(regions).test
        want = project(result.results[name].fit.model, test)
        for block, expected in zip(test.blocks, want, strict=True):
            frame = pd.DataFrame(
                {"session": block.session, "features": list(block.x.astype(float)), "region_set": name}
            )
            np.testing.assert_allclose(model.predict(frame), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(registry.RegistryError, match="align"):
        embed(EmbedConfig(model="models:/sim-align@candidate", dataset="vis_it"), st_, progress=False)
    from neurobridge.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("NB_STORE", st_.store)
    monkeypatch.setenv("NB_MLFLOW_URI", st_.mlflow_uri)
    out = CliRunner().invoke(app, ["registry", "load", "models:/sim-align@candidate"])
    assert out.exit_code == 0 and "projector IT: regions ['IT']" in out.output, out.output


def test_region_ordering_comes_from_the_data_not_the_code(store):
    """Same code, the simulator's gains reversed (V1 strongest): now V1 beats IT."""
    cfg = AlignConfig(
        data=data_cfg("vis_v1", store["v1"], split={"rule": "hash", "n_test": 50, "n_val": 20}),
        projector=ProjectorConfig(**FAST),
        scaling=LOCAL,
        region_sets={"V1": ["V1"], "IT": ["IT"]},
    )
    s = run_alignment(cfg, store["settings"], track=False, figures=False).summary()
    assert s["V1"]["image_top1"] > s["IT"]["image_top1"]
