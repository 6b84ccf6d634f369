"""Summaries and figures of a dataset version, read straight from the store (streamed part by part)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from .config import Settings
from .ingest.manifest import MANIFEST, DatasetRef
from .storage import filesystem, join


@dataclass
class SessionSummary:
    session: str
    subject: str
    units: int
    windows: int
    tokens: int
    spikes: int
    rates_hz: np.ndarray = field(repr=False)
    regions: dict[str, int] = field(default_factory=dict)


def session_summaries(ref: DatasetRef, settings: Settings) -> list[SessionSummary]:
    out = []
    for part in ref.card["files"]:
        fs, path = filesystem(join(ref.path, part), settings)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            sums, rows, first = None, 0, None
            for batch in pf.iter_batches(columns=["session", "subject", "n_units", "n_bins", "bin_ms", "counts",
                                                  "unit_regions"], batch_size=256):  # fmt: skip
                if first is None:
                    first = batch.slice(0, 1).to_pylist()[0]
                n_u, n_b = first["n_units"], first["n_bins"]
                values = batch.column("counts").flatten().to_numpy(zero_copy_only=False)
                grid = values.reshape(batch.num_rows, n_u, n_b)
                s = grid.sum(axis=(0, 2), dtype=np.int64)
                sums = s if sums is None else sums + s
                rows += batch.num_rows
        if first is None:
            continue
        duration = rows * first["n_bins"] * first["bin_ms"] / 1000.0
        regions, counts = np.unique(first["unit_regions"], return_counts=True)
        out.append(
            SessionSummary(
                session=first["session"], subject=first["subject"], units=first["n_units"], windows=rows,
                tokens=rows * first["n_units"] * first["n_bins"], spikes=int(sums.sum()),
                rates_hz=sums / duration if duration > 0 else np.zeros_like(sums, dtype=float),
                regions={str(r): int(c) for r, c in zip(regions, counts, strict=True)},
            )
        )  # fmt: skip
    return out


def failed_items(ref: DatasetRef, settings: Settings) -> list[dict]:
    fs, path = filesystem(join(ref.path, MANIFEST), settings)
    table = pq.read_table(fs.open(path, "rb"))
    return [r for r in table.to_pylist() if r["status"] != "ok"]


def rate_percentiles(sessions: list[SessionSummary]) -> dict[str, float]:
    rates = np.concatenate([s.rates_hz for s in sessions]) if sessions else np.zeros(0)
    if len(rates) == 0:
        return {}
    return {f"p{q}": float(np.percentile(rates, q)) for q in (5, 25, 50, 75, 95)} | {"mean": float(rates.mean())}


def plot(ref: DatasetRef, settings: Settings, out_png: str, sessions: list[SessionSummary] | None = None) -> str:
    """A raster-style image of one window (units by region × bins) beside the firing-rate distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sessions = sessions if sessions is not None else session_summaries(ref, settings)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    if ref.card["files"]:
        fs, path = filesystem(join(ref.path, ref.card["files"][0]), settings)
        with fs.open(path, "rb") as f:
            row = pq.ParquetFile(f).read_row_group(0).slice(0, 1).to_pylist()[0]
        grid = np.asarray(row["counts"], dtype=float).reshape(row["n_units"], row["n_bins"])
        rate = grid / (row["bin_ms"] / 1000.0)
        extent = (0, row["n_bins"] * row["bin_ms"], row["n_units"], 0)
        im = axes[0].imshow(rate, aspect="auto", interpolation="nearest", cmap="viridis", extent=extent)
        fig.colorbar(im, ax=axes[0], label="rate (Hz)")
        regions = row["unit_regions"]
        bounds = [i for i in range(1, len(regions)) if regions[i] != regions[i - 1]]
        for b in bounds:
            axes[0].axhline(b, color="white", lw=0.8)
        for start, name in zip([0, *bounds], [regions[i] for i in [0, *bounds]], strict=True):
            axes[0].text(1, start + 1, name, color="white", va="top", fontsize=8)
        axes[0].set(xlabel="time in window (ms)", ylabel="unit (ordered by region)",
                    title=f"{row['sample_id']}")  # fmt: skip
    rates = np.concatenate([s.rates_hz for s in sessions]) if sessions else np.zeros(0)
    axes[1].hist(rates, bins=40, color="tab:blue")
    axes[1].set(xlabel="mean firing rate (Hz)", ylabel="units", title=f"{len(rates)} units, {len(sessions)} sessions")
    fig.suptitle(f"{ref.dataset} @ {ref.version}")
    fig.tight_layout()
    fs, path = filesystem(out_png)
    with fs.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out_png
