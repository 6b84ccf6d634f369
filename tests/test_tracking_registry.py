"""tracking/registry: a finished pretrain run → evaluated into itself → a registered version with its lineage and
evaluation, marked candidate, promoted through the gate and loaded by alias; a failed run, a missing alias, a
tracking server that is down, and a champion without an evaluation or below its baseline (unless forced) are refused
clearly.

The runs are made the way ``train.pretrain`` makes one (helpers.registry.pretrain_run), without Ray Train's start-up."""

from __future__ import annotations

import socket
import time

import numpy as np
import pyarrow as pa
import pytest
from helpers.registry import passing_run, pretrain_run
from neurobridge.inference import registrable
from neurobridge.inference.embed import EmbedConfig, embed
from neurobridge.store.read import iter_local, sources
from neurobridge.store.rows import ROW_COLUMNS
from neurobridge.tracking import mlflow_run, registry
from neurobridge.tracking.mlflow_run import TrackingError
from neurobridge.tracking.registry import GateError, Promotion, RegistryError


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
    staged = registrable.promote(Promotion("encoder", "staging", "1"), store)  # an ungated alias: no evaluation needed
    assert staged.version == "1" and "staging" in staged.aliases
    model, info = registry.load("models:/encoder@staging", store)
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


def test_champion_needs_an_evaluation_at_or_above_its_baseline_unless_forced(store, registered):
    from mlflow.tracking import MlflowClient
    from neurobridge.evaluate.run import EvalData, evaluate

    run_id = pretrain_run(store, "reg-gate")
    v = registrable.register(run_id, "gated", settings=store)
    assert v.tags["evaluation"] == "not evaluated"
    with pytest.raises(GateError, match=r"not promoted to @champion: not evaluated: no evaluation in the run"):
        registrable.promote(Promotion("gated", "champion", v.version), store)

    report = evaluate(f"runs:/{run_id}", EvalData(["r_nwb"], exclude_sessions=["monkey00_s01"]), settings=store)
    assert report.run_id == run_id  # written into the evaluated run, beside its training loss
    run = MlflowClient(store.mlflow_uri).get_run(run_id)
    assert {"loss", "eval.r_nwb.co_bps", "eval.r_nwb.co_bps_smoothing", "eval.r_nwb.fp_bps_not_trained_mean"} <= set(
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
