"""The evaluation job: resolve the model and data, evaluate every session, print, save and track the report."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurobridge.config import Settings, get_settings
from neurobridge.evaluate.behaviour import BehaviorConfig
from neurobridge.evaluate.report import EvalConfig, Report, evaluate_session, pool, session_behaviour
from neurobridge.evaluate.truth import Truth
from neurobridge.models.checkpoint import load_checkpoint
from neurobridge.storage import StoreError
from neurobridge.store.read import sources, unit_columns
from neurobridge.store.rows import session_rows
from neurobridge.store.splits import HeldoutSplit, heldout_flags
from neurobridge.tracking import lineage, mlflow_run


def resolve_model_file(ref: str, settings: Settings) -> str:
    """A model reference → a local ``model.pt``: a file path, or ``runs:/<run id>`` (the run's ``model/model.pt``)."""
    if ref.startswith("runs:/"):
        run_id = ref[len("runs:/") :].strip("/").split("/")[0]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(settings.mlflow_uri)
        try:
            return client.download_artifacts(run_id, "model/model.pt", tempfile.mkdtemp(prefix="nb-model-"))
        except Exception as err:
            raise StoreError(f"{ref}: no model/model.pt in MLflow run {run_id} ({type(err).__name__}: {err})") from None
    if not Path(ref).exists():
        raise StoreError(f"{ref}: no such model file (give a path to model.pt or runs:/<run id>)")
    return ref


@dataclass(frozen=True)
class EvalData:
    """What to evaluate: dataset refs and/or a mixture, optionally only some sessions (or all but some), and the
    simulator's truth folder for the oracle (None: no oracle)."""

    datasets: list[str] | None = None
    mixture: str | None = None
    sessions: list[str] | None = None
    exclude_sessions: list[str] | None = None
    truth_dir: str | None = None


def open_evaluation(model_ref: str, data: EvalData, settings: Settings, allow_partial: bool = False):
    """(model, vocabs, checkpoint extras, sources, held-out split): what every evaluation of ``data`` starts from."""
    model, vocabs, extra = load_checkpoint(resolve_model_file(model_ref, settings))
    srcs = sources(settings, data.datasets, data.mixture, allow_partial)
    return model, vocabs, extra, srcs, HeldoutSplit(heldout_flags(settings, srcs), extra.get("heldout_fraction", 0.25))


def sessions_of(settings: Settings, src, data: EvalData, splits: tuple[str, ...], max_sessions: int | None = None):
    """The source's sessions that ``data`` asks for (``sessions``, minus ``exclude_sessions``)."""
    wanted = set(data.sessions) if data.sessions else None
    found = session_rows(settings, src, splits, wanted, max_sessions)
    return [s for s in found if s.session not in (data.exclude_sessions or ())]


def evaluate(
    model_ref: str,
    data: EvalData,
    cfg: EvalConfig | None = None,
    settings: Settings | None = None,
    track: bool = True,
    progress=None,
) -> Report:
    settings = settings or get_settings()
    cfg = cfg or EvalConfig()
    model, vocabs, extra, srcs, split = open_evaluation(model_ref, data, settings, cfg.allow_partial)
    if cfg.forecast is None:  # checkpoints older than trained_modes say nothing: not claimed as a forecaster
        cfg = cfg.model_copy(update={"forecast": "forward" in extra.get("trained_modes", ())})
    truth = Truth(data.truth_dir) if data.truth_dir else None
    results = []
    for src in srcs:
        raw = unit_columns(settings, src, "raw_id") if truth is not None else {}
        for sess in sessions_of(settings, src, data, (cfg.split, "train"), cfg.max_sessions):
            if progress is not None:
                progress(f"{src.name}/{sess.session}")
            r = evaluate_session(model, vocabs, sess, split, cfg, truth, raw.get(sess.session))
            if r is not None:
                results.append(r)
    if not results:
        raise StoreError(
            f"nothing to evaluate: no {cfg.split} windows with spike counts in {[s.name for s in srcs]}"
            + (f" for sessions {sorted(data.sessions)}" if data.sessions else "")
        )
    report = Report(results, pool(results))
    if track:
        _track(settings, model_ref, report, cfg, [s.ref for s in srcs])
    return report


def evaluate_behaviour(
    model_ref: str, data: EvalData, decoders: dict[str, BehaviorConfig], settings: Settings | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Behaviour R² of several feature sets (label → decoder settings), beside smoothed spikes, per session:
    {session: {label: metrics}}. One model load, no co-smoothing: a comparison of features, not a report."""
    settings = settings or get_settings()
    model, vocabs, _, srcs, split = open_evaluation(model_ref, data, settings)
    out = {
        sess.session: session_behaviour(model, vocabs, sess, split, decoders)
        for src in srcs
        for sess in sessions_of(settings, src, data, ("test", "train"))
    }
    if not out:
        raise StoreError(f"no sessions with test windows to decode behaviour from in {[s.name for s in srcs]}")
    return out


def _track(settings: Settings, model_ref: str, report: Report, cfg: EvalConfig, refs: list) -> str:
    """Into the evaluated run when the model is one (``runs:/<id>``): ``eval.<dataset>.<metric>`` beside its
    training loss, the report, config and figure under ``evaluation/<datasets>/``. A model file that is no run
    gets a run of its own in ``neurobridge-evaluate``."""
    uri = settings.mlflow_uri
    run_id = lineage.evaluated_run(model_ref)
    own = run_id is None
    if own:
        tags = {"kind": "evaluate", "model": model_ref, **{f"dataset.{r.dataset}": r.version for r in refs}}
        run_id = mlflow_run.start_run(uri, "neurobridge-evaluate", "evaluate", cfg.model_dump(), tags)
    ok = False
    try:
        lineage.log_evaluation(uri, run_id, report.pooled, refs)
        folder = "evaluation/" + "+".join(sorted(r.dataset for r in refs))
        with tempfile.TemporaryDirectory() as d:
            for name, data in (("report.json", report.to_dict()), ("config.json", cfg.model_dump(mode="json"))):
                (Path(d) / name).write_text(json.dumps(data, indent=1, default=float))
                mlflow_run.log_artifact(uri, run_id, str(Path(d) / name), folder)
        fig = figure(report)
        mlflow_run.log_figure(uri, run_id, fig, f"{folder}/co_bps.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
        ok = True
    finally:
        if own:
            mlflow_run.end_run(uri, run_id, ok)
    report.run_id = run_id
    return run_id


def figure(report: Report):
    """co-bps per session: model beside smoothing and oracle (same held-out units, same windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.table()
    keys = [
        ("co_bps_smoothing", "smoothing + GLM"),
        ("co_bps", "model"),
        ("co_bps_readout", "model latents + GLM"),
        ("co_bps_readout_untrained", "untrained latents + GLM"),
        ("co_bps_oracle", "oracle"),
    ]
    keys = [(k, label) for k, label in keys if any(k in r for r in rows)]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 3.5))
    x = np.arange(len(rows))
    w = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        vals = [r.get(key, np.nan) for r in rows]
        ax.bar(x + (i - (len(keys) - 1) / 2) * w, vals, width=w, label=label)
    ax.set_xticks(x, [f"{r['dataset']}\n{r['session']}" for r in rows], rotation=60, ha="right", fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("co-bps (held-out units)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
