"""`neurobridge ablate <spec>`: a Ray Tune ``Tuner`` over the spec's trials, one MLflow parent run per ablation.

State lives on the store at ``<store>/ablations/<name>/`` (Tune's experiment folder): rerunning the same spec after
the driver died restores the Tuner there (``Tuner.restore``), so finished trials are not repeated and unfinished
ones restart from their last checkpoint. The parent run id is kept beside it, so a resumed ablation reports into
the same parent; children of attempts that died with the driver are marked KILLED.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from neurobridge.config import Settings, ensure_ray, get_settings
from neurobridge.storage import StoreError, filesystem, is_local_fs, join
from neurobridge.tracking import mlflow_run
from neurobridge.tune import results as res
from neurobridge.tune.report import build_report, results_dir
from neurobridge.tune.spec import SAMPLED, AblationSpec, SpecError, n_trials, quasi_random_points, trials
from neurobridge.tune.trainables import TRIAL_TAG, run_trial

PARENT_FILE = "nb_parent.json"


@dataclass
class AblationResult:
    name: str
    parent_run_id: str
    table: object  # pandas DataFrame, one row per trial
    wall_s: float
    resumed: bool
    report: str


def _storage(settings: Settings) -> tuple[str, object | None, object]:
    """``<store>/ablations`` as Tune wants it (a path plus a pyarrow filesystem for object stores) and fsspec's."""
    fs, path = filesystem(join(settings.store, "ablations"), settings)
    if is_local_fs(fs):
        Path(path).mkdir(parents=True, exist_ok=True)
        return path, None, fs
    import pyarrow.fs as pafs

    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs


def spec_digest(spec: AblationSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _parent_run(settings: Settings, spec: AblationSpec, fs, exp_path: str) -> tuple[str, bool]:
    """The parent run of this ablation: the stored one when resuming (same spec), else a new one."""
    marker = f"{exp_path}/{PARENT_FILE}"
    digest = spec_digest(spec)
    if fs.exists(marker):
        with fs.open(marker, "rb") as f:
            saved = json.loads(f.read())
        if saved["spec_digest"] != digest:
            raise SpecError(
                f"ablation {spec.name!r} already exists at {exp_path} with another spec; rename the "
                "ablation (name: …) or delete that folder to start over"
            )
        return saved["parent_run_id"], True
    tags = {"kind": "ablation", "ablation": spec.name, "spec_file": spec.source_file or ""}
    run_id = mlflow_run.start_run(settings.mlflow_uri, spec.experiment, spec.name, spec.model_dump(mode="json"), tags)
    fs.makedirs(exp_path, exist_ok=True)
    with fs.open(marker, "wb") as f:
        f.write(json.dumps({"parent_run_id": run_id, "spec_digest": digest}).encode())
    return run_id, False


def _kill_stale_children(settings: Settings, spec: AblationSpec, parent: str) -> int:
    """Child runs left RUNNING by a driver that died: their trials restart, so the old attempts are KILLED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'",
        max_results=10_000,
    )
    for r in runs:
        client.set_terminated(r.info.run_id, "KILLED")
    return len(runs)


def _search(spec: AblationSpec) -> tuple[dict, dict]:
    """Tune param space and TuneConfig arguments for the spec's search algorithm."""
    from ray import tune

    space: dict = {"trial": tune.grid_search(trials(spec))}
    kwargs: dict = {"num_samples": 1}
    s = spec.search
    if s.algorithm == "quasi_random":
        space[SAMPLED] = tune.grid_search(quasi_random_points(s.space, s.num_samples, s.sampler_seed))
    elif s.algorithm != "grid":
        space.update({key: _domain(d) for key, d in s.space.items()})
        kwargs["num_samples"] = s.num_samples
    if s.algorithm == "optuna":  # a searcher proposes every trial: the one grid cell is a constant, not a grid
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        space["trial"] = trials(spec)[0]
        kwargs["search_alg"] = OptunaSearch(metric=s.metric, mode=s.mode, sampler=TPESampler(seed=s.sampler_seed))
    if s.algorithm == "asha":
        from ray.tune.schedulers import ASHAScheduler

        kwargs["scheduler"] = ASHAScheduler(
            metric=s.metric, mode=s.mode, grace_period=s.grace_period, reduction_factor=s.reduction_factor
        )
    return space, kwargs


def _domain(d):
    """A spec distribution as a Tune search domain (which Optuna's searcher converts to its own)."""
    from ray import tune

    if d.uniform is not None:
        return tune.uniform(*d.uniform)
    if d.loguniform is not None:
        return tune.loguniform(*d.loguniform)
    if d.randint is not None:
        return tune.randint(*d.randint)
    return tune.choice(d.choice)


def _trial_dir(trial) -> str:
    """Short, readable trial folders (Tune's default spells out the whole config)."""
    key = trial.config.get("trial", {}).get("key", "") if isinstance(trial.config.get("trial"), dict) else ""
    safe = "".join(c if c.isalnum() or c in "=-_." else "_" for c in key)[:80]
    return f"{trial.trial_id}_{safe}"


def run_ablation(
    spec: AblationSpec, settings: Settings | None = None, echo: Callable[[str], None] = print
) -> AblationResult:
    from ray import tune

    settings = settings or get_settings()
    mlflow_run.check_tracking(settings.mlflow_uri)  # fail now, not after the first trial
    ensure_ray(settings, min_cpus=4)
    path, pa_fs, fs = _storage(settings)
    exp_path = f"{path}/{spec.name}"
    parent, resumed = _parent_run(settings, spec, fs, exp_path)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            spec=spec,
            settings=settings.model_dump(),
            parent_run_id=parent,
            cwd=os.getcwd(),
            git=mlflow_run.git_commit(),
        ),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    t0 = time.perf_counter()
    ok = False
    try:
        if tune.Tuner.can_restore(exp_path, storage_filesystem=pa_fs):
            stale = _kill_stale_children(settings, spec, parent)
            echo(f"resuming ablation {spec.name!r} from {exp_path} ({stale} interrupted trial run(s) marked KILLED)")
            tuner = tune.Tuner.restore(
                exp_path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=pa_fs
            )
            resumed = True
        else:
            space, kwargs = _search(spec)
            n = n_trials(spec)
            echo(
                f"ablation {spec.name!r}: {n} trials, at most {spec.max_concurrent_trials} at a time, "
                f"{spec.resources.cpu} CPU each → {exp_path}"
            )
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=spec.max_concurrent_trials,
                    time_budget_s=spec.time_budget_s,
                    trial_dirname_creator=_trial_dir,
                    reuse_actors=True,
                    **kwargs,
                ),
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=path,
                    storage_filesystem=pa_fs,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    verbose=0,
                ),
            )
        grid = tuner.fit()
        wall = time.perf_counter() - t0
        df = res.table(grid, spec)
        _write_results(settings, spec, df, parent, wall)
        report_uri, _ = build_report(spec.name, settings)
        ok = bool(len(df)) and bool((df["status"] == "ok").all())
        return AblationResult(spec.name, parent, df, wall, resumed, report_uri)
    finally:
        mlflow_run.end_run(settings.mlflow_uri, parent, ok)


def _write_results(settings: Settings, spec: AblationSpec, df, parent: str, wall: float) -> None:
    """results.csv/.parquet, summary.md, plots/*.png and meta.json beside the Tune state, and into the parent run."""
    import matplotlib.pyplot as plt

    base = results_dir(settings, spec.name)
    fs, path = filesystem(base, settings)
    fs.makedirs(f"{path}/plots", exist_ok=True)
    ok = df[df["status"] == "ok"] if len(df) else df
    metrics = list(dict.fromkeys([spec.search.metric, *spec.search.also, "loss", "co_bps", "image_top1"]))
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    files["results.parquet"] = buf.getvalue()
    files["results.csv"] = df.to_csv(index=False).encode()
    summary = res.summary_markdown(df, spec, wall) if spec.search.metric in ok else "no trial reported the metric\n"
    files["summary.md"] = summary.encode()
    for m in metrics:
        if m in ok and ok[m].notna().any():
            fig = res.errorbar_plot(df, spec, m)
            b = io.BytesIO()
            fig.savefig(b, format="png", dpi=110)
            plt.close(fig)
            files[f"plots/{m}.png"] = b.getvalue()
    meta = {
        "ablation": spec.name,
        "kind": spec.kind,
        "spec_file": spec.source_file,
        "parent_run_id": parent,
        "mlflow_uri": settings.mlflow_uri,
        "trials": len(df),
        "ok": int((df["status"] == "ok").sum()),
        "metric": spec.search.metric,
        "mode": spec.search.mode,
        "wall_s_last_run": round(wall, 1),
        "git_commit": mlflow_run.git_commit(),
    }
    files["meta.json"] = json.dumps(meta, indent=1).encode()
    with tempfile.TemporaryDirectory() as d:
        for rel, data in files.items():
            with fs.open(f"{path}/{rel}", "wb") as f:
                f.write(data)
            local = Path(d) / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            mlflow_run.log_artifact(
                settings.mlflow_uri, parent, str(local), str(Path(rel).parent) if "/" in rel else None
            )
    if spec.search.metric in ok:
        summ = res.summarize(df, spec)
        best = summ.sort_values("mean", ascending=spec.search.mode == "min").iloc[0]
        headline = {f"best.{spec.search.metric}": float(best["mean"]), "trials_ok": float(meta["ok"]), "wall_s": wall}
        mlflow_run.log_metrics(settings.mlflow_uri, parent, headline)


def child_runs(settings: Settings, spec: AblationSpec, parent: str) -> list:
    """Every child run of the ablation's parent (one per trial attempt)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    if exp is None:
        raise StoreError(f"no MLflow experiment {spec.experiment!r}")
    return client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=10_000)


__all__ = ["TRIAL_TAG", "AblationResult", "child_runs", "run_ablation"]
