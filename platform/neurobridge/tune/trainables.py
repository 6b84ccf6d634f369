"""What one Tune trial runs: build the trial's typed config, train, evaluate, and track it as an MLflow child run.

Trial design. A trial runs the plain training loop (``run_steps``) inside the trial process, fed from the Parquet
parts (``local_data``: the same mixing as ``pretrain``'s Ray Data pipeline, without a pipeline start-up per trial),
with a Tune ``report`` callable: every ``log_every`` steps an intermediate result (ASHA can stop the trial there)
and at checkpoints a Tune checkpoint (a restored or paused trial resumes from it). A trial holds a fraction of a
CPU (several fit on a laptop's logical CPUs); nesting a TorchTrainer here would hold a second CPU per trial and
starve a 2-core machine (STACK_NOTES). Trials that each drive a multi-GPU TorchTrainer on a cluster are not part
of this version.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

from neurobridge.config import Settings
from neurobridge.tracking import mlflow_run
from neurobridge.tune.spec import AblationSpec, build_config, sampled_values, trial_key

TRIAL_TAG = "ablation.trial"
COMPLETE = "trial_complete"  # in the final result only (Tune reserves `done`)


def run_trial(config: dict, spec: AblationSpec, settings: dict, parent_run_id: str, cwd: str, git: str) -> None:
    """The Tune function trainable (wrapped with ``tune.with_parameters`` by the runner)."""
    import torch
    from ray import tune

    os.chdir(cwd)  # relative paths in configs mean what they meant where the ablation was started
    torch.set_num_threads(spec.resources.threads)
    st = Settings.model_validate(settings)
    trial = config["trial"]
    sampled = sampled_values(config, spec)
    cfg = build_config(spec, trial, sampled)
    key = trial_key(trial, sampled)
    done = finished_child(st, spec, parent_run_id, key)
    if done is not None:  # finished before the driver died, after Tune's last state snapshot: report, don't rerun
        tune.report({**done.data.metrics, "child_run_id": done.info.run_id, COMPLETE: 1})
        return
    versions = _dataset_versions(spec, cfg, st)
    tags = {
        "mlflow.parentRunId": parent_run_id,
        "git_commit": git,
        "ablation": spec.name,
        TRIAL_TAG: key,
        "kind": spec.kind,
        "seed": str(trial["seed"]),
        "tune.trial_id": tune.get_context().get_trial_id() or "",
        **{f"axis.{k}": v for k, v in trial["labels"].items()},
        **{f"dataset.{k}": v for k, v in versions.items()},
    }
    run_id = mlflow_run.start_run(st.mlflow_uri, spec.experiment, key, cfg.model_dump(mode="json"), tags)
    ok = False
    try:
        t0 = time.perf_counter()
        final = {
            "pretrain": lambda: _pretrain(cfg, spec, st, run_id),
            "align": lambda: _align(cfg, st),
            "decode": lambda: _decode(cfg, st),
        }[spec.kind]()
        final["trial_seconds"] = time.perf_counter() - t0
        mlflow_run.log_metrics(st.mlflow_uri, run_id, final, step=int(final.get("step", 0)))
        ok = True
    finally:
        mlflow_run.end_run(st.mlflow_uri, run_id, ok)
    # the last report after the child run is closed: Tune may end the trial's thread inside this call
    tune.report({**final, "child_run_id": run_id, COMPLETE: 1})


def finished_child(st: Settings, spec: AblationSpec, parent_run_id: str, key: str):
    """The FINISHED child run of this trial under this parent, if any: MLflow is the ledger of finished trials."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(st.mlflow_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    if exp is None:
        return None
    query = (
        f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{key}' "
        "and attributes.status = 'FINISHED'"
    )
    runs = client.search_runs([exp.experiment_id], query, max_results=1)
    return runs[0] if runs else None


def _dataset_versions(spec: AblationSpec, cfg, st: Settings) -> dict[str, str]:
    from neurobridge.store.read import sources

    srcs = (
        sources(st, cfg.data.datasets, cfg.data.mixture, cfg.data.allow_partial)
        if spec.kind == "pretrain"
        else sources(st, cfg.data.datasets, allow_partial=cfg.data.allow_partial)
    )
    return {s.name: s.ref.version for s in srcs}


def _pretrain(cfg, spec: AblationSpec, st: Settings, run_id: str) -> dict:
    import torch
    from ray import tune

    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.models.ndt import MaskedNeuralModel
    from neurobridge.train.batches import CollateWindows
    from neurobridge.train.components import Reporter, load_state, log_model, loss_figure, state_writer, tune_backend
    from neurobridge.train.loop import run_steps
    from neurobridge.train.pretrain import resolve
    from neurobridge.tune.local_data import epoch_batches, mixed_rows

    data = resolve(cfg, st)  # the model and the mix `neurobridge pretrain` would train (kernels in bins)
    cfg, vocabs = data.cfg, data.vocabs
    rows = mixed_rows(st, data.srcs, data.mixing)
    collate = CollateWindows.for_pretraining(cfg, vocabs, data.heldout)
    batches = epoch_batches(rows, cfg.optim.batch_size, collate, cfg.seed)

    torch.manual_seed(cfg.seed)
    model = MaskedNeuralModel(cfg.model, vocabs)
    state = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_state(d, cfg)
    logger = mlflow_run.MetricsLogger(st.mlflow_uri, run_id)

    report = Reporter(tune_backend, state_writer(vocabs, cfg), logger=logger)
    last = run_steps(cfg, model, batches, report=report, state=state)
    final = {k: v for k, v in last.items() if isinstance(v, int | float)}
    extra = {"step": int(final.get("step", cfg.optim.max_steps)), "heldout_fraction": cfg.data.heldout_fraction}
    log_model(st.mlflow_uri, run_id, model, vocabs, extra)
    if spec.evaluate.enabled:
        with tempfile.TemporaryDirectory() as d:
            model_file = str(Path(d) / "model.pt")
            save_checkpoint(model_file, model, vocabs, extra)
            final.update(_co_bps(model_file, cfg, spec, st))
    loss_figure(st.mlflow_uri, run_id, (("loss",),))
    return final


def _co_bps(model_file: str, cfg, spec: AblationSpec, st: Settings) -> dict:
    """Pooled co-bps over the evaluated datasets (mean of each dataset's pooled value)."""
    from neurobridge.evaluate.report import EvalConfig
    from neurobridge.evaluate.run import EvalData, evaluate

    datasets = spec.evaluate.datasets or cfg.data.datasets
    mixture = None if spec.evaluate.datasets else cfg.data.mixture
    report = evaluate(
        model_file,
        EvalData(datasets, mixture, exclude_sessions=cfg.data.holdout_sessions),
        EvalConfig(max_sessions=spec.evaluate.max_sessions),
        st,
        track=False,
    )
    out = {}
    for ds, d in report.pooled.items():
        for key in ("co_bps", "co_bps_smoothing"):
            v = d.get(key)
            if isinstance(v, int | float) and math.isfinite(v):
                out[f"{ds}.{key}"] = float(v)
    vals = [v for k, v in out.items() if k.endswith(".co_bps")]
    if vals:
        out["co_bps"] = sum(vals) / len(vals)
    return out


def _align(cfg, st: Settings) -> dict:
    """Headline retrieval numbers: ``<set>.<metric>`` per region set, and the first set's unprefixed."""
    from neurobridge.align.experiment import run_alignment

    result = run_alignment(cfg, st, track=False, figures=False)
    out: dict = {}
    for i, (name, numbers) in enumerate(result.summary().items()):
        for k, v in numbers.items():
            if isinstance(v, int | float) and math.isfinite(v):
                out[f"{name}.{k}"] = float(v)
                if i == 0:
                    out[k] = float(v)
    return out


def _decode(cfg, st: Settings) -> dict:
    """Every score as ``<set>.<task>.<decoder>.<score>``, and the first set's also as ``<task>.<decoder>.<score>``
    (so a spec whose axis changes the region set ranks every trial by one name)."""
    from neurobridge.decode.experiment import run_decode

    local = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"backend": "local"})})
    result = run_decode(local, st, track=False, figures=False)  # the trial is the unit of parallelism
    first = next(iter(cfg.region_sets))
    out = result.metrics()
    out.update({k[len(first) + 1 :]: v for k, v in list(out.items()) if k.startswith(f"{first}.")})
    return out
