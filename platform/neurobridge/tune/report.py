"""`neurobridge report <ablation>`: the results table, summary and plots as one static HTML page (images inlined,
no server), written beside the results and logged to the ablation's MLflow parent run."""

from __future__ import annotations

import base64
import html
import json

import pandas as pd

from neurobridge.config import Settings, get_settings
from neurobridge.storage import StoreError, filesystem, join


def results_dir(settings: Settings, name: str) -> str:
    return join(settings.store, "ablations", name, "nb_results")


def render_html(title: str, meta: dict, summary_md: str, df: pd.DataFrame, plots: dict[str, bytes]) -> str:
    """A self-contained page: metadata, the per-setting summary, every plot, the full per-trial table."""
    imgs = "\n".join(
        f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
        f"<figcaption>{html.escape(n)}</figcaption></figure>"
        for n, b in sorted(plots.items())
    )
    meta_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in meta.items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}pre{{background:#f6f6f6;padding:1em}}
img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table>{meta_rows}</table>
<h2>Summary</h2><pre>{html.escape(summary_md)}</pre>
<h2>Plots</h2>{imgs}
<h2>All trials</h2>{df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")}
</body></html>
"""


def build_report(name: str, settings: Settings | None = None) -> tuple[str, str]:
    """Render ``report.html`` from an ablation's stored results; returns (its URI, the parent run id)."""
    settings = settings or get_settings()
    base = results_dir(settings, name)
    fs, path = filesystem(base, settings)
    if not fs.exists(f"{path}/results.parquet"):
        raise StoreError(f"ablation {name!r}: no results at {base} (run `neurobridge ablate <spec>` first)")
    with fs.open(f"{path}/results.parquet", "rb") as f:
        df = pd.read_parquet(f)
    with fs.open(f"{path}/summary.md", "rb") as f:
        summary = f.read().decode()
    with fs.open(f"{path}/meta.json", "rb") as f:
        meta = json.loads(f.read())
    plots = {}
    for p in sorted(fs.glob(f"{path}/plots/*.png")):
        with fs.open(p, "rb") as f:
            plots[p.rsplit("/", 1)[-1]] = f.read()
    page = render_html(f"Ablation {name}", meta, summary, df, plots)
    with fs.open(f"{path}/report.html", "wb") as f:
        f.write(page.encode())
    parent = meta.get("parent_run_id")
    if parent:
        import tempfile
        from pathlib import Path

        from neurobridge.tracking import mlflow_run

        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "report.html"
            local.write_text(page)
            mlflow_run.log_artifact(settings.mlflow_uri, parent, str(local))
    return f"{base}/report.html", parent
