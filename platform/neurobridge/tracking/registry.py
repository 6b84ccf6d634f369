"""The MLflow model registry: trained models from MLflow runs → registered versions with lineage and aliases.

A run is registered by its ``kind`` tag, through the ``ModelKind`` its model family supplies (the window encoder
and the alignment projectors: ``inference/registrable.py``); each kind names the file its ``model/`` folder must
hold. The registered model is a pyfunc saved from code (nothing pickled)
whose artifact is the run's weights-only ``model/`` folder, with a signature and an input example. Each version
carries the run's lineage as tags (dataset versions, config hash, git commit, final metrics, and the evaluation
metrics with their baselines once ``neurobridge evaluate`` wrote them into the run) and new versions get the
``candidate`` alias; ``promote`` moves ``champion``, but only to a version whose kind's gate passes it (an
evaluation exists and beats its baseline) unless forced, and a forced promotion is recorded on the version.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurobridge.config import Settings, get_settings
from neurobridge.tracking import mlflow_run

MODEL_DIR = "registered_model"  # run artifact folder holding the MLflow model (MLmodel, code, artifacts)


@dataclass(frozen=True)
class Verdict:
    """A kind's judgement of a run's metrics: was it evaluated, does it pass its baseline, and why (one line)."""

    evaluated: bool
    passed: bool
    reason: str

    @property
    def label(self) -> str:
        return "passed" if self.passed else ("below baseline" if self.evaluated else "not evaluated")


@dataclass(frozen=True)
class ModelKind:
    """How runs of one ``kind`` tag become registered models; the model families supply these (``inference``),
    so this module knows MLflow and lineage, never a model class.

    ``describe(folder)`` loads the run's ``model/`` folder weights-only (refusing anything else) and returns the
    MLflow signature and input example; ``key_metric(name)`` says which run metrics are tagged on the version;
    ``gate(metrics)`` judges the run's metrics against the family's baseline (what ``champion`` requires)."""

    kind: str
    file: str  # the file a run's model/ folder must hold
    pyfunc_code: Path  # the PythonModel module saved with the model (models from code: nothing pickled)
    describe: Callable[[Path], tuple[Any, Any]]
    key_metric: Callable[[str], bool]
    gate: Callable[[Mapping[str, float]], Verdict] | None = None


GATED_ALIASES = ("champion",)  # aliases a version gets only when its kind's gate passes it (or when forced)


DEFAULT_ALIAS = "candidate"


class RegistryError(ValueError):
    """A registry request that cannot be served; the message names what exists instead."""


class GateError(RegistryError):
    """A promotion the version's evaluation does not support (none, or below its baseline)."""


@dataclass
class VersionInfo:
    name: str
    version: str
    run_id: str
    aliases: list[str]
    tags: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def lineage(self) -> dict[str, str]:
        keep = ("dataset.", "metric.", "evaluation", "forced.", "partial.")
        return {k: v for k, v in sorted(self.tags.items()) if k.startswith(keep) or k in LINEAGE}


LINEAGE = ("kind", "run_id", "git_commit", "config_hash", "mixture", "logged_model_id")


def _client(settings: Settings):
    from mlflow.tracking import MlflowClient

    mlflow_run.check_tracking(settings.mlflow_uri)  # a server that is down fails here, naming the URI
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def _info(mv, aliases: list[str] | None = None) -> VersionInfo:
    return VersionInfo(
        mv.name,
        str(mv.version),
        mv.run_id or "",
        sorted(aliases if aliases is not None else (mv.aliases or [])),
        dict(mv.tags or {}),
        mv.source or "",
    )


# ---------------------------------------------------------------------------------------------------- register


def config_hash(client, run_id: str) -> str:
    """sha256 (first 16 hex) of the run's resolved config (its ``config.json``; the params when it has none)."""
    with tempfile.TemporaryDirectory() as d:
        try:
            data = json.loads(Path(client.download_artifacts(run_id, "config.json", d)).read_text())
        except Exception:  # runs logged without config.json: the params are the config
            data = client.get_run(run_id).data.params
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _requirements() -> list[str]:
    import mlflow
    import torch

    from neurobridge import __version__

    return [f"neurobridge=={__version__}", f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}"]


def register(
    run_id: str,
    name: str,
    kinds: Mapping[str, ModelKind],
    alias: str | None = DEFAULT_ALIAS,
    settings: Settings | None = None,
) -> VersionInfo:
    """Register a FINISHED run's model as a new version of ``name`` (created if new) with lineage tags."""
    import mlflow.pyfunc

    settings = settings or get_settings()
    client = _client(settings)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise RegistryError(f"no MLflow run {run_id!r} in {settings.mlflow_uri}") from None
    status = run.info.status
    if status != "FINISHED":
        raise RegistryError(f"run {run_id} ({run.info.run_name}) is {status}: only FINISHED runs are registered")
    tags = run.data.tags
    kind = tags.get("kind")
    if kind not in kinds:
        raise RegistryError(f"run {run_id} has kind {kind!r}; registrable kinds: {', '.join(kinds)}")
    spec = kinds[kind]
    with tempfile.TemporaryDirectory() as d:
        try:
            local = Path(client.download_artifacts(run_id, "model", d))
        except Exception as err:
            raise RegistryError(f"run {run_id} logged no model/ folder ({type(err).__name__})") from None
        if not (local / spec.file).exists():
            raise RegistryError(
                f"run {run_id}: model/ holds {sorted(p.name for p in local.iterdir())}, not {spec.file}"
            )
        sig, example = spec.describe(local)
        out = Path(d) / MODEL_DIR
        mlflow.pyfunc.save_model(
            str(out),
            python_model=str(spec.pyfunc_code),
            artifacts={"model": str(local)},
            model_config={"kind": kind},
            signature=sig,
            input_example=example,
            pip_requirements=_requirements(),
        )
        client.log_artifacts(run_id, str(out), MODEL_DIR)
    lineage = {
        "kind": kind,
        "run_id": run_id,
        "git_commit": tags.get("git_commit", "unknown"),
        "config_hash": config_hash(client, run_id),
        **{k: v for k, v in tags.items() if k.startswith(("dataset.", "partial.")) or k == "mixture" and v},
        **evaluation_tags(spec, run.data.metrics),
    }
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"neurobridge {kind} model")
    logged = _model_id(run)
    if logged:  # a tag, not create_model_version(model_id=…): a server requires the source inside that model
        lineage["logged_model_id"] = logged
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/{MODEL_DIR}", run_id=run_id, tags=lineage)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return _info(client.get_model_version(name, mv.version))


def _model_id(run) -> str | None:
    """The logged model the run produced (its weights-only files; the version's source is the pyfunc built on them)."""
    outputs = list(run.outputs.model_outputs) if run.outputs is not None else []
    return outputs[-1].model_id if outputs else None


def evaluation_tags(spec: ModelKind, metrics: Mapping[str, float]) -> dict[str, str]:
    """The run's key metrics (training's, and the evaluation's with their baselines) as ``metric.*`` version tags,
    plus the gate's verdict (``evaluation``, ``evaluation.reason``)."""
    tags = {f"metric.{k}": f"{v:.6g}" for k, v in sorted(metrics.items()) if spec.key_metric(k)}
    if spec.gate is not None:
        verdict = spec.gate(metrics)
        tags |= {"evaluation": verdict.label, "evaluation.reason": verdict.reason[:5000]}
    return tags


# ---------------------------------------------------------------------------------------------------- look-ups


def _names(client) -> list[str]:
    return sorted(m.name for m in client.search_registered_models())


def _model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = _names(client)
        raise RegistryError(f"no registered model {name!r}; registered: {', '.join(names) or 'none'}") from None


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/version`` → (name, alias, version)."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.partition("/")
    if not name or not version.isdigit():
        raise RegistryError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return name, None, version


def resolve(uri: str, settings: Settings | None = None) -> VersionInfo:
    """The version a ``models:/`` URI names now; a missing alias or version lists the ones that exist."""
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    client = _client(settings)
    name, alias, version = parse_uri(uri)
    rm = _model(client, name)
    if alias is not None:
        aliases = dict(rm.aliases or {})
        if alias not in aliases:
            have = ", ".join(f"@{a} → v{v}" for a, v in sorted(aliases.items())) or "none"
            raise RegistryError(f"{name} has no alias {alias!r}; its aliases: {have}")
        version = str(aliases[alias])
    try:
        mv = client.get_model_version(name, version)
    except MlflowException:
        have = sorted(int(m.version) for m in client.search_model_versions(f"name='{name}'"))
        raise RegistryError(f"{name} has no version {version}; versions: {have}") from None
    return _info(mv)


@dataclass(frozen=True)
class Promotion:
    """What ``promote`` is asked: point ``alias`` of ``name`` at ``version`` (None: the one at ``candidate``);
    ``force`` overrides a failing gate (recorded on the version as ``forced.<alias>``)."""

    name: str
    alias: str = "champion"
    version: str | None = None
    force: bool = False


def promote(
    request: Promotion, kinds: Mapping[str, ModelKind] | None = None, settings: Settings | None = None
) -> VersionInfo:
    """Point the alias at the version. A gated alias (``champion``) needs the version's run to pass its kind's gate:
    refused without an evaluation or below the baseline, unless ``force`` (then the reason is tagged). The version's
    metric and evaluation tags are refreshed from its run first, so an evaluation made after registering counts."""
    settings = settings or get_settings()
    client = _client(settings)
    version = request.version or resolve(f"models:/{request.name}@{DEFAULT_ALIAS}", settings).version
    target = resolve(f"models:/{request.name}/{version}", settings)
    spec = (kinds or {}).get(target.tags.get("kind", ""))
    if spec is not None and target.run_id:
        fresh = evaluation_tags(spec, client.get_run(target.run_id).data.metrics)
        for k, v in fresh.items():
            client.set_model_version_tag(request.name, target.version, k, v)
        _gate(request, target, spec, fresh, client)
    elif request.alias in GATED_ALIASES and not request.force:
        raise GateError(f"{target.uri}: no registrable kind or run to judge it by; --force to promote it anyway")
    client.set_registered_model_alias(request.name, request.alias, target.version)
    return resolve(f"models:/{request.name}@{request.alias}", settings)


def _gate(request: Promotion, target: VersionInfo, spec: ModelKind, fresh: dict[str, str], client) -> None:
    """Refuse a gated alias to a version whose gate fails, or record the force that overrides it."""
    if request.alias not in GATED_ALIASES or spec.gate is None or fresh.get("evaluation") == "passed":
        return
    reason = fresh.get("evaluation.reason", "")
    if not request.force:
        raise GateError(
            f"{target.uri} is not promoted to @{request.alias}: {fresh.get('evaluation')}: {reason}. "
            "Evaluate it (`neurobridge evaluate runs:/<run id> --dataset …`) or promote with --force, which is "
            "recorded on the version"
        )
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_model_version_tag(request.name, target.version, f"forced.{request.alias}", f"{when}: {reason}"[:5000])


def list_versions(settings: Settings | None = None, name: str | None = None) -> list[VersionInfo]:
    settings = settings or get_settings()
    client = _client(settings)
    out = []
    for n in [name] if name else _names(client):
        aliases: dict[str, list[str]] = {}
        for a, v in (_model(client, n).aliases or {}).items():
            aliases.setdefault(str(v), []).append(a)
        for mv in client.search_model_versions(f"name='{n}'"):
            out.append(_info(mv, aliases.get(str(mv.version), [])))
    return sorted(out, key=lambda v: (v.name, int(v.version)))


def load(uri: str, settings: Settings | None = None):
    """(the pyfunc model, its VersionInfo) for a ``models:/`` URI; the alias is pinned to its version first, so a
    promotion during a job never mixes two versions."""
    import mlflow.artifacts
    import mlflow.pyfunc

    settings = settings or get_settings()
    info = resolve(uri, settings)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=info.source, tracking_uri=settings.mlflow_uri, dst_path=tempfile.mkdtemp(prefix="nb-registry-")
    )
    return mlflow.pyfunc.load_model(local), info
