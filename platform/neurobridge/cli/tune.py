"""`neurobridge ablate | report`: ablations on Ray Tune and their static HTML report (registered by cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from neurobridge.cli.train import _fail, parse_overrides

console = Console()


def ablate(
    spec: Path = typer.Argument(..., help="ablation spec YAML (e.g. jobs/ablations/masking_modes.yaml)"),
    overrides: list[str] = typer.Option(
        None, "--set", help="override a spec key, e.g. --set seeds=[0,1] or --set base_overrides.optim.max_steps=50"
    ),
    check: bool = typer.Option(False, "--check", help="validate the spec and every trial's config, run nothing"),
):
    """Run an ablation (grid / random / quasi-random / ASHA) on Ray Tune; rerun the same command to resume."""
    from neurobridge.storage import StoreError
    from neurobridge.tracking.mlflow_run import TrackingError
    from neurobridge.tune.runner import run_ablation
    from neurobridge.tune.spec import SpecError, load_spec, n_trials

    try:
        cfg = load_spec(spec, parse_overrides(overrides))
    except SpecError as err:
        _fail(str(err))
    if check:
        axes = " × ".join(f"{a}[{len(v)}]" for a, v in cfg.axes.items())
        s = cfg.search
        sampled = f" × {s.num_samples} {s.algorithm} samples of {', '.join(s.space)}" if s.algorithm != "grid" else ""
        console.print(
            f"[green]ok[/] {spec}: {cfg.kind}, {n_trials(cfg)} trials ({axes} × seeds {cfg.seeds}{sampled}), "
            f"metric {s.metric}"
        )
        return
    try:
        result = run_ablation(cfg, echo=console.print)
    except (SpecError, StoreError, TrackingError) as err:
        _fail(str(err))
    print_table(result.table, cfg)
    console.print(
        f"ablation {cfg.name}: {len(result.table)} trials in {result.wall_s:.0f} s wall"
        + (" (resumed)" if result.resumed else "")
    )
    console.print(f"MLflow parent run: {result.parent_run_id}")
    console.print(f"report: {result.report}")
    if not (result.table["status"] == "ok").all():
        raise typer.Exit(1)


def print_table(df, spec) -> None:
    t = Table(title=f"{spec.name}: {spec.search.metric}")
    cols = ["trial", "status", spec.search.metric]
    for c in cols:
        t.add_column(c)
    for _, r in df.iterrows():
        v = r.get(spec.search.metric)
        t.add_row(str(r["trial"]), str(r["status"]), "" if v is None or v != v else f"{v:.4f}")
    console.print(t)


def report(name: str = typer.Argument(..., help="ablation name (the spec's `name`)")):
    """Render an ablation's results table and plots to a static HTML page and log it to the MLflow parent run."""
    from neurobridge.storage import StoreError
    from neurobridge.tune.report import build_report

    try:
        uri, parent = build_report(name)
    except StoreError as err:
        _fail(str(err))
    console.print(f"report: {uri}" + (f"  (logged to MLflow run {parent})" if parent else ""))
