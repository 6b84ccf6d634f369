"""Typed ablation specs: a base training config plus axes whose values are config overrides, crossed with seeds.

Every trial's config is built and validated when the spec is loaded, so an axis value naming a key the training
config does not have fails before Ray starts, naming the spec file, the axis, the value and the nearest valid key.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from neurobridge.config import describe_validation_error, set_dotted

INTERMEDIATE = frozenset({"loss", "poisson_nll", "mse"})  # what pretrain trials report every log_every steps


class SpecError(ValueError):
    """An ablation spec that cannot run; the message names the file and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AxisValue(_Strict):
    label: str = Field(description="how the value appears in tables and plots")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted config key → value")


class Distribution(_Strict):
    """One hyper-parameter of a random/ASHA search: exactly one of uniform, loguniform, choice."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, randint, choice (got {given or 'none'})")
        return self


class SearchConfig(_Strict):
    algorithm: Literal["grid", "random", "quasi_random", "asha", "optuna"] = Field(
        "grid",
        description="grid: every axis value × seed; random/asha: sample `space` num_samples times; quasi_random: "
        "num_samples points of a scrambled Halton sequence (covers the space more evenly than independent draws); "
        "optuna: num_samples trials proposed one after another by Optuna's TPE from the results so far",
    )
    sampler_seed: int = Field(0, description="quasi_random: seed of the scrambled sequence")
    metric: str = Field("loss", description="the trial metric tables, plots, ASHA and Optuna rank by")
    also: list[str] = Field(default_factory=list, description="other trial metrics summarised and plotted beside it")
    mode: Literal["min", "max"] = "min"
    space: dict[str, Distribution] = Field(default_factory=dict, description="dotted config key → distribution")
    num_samples: int = Field(1, ge=1, description="random/asha: sampled configs (each crossed with the grid)")
    grace_period: int = Field(1, ge=1, description="asha: reports before a trial can be stopped")
    reduction_factor: float = Field(3.0, gt=1)


class TrialResources(_Strict):
    """Logical resources one trial holds. Fractional CPUs on a laptop leave room for the Ray Data read tasks a
    trial starts (a trial holding a whole CPU of two starves them: STACK_NOTES); on a cluster raise them."""

    cpu: float = Field(0.5, gt=0)
    gpu: float = Field(0.0, ge=0)
    threads: int = Field(1, ge=1, description="torch threads inside a trial")


class EvaluateConfig(_Strict):
    """Pretrain trials: co-bps of the trained model on held-out units (evaluate/run.py) after training."""

    enabled: bool = True
    max_sessions: int | None = Field(2, ge=1, description="per dataset: keeps a trial's evaluation short")
    datasets: list[str] | None = Field(None, description="default: the datasets the trial trained on")


class AblationSpec(_Strict):
    name: str = Field(description="ablation name: MLflow parent run, <store>/ablations/<name>/")
    kind: Literal["pretrain", "align", "decode"]
    base: str = Field(description="base training config YAML (relative to the spec file)")
    base_overrides: dict[str, Any] = Field(default_factory=dict, description="applied to every trial first")
    axes: dict[str, list[AxisValue]] = Field(description="axis name → values; the grid is their product")
    seeds: list[int] = Field(default_factory=lambda: [0], description="a seed axis: error bars across seeds")
    search: SearchConfig = SearchConfig()
    resources: TrialResources = TrialResources()
    max_concurrent_trials: int = Field(2, ge=1)
    time_budget_s: float | None = Field(None, gt=0, description="stop starting trials after this long")
    evaluate: EvaluateConfig = EvaluateConfig()
    experiment: str = "neurobridge-ablate"
    source_file: str | None = Field(None, exclude=True)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one seed")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds has duplicates: {v}")
        return v

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: dict[str, list[AxisValue]]) -> dict[str, list[AxisValue]]:
        for axis, values in v.items():
            if not values:
                raise ValueError(f"axis {axis!r} has no values: the ablation would have zero trials")
            labels = [x.label for x in values]
            if len(set(labels)) != len(labels):
                raise ValueError(f"axis {axis!r} repeats a label: {labels}")
        return v

    def base_path(self) -> Path:
        base = Path(self.base)
        if not base.is_absolute() and self.source_file:
            base = Path(self.source_file).parent / base
        return base


def trials(spec: AblationSpec) -> list[dict]:
    """The grid: one dict per (axis values…, seed) with a stable key, labels and merged overrides."""
    names = list(spec.axes)
    out = []
    for combo in itertools.product(*(spec.axes[n] for n in names)):
        overrides: dict[str, Any] = dict(spec.base_overrides)
        for value in combo:
            overrides.update(value.overrides)
        labels = {n: v.label for n, v in zip(names, combo, strict=True)}
        for seed in spec.seeds:
            key = "__".join([*(f"{n}={v.label}" for n, v in zip(names, combo, strict=True)), f"seed={seed}"])
            out.append({"key": key, "labels": labels, "seed": seed, "overrides": overrides})
    return out


def n_trials(spec: AblationSpec) -> int:
    """Trials a run starts: the grid (axes × seeds), times the samples of a random/quasi-random/ASHA search."""
    return len(trials(spec)) * (spec.search.num_samples if spec.search.algorithm != "grid" else 1)


def build_config(spec: AblationSpec, trial: dict, sampled: dict | None = None):
    """The typed training config of one trial (base file + base overrides + axis overrides + seed + sampled)."""
    overrides = {**trial["overrides"], **(sampled or {})}
    where = f"{spec.source_file or spec.name}: trial {trial['key']}"
    if spec.kind == "pretrain":
        from neurobridge.config import ConfigError
        from neurobridge.train.config import load_config

        overrides["seed"] = trial["seed"]
        try:
            return load_config(spec.base_path(), overrides)
        except ConfigError as err:
            raise SpecError(f"{where}: {err}") from None
    if spec.kind == "decode":
        return _decode_config(spec, overrides, trial["seed"], where)
    from neurobridge.align.config import AlignConfig
    from neurobridge.config import ConfigError, load_yaml

    overrides["projector.seed"] = trial["seed"]
    _check_keys(AlignConfig, overrides, where)
    try:
        return load_yaml(AlignConfig, spec.base_path(), overrides)
    except ConfigError as err:
        raise SpecError(f"{where}: {err}") from None


def _decode_config(spec: AblationSpec, overrides: dict, seed: int, where: str):
    from neurobridge.config import ConfigError
    from neurobridge.decode.config import DecodeConfig, load_decode_config

    overrides.update({"net.seed": seed, "projector.seed": seed})
    _check_keys(DecodeConfig, overrides, where)
    try:
        return load_decode_config(spec.base_path(), overrides)
    except ConfigError as err:
        raise SpecError(f"{where}: {err}") from None


def _check_keys(model: type[BaseModel], overrides: dict, where: str) -> None:
    """Dotted keys must name fields of the typed config (align's loader creates missing parents silently)."""
    import difflib

    for dotted in overrides:
        cur: type[BaseModel] | None = model
        for i, key in enumerate(dotted.split(".")):
            if cur is None:
                break
            if key not in cur.model_fields:
                hint = difflib.get_close_matches(key, list(cur.model_fields), n=1)
                at = ".".join(dotted.split(".")[: i + 1])
                raise SpecError(f"{where}: unknown key {at!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
            cur = _model_of(cur.model_fields[key].annotation)


def _model_of(annotation) -> type[BaseModel] | None:
    import typing

    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def load_spec(path: str | Path, overrides: dict | None = None) -> AblationSpec:
    """Load and fully validate a spec: the spec's own fields, then every trial's training config."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SpecError(f"{path}: no such ablation spec") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of spec fields")
    for key, value in (overrides or {}).items():
        if key.startswith("base_overrides."):  # the rest is one dotted training-config key
            data.setdefault("base_overrides", {})[key.split(".", 1)[1]] = value
            continue
        set_dotted(data, key, value)
    try:
        spec = AblationSpec.model_validate({**data, "source_file": str(path.absolute())})
    except ValidationError as err:
        raise SpecError(describe_validation_error(err, AblationSpec, str(path))) from None
    if not spec.base_path().exists():
        raise SpecError(f"{path}: base config {spec.base_path()} does not exist")
    grid = trials(spec)
    if not grid:
        raise SpecError(f"{path}: the spec has zero trials")
    for trial in grid:
        build_config(spec, trial)
    _check_search(spec, path, grid)
    return spec


def _check_search(spec: AblationSpec, path: Path, grid: list[dict]) -> None:
    """The search algorithm fits the spec: ASHA needs intermediate results, Optuna one grid cell, a space a
    sampler; one sampled config is built, so a space naming no config key fails here."""
    algo = spec.search.algorithm
    if algo == "asha" and (spec.kind != "pretrain" or spec.search.metric not in INTERMEDIATE):
        raise SpecError(
            f"{path}: asha stops trials on intermediate results; pretrain trials report "
            f"{sorted(INTERMEDIATE)} while training (got kind {spec.kind}, metric {spec.search.metric!r})"
        )
    if algo == "optuna" and (len(grid) != 1 or not spec.search.space):
        raise SpecError(
            f"{path}: optuna searches `space` from one base config: give each axis one value and one seed "
            f"(the grid has {len(grid)} cells) and a non-empty search.space"
        )
    sampled = {k: _example(d) for k, d in spec.search.space.items()}
    if sampled:
        if algo == "grid":
            raise SpecError(f"{path}: search.space needs a sampler (random, quasi_random, asha or optuna), not grid")
        build_config(spec, grid[0], sampled)


def quasi_random_points(space: dict[str, Distribution], n: int, seed: int = 0) -> list[dict]:
    """``n`` configs from a scrambled Halton sequence mapped through each distribution (deterministic by seed)."""
    import math

    from scipy.stats import qmc

    keys = list(space)
    if not keys:
        return [{} for _ in range(n)]
    points = qmc.Halton(d=len(keys), scramble=True, seed=seed).random(n)
    out = []
    for row in points:
        cfg = {}
        for key, u in zip(keys, row, strict=True):
            d = space[key]
            if d.uniform is not None:
                cfg[key] = d.uniform[0] + float(u) * (d.uniform[1] - d.uniform[0])
            elif d.loguniform is not None:
                lo, hi = math.log(d.loguniform[0]), math.log(d.loguniform[1])
                cfg[key] = math.exp(lo + float(u) * (hi - lo))
            elif d.randint is not None:  # [lo, hi) as tune.randint
                cfg[key] = min(d.randint[0] + int(u * (d.randint[1] - d.randint[0])), d.randint[1] - 1)
            else:
                cfg[key] = d.choice[min(int(u * len(d.choice)), len(d.choice) - 1)]  # type: ignore[index]
        out.append(cfg)
    return out


SAMPLED = "sampled"  # quasi_random: the Tune config key holding one point's {dotted key: value}


def sampled_values(config: dict, spec: AblationSpec) -> dict:
    """The searched values of one Tune trial config (random/asha: top-level keys; quasi_random: one dict)."""
    if SAMPLED in config:
        return dict(config[SAMPLED])
    return {k: config[k] for k in spec.search.space if k in config}


def trial_key(trial: dict, sampled: dict) -> str:
    """A grid cell's key, plus the sampled values: two samples of one cell are two trials (resume tells them
    apart)."""
    if not sampled:
        return trial["key"]
    return trial["key"] + "".join(
        f"__{k}={v:.6g}" if isinstance(v, float) else f"__{k}={v}" for k, v in sorted(sampled.items())
    )


def _example(d: Distribution):
    if d.choice is not None:
        return d.choice[0]
    lo = (d.uniform or d.loguniform or d.randint)[0]  # type: ignore[index]
    return lo
