"""The results of an ablation: one row per trial, a per-setting summary across seeds, and an error-bar plot."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from neurobridge.tune.spec import AblationSpec, sampled_values, trial_key
from neurobridge.tune.trainables import COMPLETE

META = ("trial", "seed", "status", "error", "child_run_id")


def table(result_grid, spec: AblationSpec) -> pd.DataFrame:
    """One row per trial of a Tune ``ResultGrid``: trial key, axis labels, seed, status, numeric final metrics."""
    rows = []
    for r in result_grid:
        trial = r.config["trial"]
        sampled = sampled_values(r.config, spec)
        row = {"trial": trial_key(trial, sampled), **trial["labels"], "seed": trial["seed"], **sampled}
        metrics = r.metrics or {}
        # a trial that neither errored nor completed was stopped by ASHA (or by the time budget / a killed driver)
        unfinished = "stopped" if spec.search.algorithm == "asha" else "incomplete"
        row["status"] = "error" if r.error is not None else ("ok" if metrics.get(COMPLETE) else unfinished)
        row["error"] = "" if r.error is None else f"{type(r.error).__name__}: {r.error}"[:500]
        row["child_run_id"] = metrics.get("child_run_id", "")
        for k, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in row and k not in _TUNE_KEYS:
                row[k] = float(v)
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.sort_values("trial", kind="stable").reset_index(drop=True) if len(df) else df


_TUNE_KEYS = {
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "training_iteration",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    COMPLETE,
}


def summarize(df: pd.DataFrame, spec: AblationSpec, metric: str | None = None) -> pd.DataFrame:
    """Mean, standard deviation, standard error and count across seeds for each setting of the axes (and of the
    searched values: quasi_random crosses each point with every seed; random/asha draw anew per trial)."""
    metric = metric or spec.search.metric
    ok = df[df["status"] == "ok"] if "status" in df else df
    axes = list(spec.axes) + searched(ok, spec)
    if metric not in ok:
        raise KeyError(f"metric {metric!r} is not in the results (have: {sorted(c for c in df if c not in META)})")
    g = ok.groupby(axes, sort=False)[metric]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["sem"] = out["std"] / np.sqrt(out["count"])
    return out.rename(columns={"count": "seeds"})


def summary_markdown(df: pd.DataFrame, spec: AblationSpec, wall_s: float | None = None) -> str:
    metric = spec.search.metric
    summ = summarize(df, spec)
    better = "lower" if spec.search.mode == "min" else "higher"
    lines = [
        f"# Ablation `{spec.name}` ({spec.kind})",
        "",
        f"{len(df)} trials ({int((df['status'] == 'ok').sum())} ok) over axes {', '.join(spec.axes)} × "
        f"seeds {spec.seeds}; metric `{metric}` ({better} is better), mean ± s.e.m. across seeds.",
    ]
    if wall_s is not None:
        lines.append(f"Wall time of the last run: {wall_s:.0f} s.")
    cols = [*spec.axes, *searched(summ, spec)]
    lines += ["", "| " + " | ".join([*cols, metric, "± s.e.m.", "seeds"]) + " |", "|" + "---|" * (len(cols) + 3)]
    for _, r in summ.sort_values("mean", ascending=spec.search.mode == "min", kind="stable").iterrows():
        sem = "" if not math.isfinite(r["sem"]) else f"{r['sem']:.4f}"
        lines.append(
            "| " + " | ".join([*(_cell(r[a]) for a in cols), f"{r['mean']:.4f}", sem, str(int(r["seeds"]))]) + " |"
        )
    failed = df[df["status"] != "ok"]
    if len(failed):
        lines += ["", "Trials without a result:", *(f"- {r.trial}: {r.status} {r.error}" for r in failed.itertuples())]
    return "\n".join(lines) + "\n"


def searched(table: pd.DataFrame, spec: AblationSpec) -> list[str]:
    """The search-space keys present in a results or summary table (none for a grid)."""
    return [k for k in spec.search.space if k in table]


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def errorbar_plot(df: pd.DataFrame, spec: AblationSpec, metric: str | None = None):
    """Metric per value of the first axis (x), one series per combination of the other axes; bars: s.e.m.
    A search instead plots the metric against each searched value (one panel per key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or spec.search.metric
    summ = summarize(df, spec, metric)
    if searched(summ, spec):
        return _search_plot(summ, spec, metric)
    axes = list(spec.axes)
    first, rest = axes[0], axes[1:]
    order = [v.label for v in spec.axes[first]]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(order) + 2.5), 3.8))
    groups = summ.groupby(rest, sort=False) if rest else [((), summ)]
    n = max(len(groups), 1)
    width = 0.8 / n
    for i, (key, part) in enumerate(groups):
        part = part.set_index(first).reindex(order)
        x = np.arange(len(order)) + (i - (n - 1) / 2) * width
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{a}={k}" for a, k in zip(rest, key, strict=True)) or metric
        ax.errorbar(x, part["mean"], yerr=part["sem"].fillna(0), fmt="o", capsize=4, label=label)
        for _, r in df[df["status"] == "ok"].iterrows():  # the seeds themselves, faint
            if all(r[a] == k for a, k in zip(rest, key, strict=True)) and r[first] in order and metric in r:
                ax.plot(order.index(r[first]) + (i - (n - 1) / 2) * width, r[metric], ".", color="0.6", ms=4)
    ax.set_xticks(np.arange(len(order)), order, rotation=20, ha="right")
    ax.set(xlabel=first, ylabel=f"{metric}\n(mean ± s.e.m., {len(spec.seeds)} seeds; dots: seeds)", title=spec.name)
    if rest:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _search_plot(summ: pd.DataFrame, spec: AblationSpec, metric: str):
    import matplotlib.pyplot as plt

    keys = searched(summ, spec)
    fig, axs = plt.subplots(1, len(keys), figsize=(3.6 * len(keys) + 1, 3.6), squeeze=False)
    best = summ["mean"].idxmax() if spec.search.mode == "max" else summ["mean"].idxmin()
    for ax, key in zip(axs[0], keys, strict=True):
        numeric = pd.api.types.is_numeric_dtype(summ[key])
        x = summ[key] if numeric else summ[key].astype(str)
        ax.errorbar(x, summ["mean"], yerr=summ["sem"].fillna(0), fmt="o", capsize=3, color="C0")
        ax.plot(x[best], summ["mean"][best], "*", ms=12, color="C3", label="best")
        if spec.search.space[key].loguniform is not None:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short log range
        ax.set(xlabel=key, ylabel=metric)
    axs[0][0].legend(fontsize=8)
    fig.suptitle(f"{spec.name}: {len(summ)} sampled configs ({spec.search.algorithm}), mean ± s.e.m. across seeds")
    fig.tight_layout()
    return fig
