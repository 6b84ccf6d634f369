"""Model registry and `neurobridge embed`: a finished pretrain run → evaluated into itself → registered version with
lineage and evaluation → promoted through the gate → loaded by alias → one embedding per window in the store,
reproducibly; and the refusals (failed run, missing alias, tracking server down, champion without an evaluation or
below its baseline unless forced).

The pretrain run is made the way ``train.pretrain`` makes one (start_run with its tags, the weights-only
``model/model.pt``, end_run) from a few plain-loop steps, which is what the registry reads, without Ray Train's
start-up.
"""

from __future__ import annotations

import socket
import tempfile
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from neurobridge.catalog import CatalogEntry
from neurobridge.inference import registrable
from neurobridge.inference.embed import EmbedConfig, embed, read_embeddings
from neurobridge.ingest.pipeline import ingest_many
from neurobridge.models.checkpoint import save_checkpoint
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.sim import SimConfig, simulate
from neurobridge.store.read import iter_local, sources
from neurobridge.store.rows import ROW_COLUMNS
from neurobridge.store.splits import HeldoutSplit
from neurobridge.tracking import mlflow_run, registry
from neurobridge.tracking.mlflow_run import TrackingError
from neurobridge.tracking.registry import GateError, Promotion, RegistryError
from neurobridge.train.batches import CollateWindows
from neurobridge.train.config import load_config
from neurobridge.train.loop import run_steps
from neurobridge.train.pretrain import vocabularies

SMALL = {
    "model.d_model": 32,
    "model.heads": 2,
    "model.decoder_d_model": 32,
    "model.decoder_heads": 2,
    "model.depth": 1,
    "model.neurons_per_token": 16,
    "optim.batch_size": 8,
    "optim.warmup_steps": 1,
    "optim.max_steps": 4,
    "log_every": 1,
    "checkpoint_every": 4,
    "data.datasets": ["r_nwb"],
    "data.holdout_sessions": ["monkey00_s01"],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_cluster):
    from neurobridge.config import get_settings

    root = tmp_path_factory.mktemp("registry")
    sim = root / "raw"
    sim_cfg = SimConfig(
        nwb_subjects=1,
        nwb_sessions_per_subject=2,
        alf_subjects=0,
        visual_sessions=0,
        units_min=20,
        units_max=30,
        minutes=0.5,
        write_images=False,
    )
    simulate(str(sim), sim_cfg, progress=False)
    settings = get_settings(store=str(root / "store"), raw_root=str(sim), mlflow_uri=f"sqlite:///{root}/mlflow.db")
    entry = CatalogEntry.of(
        name="r_nwb",
        kind="nwb",
        uri=str(sim / "nwb"),
        ingest={"bin_ms": 20, "window": {"mode": "chunks", "chunk_s": 0.6}},
    )
    (report,) = ingest_many([entry], settings, progress=False)
    assert not isinstance(report, Exception), report
    return settings


def pretrain_run(settings, name: str, ok: bool = True) -> str:
    """A pretrain run as ``train.pretrain`` leaves it: tags, config, metrics, ``model/model.pt``, status."""
    cfg = load_config(None, {**SMALL, "name": name})
    srcs = sources(settings, cfg.data.datasets)
    vocabs = vocabularies(srcs, cfg.data.holdout_sessions, settings)
    tags = {"kind": "pretrain", "mixture": "", **{f"dataset.{s.name}": s.ref.version for s in srcs}}
    run_id = mlflow_run.start_run(settings.mlflow_uri, cfg.experiment, name, cfg.model_dump(mode="json"), tags)
    table = pa.Table.from_batches(list(iter_local(settings, srcs[0], "train", ROW_COLUMNS)))
    collate = CollateWindows(vocabs, cfg.model.neurons_per_token, HeldoutSplit())
    torch.manual_seed(cfg.seed)
    model = MaskedNeuralModel(cfg.model, vocabs)
    logger = mlflow_run.MetricsLogger(settings.mlflow_uri, run_id)

    def batches(epoch):
        for i in range(0, table.num_rows - 8 + 1, 8):
            yield collate(table.slice(i, 8))

    run_steps(cfg, model, batches, report=lambda m, s: logger.log(m, m["step"]))
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(f"{d}/model.pt", model, vocabs, {"step": cfg.optim.max_steps})
        mlflow_run.log_artifact(settings.mlflow_uri, run_id, f"{d}/model.pt", "model")
    mlflow_run.end_run(settings.mlflow_uri, run_id, ok)
    return run_id


@pytest.fixture(scope="module")
def registered(store):
    run_id = pretrain_run(store, "reg-a")
    info = registrable.register(run_id, "encoder", settings=store)
    return run_id, info


def test_register_tags_lineage_and_marks_the_candidate(store, registered):
    run_id, info = registered
    assert info.version == "1" and info.aliases == ["candidate"] and info.run_id == run_id
    version = sources(store, ["r_nwb"])[0].ref.version
    assert info.tags["dataset.r_nwb"] == version and info.tags["kind"] == "pretrain"
    assert len(info.tags["config_hash"]) == 16 and info.tags["git_commit"]
    assert float(info.tags["metric.loss"]) > 0 and info.tags["metric.step"] == "4"
    listed = registry.list_versions(store)
    assert [(v.name, v.version, v.aliases) for v in listed] == [("encoder", "1", ["candidate"])]


def test_the_registered_model_is_code_plus_weights_with_a_signature_and_example(store, registered):
    from mlflow.tracking import MlflowClient

    run_id, _ = registered
    client = MlflowClient(store.mlflow_uri)
    files = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, registry.MODEL_DIR)}
    assert {"MLmodel", "input_example.json", "pyfunc_encoder.py"} <= files  # the code, not a pickle of it
    assert not any(f.endswith(".pkl") for f in files)  # nothing for load to unpickle
    model, info = registry.load("models:/encoder@candidate", store)
    sig = model.metadata.get_input_schema().input_names()
    assert {"session", "counts", "unit_regions", "n_units", "n_bins"} <= set(sig)
    assert model.metadata.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 32)
    assert model.metadata.saved_input_example_info["type"] == "dataframe"


def test_promote_then_load_by_alias_embeds_windows(store, registered):
    second = registrable.register(pretrain_run(store, "reg-b"), "encoder", settings=store)
    assert second.version == "2" and second.aliases == ["candidate"]  # the alias moved to the new version
    staged = registrable.promote(Promotion("encoder", "staging", "1"), store)  # an ungated alias: no evaluation needed
    assert staged.version == "1" and "staging" in staged.aliases
    model, info = registry.load("models:/encoder@staging", store)
    assert info.version == "1"
    src = sources(store, ["r_nwb"])[0]
    rows = pa.Table.from_batches(list(iter_local(store, src, "test", ROW_COLUMNS))).slice(0, 3).to_pandas()
    out = model.predict(rows)
    assert out.shape == (3, 32) and np.isfinite(out).all()


def test_embed_writes_one_embedding_per_window_reproducibly(store, registered):
    registrable.promote(Promotion("encoder", "staging", "1"), store)
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


def test_the_pipeline_register_stage_registers_and_promotes(store, registered, monkeypatch):
    from neurobridge.config import ENV_VARS
    from neurobridge.workflows.pipeline import PipelineConfig, run_pipeline

    for key in ("store", "mlflow_uri"):  # run_pipeline exports its settings; restore them after the test
        monkeypatch.setenv(ENV_VARS[key], getattr(store, key))
    run_id = passing_run(store, "reg-pipe")
    cfg = PipelineConfig(
        stages=["register"],
        settings={"store": store.store, "mlflow_uri": store.mlflow_uri},
        register={"run": run_id, "name": "pipe", "promote": "champion"},
    )
    lines: list[str] = []
    assert run_pipeline(cfg, echo=lines.append) == 0, lines
    champ = registry.resolve("models:/pipe@champion", store)
    assert champ.run_id == run_id and champ.aliases == ["candidate", "champion"]
    unevaluated, _ = registered  # the gate refuses; the stage still succeeds and says why
    cfg = cfg.model_copy(update={"register_stage": cfg.register_stage.model_copy(update={"run": unevaluated})})
    assert run_pipeline(cfg, echo=lines.append) == 0, lines
    assert "not promoted" in next(x for x in lines if x.startswith("register: models:/pipe/2"))
    assert registry.resolve("models:/pipe@champion", store).version == "1"
    no_run = PipelineConfig(stages=["register"], settings={"store": store.store, "mlflow_uri": store.mlflow_uri})
    assert run_pipeline(no_run, echo=lines.append) == 1 and "no run to register" in lines[-1]


def passing_run(settings, name: str) -> str:
    """A finished pretrain run whose evaluation beats smoothing (a run as ``neurobridge evaluate`` leaves one that
    passes; a few training steps never do)."""
    run_id = pretrain_run(settings, name)
    mlflow_run.log_metrics(
        settings.mlflow_uri, run_id, {"eval.r_nwb.co_bps": 0.31, "eval.r_nwb.co_bps_smoothing": 0.25}
    )
    return run_id


def test_champion_needs_an_evaluation_at_or_above_its_baseline_unless_forced(store, registered):
    from mlflow.tracking import MlflowClient
    from neurobridge.evaluate.run import evaluate

    run_id = pretrain_run(store, "reg-gate")
    v = registrable.register(run_id, "gated", settings=store)
    assert v.tags["evaluation"] == "not evaluated"
    with pytest.raises(GateError, match=r"not promoted to @champion: not evaluated: no evaluation in the run"):
        registrable.promote(Promotion("gated", "champion", v.version), store)

    report = evaluate(f"runs:/{run_id}", ["r_nwb"], settings=store, exclude_sessions=["monkey00_s01"])
    assert report.run_id == run_id  # written into the evaluated run, beside its training loss
    run = MlflowClient(store.mlflow_uri).get_run(run_id)
    assert {"loss", "eval.r_nwb.co_bps", "eval.r_nwb.co_bps_smoothing", "eval.r_nwb.fp_bps_mean"} <= set(
        run.data.metrics
    )
    files = {a.path for a in MlflowClient(store.mlflow_uri).list_artifacts(run_id, "evaluation/r_nwb")}
    assert {"evaluation/r_nwb/report.json", "evaluation/r_nwb/co_bps.png", "evaluation/r_nwb/config.json"} <= files
    co, smooth = run.data.metrics["eval.r_nwb.co_bps"], run.data.metrics["eval.r_nwb.co_bps_smoothing"]
    assert co < smooth  # four training steps: far below the smoothing baseline
    with pytest.raises(GateError, match=rf"below baseline: r_nwb: co-bps {co:.4f} < smoothing {smooth:.4f}"):
        registrable.promote(Promotion("gated", "champion", v.version), store)
    again = registry.resolve(f"models:/gated/{v.version}", store)  # the evaluation reached the version's tags
    assert again.tags["evaluation"] == "below baseline" and float(again.tags["metric.eval.r_nwb.co_bps"]) == (
        pytest.approx(co, rel=1e-5)
    )
    forced = registrable.promote(Promotion("gated", "champion", v.version, force=True), store)
    assert "champion" in forced.aliases and forced.tags["forced.champion"].endswith(
        f"r_nwb: co-bps {co:.4f} < smoothing {smooth:.4f}"
    )

    good = registrable.register(passing_run(store, "reg-good"), "gated", settings=store)
    assert good.tags["evaluation"] == "passed" and good.tags["metric.eval.r_nwb.co_bps_smoothing"] == "0.25"
    champ = registrable.promote(Promotion("gated", "champion"), store)  # default: the version at @candidate
    assert champ.version == good.version and "forced.champion" not in champ.tags


def test_the_cli_refuses_champion_below_baseline_and_records_a_force(store, monkeypatch):
    from neurobridge.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("NB_STORE", store.store)
    monkeypatch.setenv("NB_MLFLOW_URI", store.mlflow_uri)
    run_id = pretrain_run(store, "reg-cli")
    mlflow_run.log_metrics(
        store.mlflow_uri, run_id, {"eval.r_nwb.co_bps": -0.003, "eval.r_nwb.co_bps_smoothing": 0.626}
    )
    out = CliRunner().invoke(app, ["registry", "register", "--run", run_id, "--name", "cli-enc"])
    assert out.exit_code == 0 and "below baseline" in out.output, out.output
    refused = CliRunner().invoke(app, ["registry", "promote", "cli-enc"])
    assert refused.exit_code == 2 and "co-bps -0.0030 < smoothing 0.6260" in refused.output.replace("\n", " ")
    with pytest.raises(RegistryError, match="no alias 'champion'"):
        registry.resolve("models:/cli-enc@champion", store)
    forced = CliRunner().invoke(app, ["registry", "promote", "cli-enc", "--force"])
    assert forced.exit_code == 0 and "forced.champion" in forced.output, forced.output


def test_the_encoder_gate_compares_every_evaluated_dataset_with_its_smoothing_baseline():
    gate = registrable.encoder_gate
    assert not gate({"loss": 1.0}).evaluated
    ok = gate(
        {"eval.a.co_bps": 0.3, "eval.a.co_bps_smoothing": 0.2, "eval.b.co_bps": 0.1, "eval.b.co_bps_smoothing": 0.1}
    )
    assert ok.passed and ok.reason == "a: co-bps 0.3000 >= smoothing 0.2000; b: co-bps 0.1000 >= smoothing 0.1000"
    one_below = gate(
        {"eval.a.co_bps": 0.3, "eval.a.co_bps_smoothing": 0.2, "eval.b.co_bps": 0.0, "eval.b.co_bps_smoothing": 0.1}
    )
    assert one_below.evaluated and not one_below.passed and one_below.label == "below baseline"
    no_baseline = gate({"eval.a.co_bps": 0.3})
    assert not no_baseline.evaluated and "no smoothing baseline" in no_baseline.reason


def test_the_projector_gate_needs_top1_clear_of_chance_over_the_test_images():
    def metrics(top1: float, n: int) -> dict:
        return {"all.test.image_top1": top1, "all.test.image_chance1": 1 / n, "all.test.n_candidates": float(n)}

    assert registrable.align_gate(metrics(0.30, 100)).passed  # 95 % interval 0.22-0.40, chance 0.01
    assert not registrable.align_gate(metrics(0.02, 100)).passed  # 1-2 hits of 100: not clear of chance
    assert not registrable.align_gate({"loss": 1.0}).evaluated
