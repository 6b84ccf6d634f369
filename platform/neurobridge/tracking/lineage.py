"""MLflow's own lineage records for a run: the token-store versions it read (dataset inputs), the model it made
(a logged model), and an evaluation of that model written back into the run that trained it.

Tags such as ``dataset.<name>`` say the same to a script, but the MLflow UI shows only its own records: "Datasets
used" on the run page, the "Logged models" tab, and metrics linked to a model and a dataset. Everything here is
model-agnostic: a model is a folder of files under the run's ``model/`` artifact path, whatever family made it.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from neurobridge.store.schema import SAMPLE_COLUMNS
from neurobridge.store.versions import DatasetRef
from neurobridge.tracking.mlflow_run import _client

MODEL_ARTIFACTS = "model"  # the run's artifact folder every model family writes its weights-only files to
EVAL_PREFIX = "eval."  # evaluation metrics written into the evaluated run: eval.<dataset>.<metric>


def _source(uri: str):
    """MLflow's dataset source for a store URI (local path, s3://, gs://, …); a plain record for any other."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    try:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both readings are the local one
            warnings.simplefilter("ignore")
            return resolve_dataset_source(uri)
    except Exception:  # no resolver for this scheme (hf://, memory://): keep the URI as a tag of a code source
        from mlflow.data.code_dataset_source import CodeDatasetSource

        return CodeDatasetSource(tags={"uri": uri})


def _colspec() -> str:
    """The rows' columns as MLflow's column spec, so the run page shows the token store's schema."""
    import pyarrow as pa
    from mlflow.types.schema import Array, ColSpec, Schema

    names = {pa.string(): "string", pa.float64(): "double", pa.float32(): "float", pa.int32(): "integer"}
    names |= {pa.uint16(): "integer", pa.bool_(): "boolean"}

    def spec(t):
        return Array(names[t.value_type]) if pa.types.is_list(t) else names[t]

    cols = [ColSpec(spec(c.type), c.name, required=c.nullable == "never") for c in SAMPLE_COLUMNS]
    return json.dumps({"mlflow_colspec": Schema(cols).to_dict()})


def dataset_entity(ref: DatasetRef):
    """A token-store version as an MLflow dataset: name, digest = version, source = the version's URI, profile =
    what the card counts (with ``status``: partial versions say so on the run page)."""
    from mlflow.entities import Dataset

    src = _source(ref.path)
    c = ref.card.counts
    profile = {"status": ref.card.status, **c.model_dump(), "splits": ref.card.splits, "bin_ms": ref.card.bin_ms}
    return Dataset(
        name=ref.dataset,
        digest=ref.version,
        source_type=src._get_source_type(),
        source=src.to_json(),
        schema=_colspec(),
        profile=json.dumps(profile),
    )


def log_dataset_inputs(uri: str, run_id: str, refs: Iterable[DatasetRef], context: str = "training") -> None:
    """Each version as a dataset input of the run (context: training, evaluation, alignment); a partial version
    also tags the run with its failed items (``partial.<dataset>``) and counts them in ``data.items_failed``."""
    from mlflow.entities import DatasetInput, InputTag, Metric, RunTag

    refs = list(refs)
    inputs, tags, failed = [], [], 0
    for ref in refs:
        c = ref.card.counts
        extra = [InputTag("status", ref.card.status), InputTag("items_failed", str(c.items_failed))]
        inputs.append(DatasetInput(dataset_entity(ref), [InputTag("mlflow.data.context", context), *extra]))
        if ref.card.partial:
            failed += c.items_failed
            tags.append(RunTag(f"partial.{ref.dataset}", f"{ref.version}: {c.items_failed} of {c.items} items failed"))
    client = _client(uri)
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    now = int(time.time() * 1000)
    key = "data.items_failed" if context == "training" else f"data.{context}.items_failed"
    client.log_batch(run_id, metrics=[Metric(key, float(failed), now, 0)], tags=tags)


# ---------------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelInfo:
    """How to describe the run's model to MLflow: its name, its family (``model_type``), params and the step whose
    weights it holds."""

    name: str
    model_type: str
    params: Mapping[str, object]
    step: int = 0


def log_logged_model(uri: str, run_id: str, info: ModelInfo) -> str:
    """The run's ``model/`` folder as an MLflow 3 logged model of the run (its output at ``info.step``); returns
    the model id. The files stay weights-only checkpoints; nothing is pickled."""
    from mlflow.entities import LoggedModelOutput

    client = _client(uri)
    run = client.get_run(run_id)
    params = {k: str(v)[:6000] for k, v in info.params.items()}
    model = client.create_logged_model(
        run.info.experiment_id,
        name=info.name,
        source_run_id=run_id,
        params=params,
        model_type=info.model_type,
        tags={"neurobridge.kind": info.model_type},
    )
    try:
        with tempfile.TemporaryDirectory() as d, _quiet_transfers():
            local = client.download_artifacts(run_id, MODEL_ARTIFACTS, d)
            client.log_model_artifacts(model.model_id, local)
        client.finalize_logged_model(model.model_id, "READY")
    except Exception:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, info.step)])
    return model.model_id


@contextmanager
def _quiet_transfers():
    """No MLflow transfer progress bars: in a job log each redraw is a line, glued to what is printed next."""
    import os

    old = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old


def run_model_id(uri: str, run_id: str) -> str | None:
    """The logged model a run produced (its last output), if any."""
    outputs = _client(uri).get_run(run_id).outputs
    models = list(outputs.model_outputs) if outputs is not None else []
    return models[-1].model_id if models else None


# ---------------------------------------------------------------------------------------------------- evaluation


def evaluated_run(model_ref: str) -> str | None:
    """The run id of a ``runs:/<run id>[/…]`` model reference; None for a model file."""
    if not model_ref.startswith("runs:/"):
        return None
    return model_ref[len("runs:/") :].strip("/").split("/")[0] or None


def log_evaluation(uri: str, run_id: str, pooled: Mapping[str, Mapping[str, float]], refs: list[DatasetRef]) -> None:
    """Evaluation metrics into the evaluated run as ``eval.<dataset>.<metric>``, each linked to the run's logged
    model and to the dataset version it was measured on, so the run page shows them beside the training loss and
    the model page beside the model."""
    from mlflow.entities import Metric, RunTag

    model_id = run_model_id(uri, run_id)
    versions = {r.dataset: r.version for r in refs}
    now = int(time.time() * 1000)
    metrics = []
    for ds, values in pooled.items():
        link = {"dataset_name": ds, "dataset_digest": versions[ds]} if ds in versions else {}
        for k, v in values.items():
            if isinstance(v, int | float) and v == v and abs(v) != float("inf"):
                metrics.append(Metric(f"{EVAL_PREFIX}{ds}.{k}", float(v), now, 0, model_id=model_id, **link))
    tags = [RunTag("evaluated", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))]
    client = _client(uri)
    for i in range(0, max(len(metrics), 1), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500], tags=tags if i == 0 else [])
    log_dataset_inputs(uri, run_id, refs, "evaluation")
