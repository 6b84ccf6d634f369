"""From a finished training run to the registry, the way the demo and the pipeline do it: evaluate the run into
itself, register it, and move ``champion`` only when its evaluation passes the model's gate.

A refused promotion is an answer, not an error: the version stays at ``candidate`` with the reason on it
(``evaluation``, ``evaluation.reason``), and the caller prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from neurobridge.config import Settings
from neurobridge.tracking.registry import GateError, VersionInfo


class EvaluateStage(BaseModel):
    """The pipeline's evaluate stage: co-bps of the pretrain stage's model beside its baselines, written into the
    pretrain run (so its register stage's gate can judge it)."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(
        default_factory=list, description="dataset refs to evaluate on; default: the pretrain stage's data"
    )
    exclude_sessions: list[str] | None = Field(
        None, description="sessions left out; default: the pretrain config's holdout_sessions"
    )
    max_sessions: int | None = Field(None, ge=1, description="sessions per dataset")
    allow_partial: bool = Field(False, description="evaluate on dataset versions with failed items")


@dataclass
class Registered:
    """A registered version and, when a gated promotion was refused, why."""

    version: VersionInfo
    refused: str | None = None

    def line(self) -> str:
        aliases = ", ".join("@" + a for a in self.version.aliases) or "no alias"
        gate = self.version.tags.get("evaluation", "")
        out = f"{self.version.uri} ({aliases}; evaluation: {gate or 'n/a'})"
        return out + (f"; {self.refused}" if self.refused else "")


def register_gated(
    run_id: str, name: str, promote_to: str | None, settings: Settings, alias: str | None = "candidate"
) -> Registered:
    """Register the run as a new version of ``name`` (at ``alias``), then move ``promote_to`` to it through the
    gate; a refusal leaves the version where it is and says why."""
    from neurobridge.inference.registrable import Promotion, promote, register

    v = register(run_id, name, alias or None, settings)
    if not promote_to:
        return Registered(v)
    try:
        return Registered(promote(Promotion(name, promote_to, v.version), settings))
    except GateError as err:
        return Registered(v, str(err))


def evaluate_into_run(
    run_id: str, stage: EvaluateStage, mixture: str | None, settings: Settings, truth: str | None = None
):
    """``neurobridge evaluate runs:/<run id>`` on the stage's datasets (or the mixture), tracked into the run."""
    from neurobridge.evaluate.report import EvalConfig
    from neurobridge.evaluate.run import EvalData, evaluate

    cfg = EvalConfig(max_sessions=stage.max_sessions, allow_partial=stage.allow_partial)
    data = EvalData(
        stage.datasets or None,
        None if stage.datasets else mixture,
        exclude_sessions=stage.exclude_sessions,
        truth_dir=truth,
    )
    return evaluate(f"runs:/{run_id}", data, cfg, settings)


def pooled_lines(report) -> list[str]:
    """One line per dataset: co-bps beside the smoothing baseline (what the gate compares)."""
    out = []
    for ds, d in report.pooled.items():
        model, base = d.get("co_bps", float("nan")), d.get("co_bps_smoothing", float("nan"))
        out.append(f"{ds}: co-bps {model:.4f} vs smoothing {base:.4f}")
    return out
