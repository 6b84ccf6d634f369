"""Results as tables a person reads: evaluation (co-bps beside its baselines) and alignment (retrieval beside
chance), shared by the CLI and the demo."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console()


def print_alignment(result, title: str | None = None) -> None:
    """Test retrieval per region set with chance beside each number, and the fit's tokens/s."""
    n = next(iter(result.summary().values()), {}).get("n_candidates", 0)
    t = Table(
        "regions",
        "top-1",
        "chance",
        "top-5",
        "chance",
        "brain top-1",
        "recon 2-way",
        "tokens/s",
        title=title or f"retrieval among {n:.0f} test images",
    )
    for name, s in result.summary().items():
        t.add_row(
            name,
            f"{s['image_top1']:.3f}",
            f"{s['image_chance1']:.3f}",
            f"{s['image_top5']:.3f}",
            f"{s['image_chance5']:.3f}",
            f"{s['brain_top1']:.3f}",
            f"{s['recon_two_way']:.2f}",
            f"{s['tokens_per_s']:,.0f}",
        )
    console.print(t)
    if result.run_id:
        console.print(f"MLflow run {result.run_id}: plots/*_retrieval.png, model/ (weights + align_model.json)")


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def _fp(r: dict) -> str:
    if "fp_bps" in r:
        return _fmt(r["fp_bps"])
    return f"{_fmt(r.get('fp_bps_not_trained'))} (not trained)" if "fp_bps_not_trained" in r else ""


def _smoothing_choice(r: dict) -> str:
    if "smoothing_sigma_ms" not in r:
        return ""
    return f"{r['smoothing_sigma_ms']:g} ms, L2 {r['smoothing_l2']:g}"


def print_report(report) -> None:
    cols = [
        ("co_bps", "co-bps"),
        ("co_bps_smoothing", "smooth"),
        ("co_bps_oracle", "oracle"),
        ("behavior_r2", "R²"),
        ("behavior_r2_smoothing", "R² sm"),
    ]
    t = Table(title="per session: co-bps on held-out units (mean rate = 0), behaviour R² (model vs smoothed spikes)")
    t.add_column("dataset/session", overflow="fold")
    t.add_column("win")
    for _, label in cols:
        t.add_column(label)
    t.add_column("smoothing kernel, penalty")
    t.add_column("fp-bps")
    for r in report.table():
        cells = [_fmt(r.get(k)) for k, _ in cols]
        t.add_row(f"{r['dataset']}/{r['session']}", str(r["windows"]), *cells, _smoothing_choice(r), _fp(r))
    if t.row_count:  # no scored session (NLB test files: the warnings below say why): no empty frames
        console.print(t)
    p = Table(title="pooled per dataset (co-bps)")
    keys = ["co_bps", "co_bps_smoothing", "co_bps_oracle", "model_over_oracle", "smoothing_over_oracle"]
    for c in ["dataset", "model", "smooth", "oracle", "model/oracle", "smooth/oracle", "sessions"]:
        p.add_column(c)
    for ds, d in report.pooled.items():
        cells = [_fmt(d.get(k)) for k in keys]
        if any(cells):
            p.add_row(ds, *cells, str(d.get("sessions")))
    if p.row_count:
        console.print(p)
    for w in report.warnings:
        console.print(f"[bold yellow]warning:[/] {w}")
