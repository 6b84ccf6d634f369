"""tune/runner: ablations on Ray Tune: search spaces from the spec, tracking checked before any trial, a parent run
with one child per trial and a report, and a SIGKILLed driver resumed without rerunning finished trials.

Trials run in-process (plain loop + Tune report) on the session's real local Ray; MLflow is a real SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from neurobridge.tracking.mlflow_run import TrackingError
from neurobridge.tune.runner import child_runs, run_ablation
from neurobridge.tune.spec import SpecError, load_spec, trials

SPECS = REPO / "jobs" / "ablations"


TINY = {
    "model.d_model": 16,
    "model.heads": 2,
    "model.decoder_d_model": 16,
    "model.decoder_heads": 2,
    "model.depth": 1,
    "model.neurons_per_token": 16,
    "model.dropout": 0.0,
    "optim.batch_size": 8,
    "optim.warmup_steps": 1,
    "optim.max_steps": 4,
    "checkpoint_every": 4,
    "log_every": 2,
    "data.mixture": "demo",
    "data.holdout_sessions": [],
}


def demo_variant(spec: Path, **over) -> dict:
    """Overrides that shrink a shipped spec to the test store (tiny model, a few steps)."""
    out = {f"base_overrides.{k}": v for k, v in TINY.items()}
    out.update(
        {"evaluate.datasets": ["t_nwb"], "evaluate.max_sessions": 1, "resources.cpu": 0.25, "max_concurrent_trials": 4}
    )
    out.update(over)
    return out


@pytest.fixture(scope="module")
def store(ablation_store):
    """This file's store: simulated reaching sessions pinned as mixture 'demo' (conftest)."""
    return ablation_store


# ---------------------------------------------------------------- search spaces (no Ray)


def test_random_and_asha_searches_sample_the_space_and_asha_needs_an_intermediate_metric():
    from neurobridge.tune.runner import _search
    from ray.tune.schedulers import ASHAScheduler

    over = {
        "search.algorithm": "asha",
        "search.metric": "loss",
        "search.num_samples": 4,
        "search.space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
    }
    spec = load_spec(SPECS / "mixing.yaml", over)
    space, kwargs = _search(spec)
    assert kwargs["num_samples"] == 4 and isinstance(kwargs["scheduler"], ASHAScheduler)
    assert 1e-4 <= space["optim.lr"].sample() <= 1e-2
    with pytest.raises(SpecError, match="asha stops trials on intermediate results"):
        load_spec(SPECS / "mixing.yaml", {**over, "search.metric": "co_bps"})
    with pytest.raises(SpecError, match=r"optim\.lrr'.*did you mean 'lr'"):
        load_spec(SPECS / "mixing.yaml", {**over, "search.space": {"optim.lrr": {"uniform": [0, 1]}}})


def test_quasi_random_search_covers_the_space_evenly_and_crosses_every_point_with_every_seed():
    from neurobridge.tune.runner import _search
    from neurobridge.tune.spec import quasi_random_points, sampled_values, trial_key

    space = {
        "optim.lr": {"loguniform": [1e-4, 1e-2]},
        "model.depth": {"randint": [1, 4]},
        "model.dropout": {"choice": [0.0, 0.1]},
    }
    spec = load_spec(
        SPECS / "mixing.yaml", {"search.algorithm": "quasi_random", "search.num_samples": 16, "search.space": space}
    )
    space_, kwargs = _search(spec)
    points = space_["sampled"]["grid_search"]
    assert kwargs["num_samples"] == 1 and len(points) == 16
    assert points == quasi_random_points(spec.search.space, 16, 0)  # deterministic: a rerun samples the same
    lr = np.log10([p["optim.lr"] for p in points])
    assert np.all((lr >= -4) & (lr <= -2))
    # low discrepancy: every quarter of the log-lr range gets 3-5 of 16 points (independent draws often do not)
    assert sorted(np.histogram(lr, bins=4, range=(-4, -2))[0])[0] >= 3
    assert {p["model.depth"] for p in points} == {1, 2, 3} and {p["model.dropout"] for p in points} == {0.0, 0.1}
    trial = {"key": "mixing=sqrt__seed=0"}
    keys = {trial_key(trial, sampled_values({"trial": trial, "sampled": p}, spec)) for p in points}
    assert len(keys) == 16  # each point is its own trial: resume cannot mistake one for another


# ---------------------------------------------------------------- ablations


def test_a_tracking_server_that_is_down_fails_before_any_trial(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    spec = load_spec(SPECS / "mixing.yaml", demo_variant(SPECS / "mixing.yaml", name="down"))
    down = store.model_copy(update={"mlflow_uri": "http://127.0.0.1:9"})
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="127.0.0.1:9"):
        run_ablation(spec, down)
    assert time.perf_counter() - t0 < 30
    assert not (Path(store.store) / "ablations" / "down").exists()


def test_two_axes_by_two_seeds_track_a_parent_with_one_child_per_trial_and_a_report(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mixing = load_spec(SPECS / "mixing.yaml").axes["mixing"]
    over = demo_variant(
        SPECS / "masking_modes.yaml",
        name="modes-x-mixing",
        seeds=[0, 1],
        **{
            "axes.mode": [
                {"label": "random", "overrides": {"mode": "random"}},
                {"label": "temporal", "overrides": {"mode": "temporal"}},
            ],
            "axes.mixing": [v.model_dump() for v in mixing],
        },
    )
    spec = load_spec(SPECS / "masking_modes.yaml", over)
    result = run_ablation(spec, store, echo=lambda s: None)
    df = result.table
    assert len(df) == 8 and (df["status"] == "ok").all(), df[["trial", "status", "error"]]
    assert sorted(df["trial"]) == sorted(t["key"] for t in trials(spec))
    assert df["co_bps"].notna().all() and df["loss"].notna().all()
    children = child_runs(store, spec, result.parent_run_id)
    assert sorted(r.data.tags["ablation.trial"] for r in children) == sorted(df["trial"])
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["git_commit"] and r.data.tags["dataset.t_nwb"]
        assert r.data.params["mode"] == r.data.tags["axis.mode"]
        assert r.data.params["data.mixing"] == r.data.tags["axis.mixing"]
        assert "co_bps" in r.data.metrics and "loss" in r.data.metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.mlflow_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"results.csv", "results.parquet", "summary.md", "report.html", "plots"} <= arts
    assert {a.path for a in client.list_artifacts(result.parent_run_id, "plots")} >= {"plots/co_bps.png"}
    summary = Path(client.download_artifacts(result.parent_run_id, "summary.md", str(tmp_path))).read_text()
    for _, r in df.groupby(["mode", "mixing"])["co_bps"].mean().reset_index().iterrows():
        assert f"| {r['mode']} | {r['mixing']} | {r['co_bps']:.4f} |" in summary
    page = Path(result.report).read_text()
    assert "data:image/png;base64," in page and page.count("<tr>") >= 8
    from neurobridge.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("NB_STORE", store.store)
    monkeypatch.setenv("NB_MLFLOW_URI", store.mlflow_uri)
    out = CliRunner().invoke(app, ["report", spec.name])
    assert out.exit_code == 0 and result.parent_run_id in out.output, out.output
    missing = CliRunner().invoke(app, ["report", "no-such-ablation"])
    assert missing.exit_code == 2 and "no results" in missing.output


RESUME_SPEC = """name: resume
kind: pretrain
base: {base}
base_overrides: {over}
axes:
  mode:
    - {{label: random, overrides: {{mode: random}}}}
    - {{label: temporal, overrides: {{mode: temporal}}}}
    - {{label: neuron, overrides: {{mode: neuron}}}}
seeds: [0]
max_concurrent_trials: 1
resources: {{cpu: 0.25}}
evaluate: {{enabled: false}}
"""


def test_killing_the_driver_and_rerunning_resumes_without_repeating_finished_trials(store, tmp_path, ray_cluster):
    import json

    over = {**TINY, "optim.max_steps": 40, "checkpoint_every": 10, "log_every": 10}
    spec_file = tmp_path / "resume.yaml"
    spec_file.write_text(RESUME_SPEC.format(base=REPO / "jobs/configs/pretrain_demo.yaml", over=json.dumps(over)))
    spec = load_spec(spec_file)
    env = {
        **os.environ,
        "NB_STORE": store.store,
        "NB_RAW": store.raw_root,
        "NB_MLFLOW_URI": store.mlflow_uri,
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    cmd = [sys.executable, str(REPO / "jobs" / "ablate.py"), str(spec_file)]
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True)
    try:
        finished = _wait_for_finished_children(store, spec, first, timeout=240)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver dies without cleanup
        first.wait()
    assert 1 <= len(finished) < 3, "kill must land after ≥ 1 and before all trials finished"
    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming ablation 'resume'" in second.stdout
    parent = json.loads((Path(store.store) / "ablations" / "resume" / "nb_parent.json").read_text())["parent_run_id"]
    runs = child_runs(store, spec, parent)
    attempts = pd.Series([r.data.tags["ablation.trial"] for r in runs]).value_counts()
    for key in finished:  # finished before the kill: never run again
        assert attempts[key] == 1
    ok = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["ablation.trial"] for r in ok) == sorted(t["key"] for t in trials(spec))
    table = pd.read_csv(Path(store.store) / "ablations" / "resume" / "nb_results" / "results.csv")
    assert sorted(table["trial"]) == sorted(t["key"] for t in trials(spec)) and (table["status"] == "ok").all()


def _wait_for_finished_children(store, spec, proc, timeout: float) -> list[str]:
    """Poll MLflow until the running driver has finished at least one trial's child run."""
    import json

    marker = Path(store.store) / "ablations" / "resume" / "nb_parent.json"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the driver exited early with {proc.returncode}")
        if marker.exists():
            parent = json.loads(marker.read_text())["parent_run_id"]
            done = [
                r.data.tags["ablation.trial"] for r in child_runs(store, spec, parent) if r.info.status == "FINISHED"
            ]
            if done:
                return done
        time.sleep(0.5)
    raise AssertionError("no trial finished in time")
