"""Summaries and figures of a dataset version, read straight from the store (streamed part by part)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from neurobridge.config import Settings
from neurobridge.storage import filesystem, join
from neurobridge.store.card import MANIFEST
from neurobridge.store.versions import DatasetRef


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
    kind: str = "counts"  # "mua": rates_hz then holds the mean MUA signal per unit, not a rate


def session_summaries(ref: DatasetRef, settings: Settings) -> list[SessionSummary]:
    """Per session: units, windows, tokens, spikes and per-unit mean rate (Hz); for MUA the per-unit mean signal.

    Streams each part in batches; a part may hold several sessions (Neural Pile shards)."""
    acc: dict[str, dict] = {}
    cols = ["session", "subject", "n_units", "n_bins", "bin_ms", "counts", "mua", "unit_regions"]
    for part in ref.card.files:
        fs, path = filesystem(join(ref.path, part), settings)
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=cols, batch_size=256):
                _accumulate(acc, batch)
    out = []
    for session, a in acc.items():
        regions, counts = np.unique(a["regions"], return_counts=True)
        mean = a["sums"] / a["seconds"] if a["kind"] == "counts" else a["sums"] / max(a["windows"] * a["n_bins"], 1)
        out.append(
            SessionSummary(
                session=session,
                subject=a["subject"],
                units=a["units"],
                windows=a["windows"],
                tokens=a["tokens"],
                spikes=int(a["sums"].sum()) if a["kind"] == "counts" else 0,
                rates_hz=mean,
                regions={str(r): int(c) for r, c in zip(regions, counts, strict=True)},
                kind=a["kind"],
            )
        )
    return out


def _accumulate(acc: dict, batch) -> None:
    sessions = batch.column("session").to_pylist()
    n_units = batch.column("n_units").to_numpy()
    n_bins = batch.column("n_bins").to_numpy()
    is_mua = batch.column("counts").null_count == batch.num_rows and batch.column("mua").null_count < batch.num_rows
    column = batch.column("mua" if is_mua else "counts")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy() - column.offsets[0].as_py()
    regions = batch.column("unit_regions")
    for i, session in enumerate(sessions):
        u, b = int(n_units[i]), int(n_bins[i])
        grid = flat[offsets[i] : offsets[i + 1]].reshape(u, b)
        per_unit = grid.sum(axis=1, dtype=np.float64)
        a = acc.get(session)
        if a is None or len(a["sums"]) != u:  # a new session (or a segment with another unit count)
            if a is not None:
                session = f"{session}#{u}u"
                a = acc.get(session)
            if a is None:
                a = acc[session] = {
                    "subject": batch.column("subject")[i].as_py(),
                    "units": u,
                    "windows": 0,
                    "tokens": 0,
                    "sums": np.zeros(u),
                    "seconds": 0.0,
                    "n_bins": b,
                    "regions": regions[i].as_py(),
                    "kind": "mua" if is_mua else "counts",
                }
        a["sums"] += per_unit
        a["windows"] += 1
        a["tokens"] += u * b
        a["seconds"] += b * float(batch.column("bin_ms")[i].as_py()) / 1000.0


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
    if ref.card.files:
        fs, path = filesystem(join(ref.path, ref.card.files[0]), settings)
        with fs.open(path, "rb") as f:
            row = pq.ParquetFile(f).read_row_group(0).slice(0, 1).to_pylist()[0]
        is_mua = row["counts"] is None
        grid = np.asarray(row["mua"] if is_mua else row["counts"], dtype=float).reshape(row["n_units"], row["n_bins"])
        rate = grid if is_mua else grid / (row["bin_ms"] / 1000.0)
        extent = (0, row["n_bins"] * row["bin_ms"], row["n_units"], 0)
        im = axes[0].imshow(rate, aspect="auto", interpolation="nearest", cmap="viridis", extent=extent)
        fig.colorbar(im, ax=axes[0], label="MUA (a.u.)" if is_mua else "rate (Hz)")
        regions = row["unit_regions"]
        bounds = [i for i in range(1, len(regions)) if regions[i] != regions[i - 1]]
        for b in bounds:
            axes[0].axhline(b, color="white", lw=0.8)
        for start, name in zip([0, *bounds], [regions[i] for i in [0, *bounds]], strict=True):
            axes[0].text(1, start + 1, name, color="white", va="top", fontsize=8)
        axes[0].set(xlabel="time in window (ms)", ylabel="unit (ordered by region)", title=f"{row['sample_id']}")
    rates = np.concatenate([s.rates_hz for s in sessions]) if sessions else np.zeros(0)
    axes[1].hist(rates, bins=40, color="tab:blue")
    mua = bool(sessions) and sessions[0].kind == "mua"
    axes[1].set(
        xlabel="mean MUA (a.u.)" if mua else "mean firing rate (Hz)",
        ylabel="units",
        title=f"{len(rates)} units, {len(sessions)} sessions",
    )
    fig.suptitle(f"{ref.dataset} @ {ref.version}")
    fig.tight_layout()
    fs, path = filesystem(out_png)
    with fs.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out_png
