"""One run of the platform from one config file: the stages ``jobs/pipeline.py --config`` executes, in order.

Stages are registered by name in ``STAGES``; each takes the config, the settings and what earlier stages left in
``state`` (the ingest leaves its mixture and dataset versions for pretraining). A config naming a stage that is
not registered fails before anything runs; so does a listed stage without its section.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from neurobridge import __version__
from neurobridge.align.config import AlignConfig
from neurobridge.catalog import AnyEntry, CatalogError, resolve
from neurobridge.config import ENV_VARS, Settings, describe_validation_error, get_settings
from neurobridge.sim import SimConfig
from neurobridge.train.config import PretrainConfig
from neurobridge.workflows.registration import EvaluateStage, evaluate_into_run, pooled_lines, register_gated

FROM_PRETRAIN = "pretrain"  # align.data.encoder.checkpoint: the model the pretrain stage of this run produced


class PipelineError(ValueError):
    """A pipeline config that cannot run; the message names the file, the key and a fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SettingsOverrides(_Strict):
    """Locations for this run; unset keys keep the environment's (NB_STORE, NB_RAW, NB_MLFLOW_URI, NB_S3_ENDPOINT)."""

    store: str | None = None
    raw_root: str | None = None
    mlflow_uri: str | None = None
    s3_endpoint: str | None = None


class IngestStage(_Strict):
    """Catalog entries to ingest in one Ray Data run, and how."""

    catalog: list[str] = Field(default_factory=list, description="catalog file stems, entry names or YAML paths")
    entries: list[AnyEntry] = Field(default_factory=list, description="catalog entries written inline")
    mixture: str | None = Field(None, description="pin the resulting dataset versions as this named mixture")
    workers: int | None = Field(
        None,
        ge=1,
        description="items in flight at once; default: the cluster's CPUs now (set it on autoscaling "
        "clusters, whose CPUs appear only once work asks for them)",
    )
    max_retries: int = Field(3, ge=0, description="attempts after the worker ingesting an item dies")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per item task, e.g. {ingest: 0.001} (cluster.yaml)"
    )
    experiment: str = Field("neurobridge-ingest", description="MLflow experiment of the ingest run")
    track: bool = Field(True, description="log an MLflow run (config, dataset versions, counts)")

    @model_validator(mode="after")
    def _something(self) -> IngestStage:
        if not self.catalog and not self.entries:
            raise ValueError("name catalog refs under `catalog:` or write entries under `entries:`")
        return self


class RegisterStage(_Strict):
    """Register the pretrain stage's run (or ``run``) as a new version of ``name``; optionally promote it."""

    name: str = Field("neurobridge-encoder", description="registered model name")
    run: str | None = Field(None, description="MLflow run id; default: the run the pretrain stage just made")
    alias: str = Field("candidate", description="alias the new version gets")
    promote: str | None = Field(
        None, description="also point this alias at the new version; champion only if its evaluation passes the gate"
    )


class PipelineConfig(_Strict):
    name: str = Field("pipeline", description="run name: MLflow run names and tags start with it")
    stages: list[str] = Field(min_length=1, description="stages to run, in order")
    settings: SettingsOverrides = SettingsOverrides()
    register_stage: RegisterStage | None = Field(
        None, alias="register", description="register stage: the pretrain run → model registry (`register:` in YAML)"
    )
    simulate: SimConfig | None = Field(None, description="simulate stage: ground-truth recordings into <raw>/sim")
    ingest: IngestStage | None = None
    pretrain: PretrainConfig | None = Field(None, description="pretrain stage: the typed pretraining config")
    evaluate: EvaluateStage | None = Field(None, description="evaluate stage: the pretrain run, into itself")
    align: AlignConfig | None = Field(
        None, description="align stage: the typed alignment config (encoder.checkpoint: pretrain = this run's model)"
    )

    @field_validator("stages")
    @classmethod
    def _known(cls, stages: list[str]) -> list[str]:
        for s in stages:
            if s in STAGES:
                continue
            hint = difflib.get_close_matches(s, list(STAGES), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"unknown stage {s!r}{extra} (available: {', '.join(STAGES)})")
        dup = sorted({s for s in stages if stages.count(s) > 1})
        if dup:
            raise ValueError(f"stage(s) listed twice: {', '.join(dup)}")
        return stages

    @model_validator(mode="after")
    def _sections(self) -> PipelineConfig:
        for s in self.stages:
            if s in SECTION_REQUIRED and getattr(self, s) is None:
                raise ValueError(f"stage {s!r} is listed but the config has no `{s}:` section")
        return self


def load_pipeline(path: str, stages: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline config from a local path or any fsspec URI (s3://…); ``stages`` replaces the listed ones."""
    from neurobridge.storage import filesystem

    try:
        fs, p = filesystem(path)
        with fs.open(p, "rb") as f:
            data = yaml.safe_load(f.read()) or {}
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such pipeline config") from None
    except yaml.YAMLError as err:
        raise PipelineError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping with `stages:` and one section per stage")
    if stages:
        data["stages"] = stages
    for s in data.get("stages") or []:
        if s in SECTION_REQUIRED and s not in data:
            raise PipelineError(f"{path}: stage {s!r} is listed in `stages` but there is no `{s}:` section")
    try:
        return PipelineConfig(**data)
    except ValidationError as err:
        raise PipelineError(describe_validation_error(err, PipelineConfig, path)) from None


@dataclass
class StageOutcome:
    ok: bool
    summary: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # one line each, printed last so job messages carry them


def run_simulate(cfg: PipelineConfig, settings: Settings, state: dict, echo: Callable[[str], None]) -> StageOutcome:
    from neurobridge.sim import simulate

    out = f"{settings.raw_root.rstrip('/')}/sim"
    index = simulate(out, cfg.simulate or SimConfig(), progress=False)
    echo(f"simulate: {len(index['sessions'])} sessions → {out}")
    state["simulation"] = out
    return StageOutcome(True, {"sessions": len(index["sessions"]), "out": out})


def run_ingest(cfg: PipelineConfig, settings: Settings, state: dict, echo: Callable[[str], None]) -> StageOutcome:
    from neurobridge.config import ensure_ray, worker_origin
    from neurobridge.ingest.pipeline import ingest_many
    from neurobridge.store.mixtures import write_mixture
    from neurobridge.tracking import mlflow_run

    ic = cfg.ingest
    try:
        entries = [e for ref in ic.catalog for e in resolve(ref)] + list(ic.entries)
    except CatalogError as err:
        return StageOutcome(False, problems=[str(err)])
    run_id = None
    if ic.track:  # opened first: an unreachable tracking server fails the stage before any work
        params = {
            "pipeline": cfg.name,
            "stage": "ingest",
            "ingest": ic.model_dump(mode="json", exclude={"entries"}),
            "entries": [e.name for e in entries],
            "store": settings.store,
        }
        run_id = mlflow_run.start_run(settings.mlflow_uri, ic.experiment, f"{cfg.name}/ingest", params, _tags(cfg))
        echo(f"ingest: MLflow run {run_id} in {settings.mlflow_uri} (experiment {ic.experiment})")
    ensure_ray(settings)
    echo(f"ingest: Ray workers import neurobridge from {worker_origin()}")
    t0 = time.perf_counter()
    results = ingest_many(
        entries,
        settings,
        workers=ic.workers,
        progress=False,
        max_retries=ic.max_retries,
        resources=ic.resources or None,
    )
    problems, reports = [], []
    for entry, r in zip(entries, results, strict=True):
        if isinstance(r, Exception):
            problems.append(f"{entry.name}: {r}")
            continue
        reports.append(r)
        c = r.card.counts
        echo(
            f"ingest: {r.dataset} @ {r.version}: {c.items_ok}/{c.items} items ok, {c.rows:,} windows, "
            f"{c.tokens:,} tokens, {c.spikes:,} spikes → {r.path}"
        )
        for rel in r.retried:
            echo(f"ingest: {r.dataset}: {rel} succeeded after its worker process died (retried)")
        problems += [f"{r.dataset}: item {f.rel} failed: {f.error}" for f in r.failed]
    if ic.mixture and reports:
        write_mixture(settings, ic.mixture, reports)
        echo(f"ingest: mixture {ic.mixture!r} → " + ", ".join(f"{r.dataset}@{r.version}" for r in reports))
    totals = {k: sum(getattr(r.card.counts, k) for r in reports) for k in COUNTS}
    summary = {
        "datasets": {r.dataset: r.version for r in reports},
        "mixture": ic.mixture,
        **totals,
        "retried": sum(len(r.retried) for r in reports),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    state["ingest"] = summary
    if run_id is not None:
        mlflow_run.log_params(settings.mlflow_uri, run_id, {f"dataset.{k}": v for k, v in summary["datasets"].items()})
        mlflow_run.log_metrics(settings.mlflow_uri, run_id, {k: v for k, v in summary.items() if k in METRICS})
        mlflow_run.end_run(settings.mlflow_uri, run_id, ok=not problems)
        summary["mlflow_run_id"] = run_id
    return StageOutcome(not problems, summary, problems)


COUNTS = ("items", "items_ok", "items_failed", "rows", "tokens", "spikes")
METRICS = (*COUNTS, "retried", "seconds")

StageFn = Callable[[PipelineConfig, Settings, dict, Callable[[str], None]], StageOutcome]


def run_pretrain(cfg: PipelineConfig, settings: Settings, state: dict, echo: Callable[[str], None]) -> StageOutcome:
    """Ray Train pretraining; without datasets or a mixture of its own it trains on the ingest stage's mixture."""
    from neurobridge.train.pretrain import pretrain

    pc = cfg.pretrain or PretrainConfig()
    mix = (state.get("ingest") or {}).get("mixture")
    if mix and not pc.data.datasets and "mixture" not in pc.data.model_fields_set:
        pc = pc.model_copy(update={"data": pc.data.model_copy(update={"mixture": mix})})
    result = pretrain(pc, settings)
    echo(
        f"pretrain: MLflow run {result.run_id}, step {result.metrics.get('step')}, loss "
        f"{result.metrics.get('loss', float('nan')):.4f}, model runs:/{result.run_id}"
    )
    state["pretrain"] = {"run_id": result.run_id, "checkpoint": result.checkpoint, "model": f"runs:/{result.run_id}"}
    return StageOutcome(True, {"run_id": result.run_id, **{k: result.metrics.get(k) for k in ("step", "loss")}})


def run_align(cfg: PipelineConfig, settings: Settings, state: dict, echo: Callable[[str], None]) -> StageOutcome:
    """Alignment (Ray Train by default); ``encoder.checkpoint: pretrain`` takes the pretrain stage's model."""
    from neurobridge.align.experiment import run_alignment

    ac = cfg.align
    enc = ac.data.encoder
    if enc is not None and enc.checkpoint == FROM_PRETRAIN:
        if "pretrain" not in state:
            return StageOutcome(
                False,
                problems=[
                    "align: encoder.checkpoint is 'pretrain' but no pretrain stage ran "
                    "before it; list pretrain first or give a model path"
                ],
            )
        from neurobridge.evaluate.run import resolve_model_file

        file = resolve_model_file(state["pretrain"]["model"], settings)
        data = ac.data.model_copy(update={"encoder": enc.model_copy(update={"checkpoint": file})})
        ac = ac.model_copy(update={"data": data})
    result = run_alignment(ac, settings, echo=lambda m: echo(f"align: {m}"))
    summary = {
        name: {
            k: s[k]
            for k in ("image_top1", "image_top5", "image_chance1", "image_chance5", "n_candidates", "tokens_per_s")
        }
        for name, s in result.summary().items()
    }
    state["align"] = {"run_id": result.run_id, "model": f"runs:/{result.run_id}"}
    echo(f"align: MLflow run {result.run_id} (model/: weights + align_model.json)")
    return StageOutcome(True, {"run_id": result.run_id, "retrieval": summary})


SECTION_REQUIRED = ("ingest", "align")  # stages that cannot run on defaults alone


def _tags(cfg: PipelineConfig) -> dict[str, str]:
    tags = {"pipeline": cfg.name, "neurobridge_version": __version__}
    job = ray_job_id()
    if job:
        tags["ray_job_id"] = job
    return tags


def ray_job_id() -> str | None:
    """The submission id when running as a Ray job (the Jobs API names jobs by it)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id")
    except ValueError:
        return None


def run_evaluate(cfg: PipelineConfig, settings: Settings, state: dict, echo: Callable[[str], None]) -> StageOutcome:
    """The pretrain stage's model on its data (or the configured datasets), written into the pretrain run."""
    if "pretrain" not in state:
        return StageOutcome(False, problems=["evaluate: no pretrain stage ran before it"])
    stage = cfg.evaluate or EvaluateStage()
    pc = cfg.pretrain or PretrainConfig()
    if stage.exclude_sessions is None:
        stage = stage.model_copy(update={"exclude_sessions": pc.data.holdout_sessions})
    mixture = (state.get("ingest") or {}).get("mixture") or pc.data.mixture
    truth = f"{state['simulation']}/truth" if "simulation" in state and "://" not in state["simulation"] else None
    report = evaluate_into_run(state["pretrain"]["run_id"], stage, mixture, settings, truth)
    for line in pooled_lines(report):
        echo(f"evaluate: {line}")
    return StageOutcome(True, {"run_id": report.run_id, "pooled": report.pooled})


def run_register(cfg: PipelineConfig, settings: Settings, state: dict, echo: Callable[[str], None]) -> StageOutcome:
    """The pretrain stage's run (or the configured one) → the MLflow model registry, with lineage tags; a gated
    promotion the run's evaluation does not support is refused and said, not a failed stage."""
    rc = cfg.register_stage or RegisterStage()
    run_id = rc.run or (state.get("pretrain") or {}).get("run_id")
    if run_id is None:
        return StageOutcome(
            False, problems=["register: no run to register (no pretrain stage before it and no `register.run`)"]
        )
    got = register_gated(run_id, rc.name, rc.promote, settings, rc.alias)
    v = got.version
    echo(f"register: {got.line()} from run {run_id}")
    state["register"] = {"uri": v.uri, "aliases": v.aliases}
    return StageOutcome(True, {"uri": v.uri, "version": v.version, "aliases": v.aliases, "run_id": run_id})


STAGES: dict[str, StageFn] = {
    "simulate": run_simulate,
    "ingest": run_ingest,
    "pretrain": run_pretrain,
    "evaluate": run_evaluate,
    "align": run_align,
    "register": run_register,
}


def run_pipeline(cfg: PipelineConfig, echo: Callable[[str], None] = print) -> int:
    """Run the stages in order; stop at the first that fails. 0: all ok; 1: a stage failed (reasons printed last)."""
    overrides = cfg.settings.model_dump(exclude_none=True)
    for key, value in overrides.items():  # the whole driver process agrees, library calls of get_settings() too
        os.environ[ENV_VARS[key]] = value
    settings = get_settings()
    echo(f"pipeline {cfg.name!r}: stages {' → '.join(cfg.stages)}; store {settings.store}")
    state: dict = {"stages": {}}
    for name in cfg.stages:
        t0 = time.perf_counter()
        try:
            outcome = STAGES[name](cfg, settings, state, echo)
        except Exception as err:  # the job must end with the stage and the reason, not a bare traceback
            outcome = StageOutcome(False, problems=[f"{type(err).__name__}: {err}"])
        state["stages"][name] = {"ok": outcome.ok, "seconds": round(time.perf_counter() - t0, 2), **outcome.summary}
        if not outcome.ok:
            echo(f"pipeline {cfg.name!r}: FAILED at stage {name!r}:")
            for line in outcome.problems:
                echo(f"  {line}")
            return 1
        echo(f"pipeline {cfg.name!r}: stage {name!r} ok ({state['stages'][name]['seconds']:.1f} s)")
    echo("pipeline result: " + json.dumps(state["stages"], default=str))
    return 0


def origin() -> str:
    """Where this process imports neurobridge from (a runtime_env package on a cluster, the checkout locally)."""
    return str(Path(sys.modules[__package__].__file__).parent)
