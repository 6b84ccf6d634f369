"""MLflow runs: one place that knows the tracking URI, checks it early, and logs lineage, metrics and figures.

The driver creates the run (config, dataset versions, git commit); training workers log metrics into it by run
id from rank 0; the driver attaches figures and the final checkpoint and closes it with the job's outcome.
"""

from __future__ import annotations

import json
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from neurobridge.config import code_commit

# What each experiment holds, shown at the top of its page in the MLflow UI (set when the experiment is created).
EXPERIMENTS = {
    "neurobridge-ingest": "Ingest runs: catalog entries -> token-store dataset versions (params dataset.<name>), with "
    "item counts; a run ends FAILED when any item failed.",
    "neurobridge-pretrain": "Masked pretraining on Ray Train: loss and val loss, the token-store versions read "
    "(Datasets), the exported weights-only model (Logged models) and, once `neurobridge evaluate runs:/<id>` ran, "
    "eval.<dataset>.co_bps beside its baselines.",
    "neurobridge-align": "Neural -> image alignment: one projector per region set, retrieval top-1/top-5 on unseen "
    "images beside chance, the projectors as a logged model.",
    "neurobridge-evaluate": "Evaluations of model files that are not MLflow runs (evaluations of runs are written "
    "into the evaluated run as eval.* metrics).",
    "neurobridge-ablate": "Ablation trials on Ray Tune: one run per trial, grouped by ablation.",
    "neurobridge-finetune": "Fine-tuning of a pretrained model to new sessions.",
}


class TrackingError(RuntimeError):
    """The tracking server cannot be used; raised before any training starts."""


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_tracking(uri: str) -> None:
    """Fail now, with the URI named, if the tracking store is unreachable (not after an hour of training)."""
    if uri.startswith("sqlite:///"):
        _create_sqlite(uri)
    if uri.startswith(("http://", "https://")):
        _probe_server(uri)
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as err:  # connection refused, bad URI, locked DB: all mean "cannot track"
        raise TrackingError(f"MLflow tracking store {uri} is not reachable: {type(err).__name__}: {err}") from None


def _create_sqlite(uri: str) -> None:
    """Create a new SQLite store with its artifact root beside it: MLflow would otherwise give the ``Default``
    experiment ``./mlruns`` of whatever directory was current, outside ``NB_HOME``."""
    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    if not db.exists():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(uri, artifact_location(uri))


def _probe_server(uri: str, timeout_s: float = 5.0) -> None:
    """One short request to the server first: MLflow's client retries a refused connection for minutes."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # the server answered (a proxy without /health, auth): let the real request decide
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow tracking server {uri} is not reachable: {reason}") from None


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return out


def git_commit() -> str:
    """The commit of the code that runs (``config.code_commit``), or "unknown"."""
    return code_commit() or "unknown"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store live beside the database (not in ./mlruns of whatever directory is
    current); servers choose their own artifact store."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").absolute().as_uri()
    return None


def start_run(uri: str, experiment: str, name: str, config: dict, tags: dict[str, str]) -> str:
    check_tracking(uri)
    client = _client(uri)
    exp_id = experiment_id(client, uri, experiment)
    run = client.create_run(exp_id, run_name=name, tags={"git_commit": git_commit(), **tags})
    params = flatten(config)
    items = list(params.items())
    from mlflow.entities import Param

    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in items[i : i + 100]])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_text(json.dumps(config, indent=1, default=str))
        client.log_artifact(run.info.run_id, str(path))
    return run.info.run_id


def experiment_id(client, uri: str, name: str) -> str:
    """The experiment's id, creating it (artifacts beside a SQLite store, with its description) if new."""
    exp = client.get_experiment_by_name(name)
    note = EXPERIMENTS.get(name, "")
    if exp is None:
        tags = {"mlflow.note.content": note} if note else None
        return client.create_experiment(name, artifact_location(uri), tags=tags)
    if note and "mlflow.note.content" not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", note)
    return exp.experiment_id


@contextmanager
def system_metrics(uri: str, run_id: str | None, node: str = "rank0", every_s: float = 5.0):
    """CPU, memory, disk, network (and GPU where pynvml finds one) as ``system/*`` metrics of the run while the
    block runs; skipped quietly where MLflow's monitor cannot start (no psutil, no run)."""
    monitor = None
    if run_id is not None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, node_id=node, tracking_uri=uri)
            monitor.start()
        except Exception:  # an optional record: training must not fail because a monitor could not start
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()
            _publish_last_sample(monitor)


def _publish_last_sample(monitor) -> None:
    """MLflow's monitor drops the sample it collects when stopped: a run shorter than one interval would record no
    system metrics at all, so that last sample is logged here."""
    try:
        metrics = monitor.aggregate_metrics()
        if metrics:
            monitor.publish_metrics(metrics)
            monitor.mlflow_logger.flush()
    except Exception:  # an optional record, as above
        pass


_NOT_IN_NAMES = re.compile(r"[^0-9A-Za-z_\-. :/]")


def metric_name(name: str) -> str:
    """``name`` with every character MLflow refuses in a metric name (``+``, ``=``, ``@``, …) as ``_``: names are built
    from arm, variant and dataset names, and a refused name would fail a run at its end, after the work is done."""
    return _NOT_IN_NAMES.sub("_", name)


class MetricsLogger:
    """Metrics into an existing run (used from the rank-0 training worker)."""

    def __init__(self, uri: str, run_id: str):
        self.client, self.run_id = _client(uri), run_id

    def log(self, metrics: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(metric_name(k), float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float)]
        self.client.log_batch(self.run_id, metrics=ms)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, key))


def log_figure(uri: str, run_id: str, fig, name: str) -> None:
    _client(uri).log_figure(run_id, fig, name)


def log_artifact(uri: str, run_id: str, path: str, folder: str | None = None) -> None:
    _client(uri).log_artifact(run_id, path, folder)


def log_metrics(uri: str, run_id: str, metrics: dict, step: int = 0) -> None:
    MetricsLogger(uri, run_id).log(metrics, step)


def log_params(uri: str, run_id: str, params: dict) -> None:
    """Params learnt during the run (e.g. the dataset versions an ingest produced)."""
    from mlflow.entities import Param

    items = list(flatten(params).items())
    for i in range(0, len(items), 100):
        _client(uri).log_batch(run_id, params=[Param(k, v[:6000]) for k, v in items[i : i + 100]])


def end_run(uri: str, run_id: str, ok: bool) -> None:
    _client(uri).set_terminated(run_id, "FINISHED" if ok else "FAILED")
