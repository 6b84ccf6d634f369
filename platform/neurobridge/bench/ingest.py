"""Ingest benchmarks, reported as ratios against references measured in the same run.

- binning: the project's kernel vs the per-unit ``np.histogram(times[clusters == u], bins)`` loop that public
  dataset builders use, on the same in-memory spikes and the same bins (results are checked equal);
- end-to-end: one item (NWB decode → validate → bin → window → tokenize → Parquet write) in a fresh process
  (one core, Ray start-up excluded), with its peak RSS; then the same for a session ``growth``× longer, whose
  peak RSS must stay nearly flat (streaming, not load-all).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from neurobridge.bench.worker import timed
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.binning import WindowGrid, bin_spikes, reference_histogram

BIN_MS = 20.0
CHUNK_S = 1.0


def _line(name: str, value: float, unit: str) -> str:
    return f"{name}: {value:,.1f} {unit}" if value >= 100 else f"{name}: {value:.3g} {unit}"


def _session(path: Path, n_units: int, minutes: float, seed: int) -> dict:
    from neurobridge.sim import simulate_session_file

    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    meta = simulate_session_file(str(path), "nwb", n_units=n_units, minutes=minutes, seed=seed, write_truth=False)
    meta_path.write_text(json.dumps(meta, default=str))
    return meta


def _load_spikes(path: Path) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    from neurobridge.config import get_settings
    from neurobridge.sources.nwb import NWBSource

    entry = CatalogEntry.of(name="bench", kind="nwb", uri=str(path.parent))
    with NWBSource(str(path), entry, get_settings()) as src:
        times = src.read_times(0, src.n_spikes)
        units = np.repeat(src.segment_units, np.diff(src.segments))
        return times, units, len(src.unit_ids), src.segments


def _ingest_one(path: str, store: str) -> dict:
    from neurobridge.config import get_settings
    from neurobridge.ingest.item import process_item
    from neurobridge.sources import discover

    settings = get_settings(store=store)
    entry = CatalogEntry.of(
        name="bench",
        kind="nwb",
        uri=path,
        ingest={"bin_ms": BIN_MS, "window": {"mode": "chunks", "chunk_s": CHUNK_S}},
    )
    item = discover(entry, settings)[0]
    rec = process_item(entry, item, f"{store}/tokens/bench/run-{time.time_ns()}", settings)
    if not rec.ok:
        raise RuntimeError(rec.error)
    return rec.model_dump(mode="json")


def bench_ingest(
    n_units: int = 500,
    minutes: float = 10.0,
    growth: int = 8,
    workdir: str | None = None,
    repeats: int = 3,
    echo=print,
) -> dict:
    """Run the ingest benchmark; returns the figures and echoes ``NAME: VALUE UNIT`` lines."""
    work = Path(workdir or Path(tempfile.gettempdir()) / "neurobridge-bench")
    work.mkdir(parents=True, exist_ok=True)
    small = work / f"bench_u{n_units}_m{minutes:g}.nwb"
    big = work / f"bench_u{n_units}_m{minutes * growth:g}.nwb"
    echo(f"simulating {n_units} units × {minutes:g} min (and × {growth}) in {work} …")
    _session(small, n_units, minutes, seed=1)
    times, units, n_u, pieces = _load_spikes(small)  # as NWB stores them: one sorted run per unit
    n_spikes = len(times)
    bin_s = BIN_MS / 1000.0
    t_end = np.ceil(times.max() / CHUNK_S) * CHUNK_S if n_spikes else CHUNK_S
    grid = WindowGrid(np.arange(0.0, t_end, CHUNK_S), int(round(CHUNK_S / bin_s)), bin_s)
    tokens = len(grid.starts) * n_u * grid.n_bins

    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours, _ = bin_spikes(times, units, n_u, grid, pieces, np.arange(n_u))
        best = min(best, time.perf_counter() - t0)
    edges = np.arange(len(grid.starts) * grid.n_bins + 1) * bin_s
    t_ref = np.inf
    for _ in range(repeats):  # same number of tries as ours: both best-of-N, warm
        t0 = time.perf_counter()
        ref = reference_histogram(times, units, np.arange(n_u), edges)
        t_ref = min(t_ref, time.perf_counter() - t0)
    same = np.array_equal(ref.reshape(n_u, len(grid.starts), grid.n_bins).transpose(1, 0, 2), ours)
    figures = {
        "spikes": n_spikes,
        "units": n_u,
        "tokens": tokens,
        "binning_spikes_per_s": n_spikes / best,
        "binning_tokens_per_s": tokens / best,
        "reference_spikes_per_s": n_spikes / t_ref,
        "reference_tokens_per_s": tokens / t_ref,
        "binning_ratio": t_ref / best,
        "binning_matches_reference": bool(same),
    }
    del times, units, ours, ref
    echo(f"session: {n_spikes:,} spikes, {n_u} units, {tokens:,} tokens ({BIN_MS:g} ms bins)")
    echo(_line("binning_spikes_per_s", figures["binning_spikes_per_s"], "spikes/s"))
    echo(_line("binning_tokens_per_s", figures["binning_tokens_per_s"], "tokens/s"))
    echo(_line("reference_spikes_per_s", figures["reference_spikes_per_s"], "spikes/s"))
    echo(_line("reference_tokens_per_s", figures["reference_tokens_per_s"], "tokens/s"))
    echo(f"binning_vs_reference: {figures['binning_ratio']:.1f}x (identical counts: {same})")

    store = work / "store"
    run_small = timed("neurobridge.bench.ingest", "_ingest_one", str(small), str(store))
    figures["ingest_spikes_per_s"] = run_small["out"]["spikes"] / run_small["seconds"]
    figures["ingest_tokens_per_s"] = run_small["out"]["tokens"] / run_small["seconds"]
    figures["ingest_peak_rss_mb"] = run_small["rss"] / 2**20
    echo(_line("ingest_spikes_per_s", figures["ingest_spikes_per_s"], "spikes/s (1 core, end to end)"))
    echo(_line("ingest_tokens_per_s", figures["ingest_tokens_per_s"], "tokens/s"))
    echo(_line("ingest_peak_rss", figures["ingest_peak_rss_mb"], "MB"))
    if growth > 1:
        _session(big, n_units, minutes * growth, seed=2)
        run_big = timed("neurobridge.bench.ingest", "_ingest_one", str(big), str(store))
        figures["ingest_big_spikes"] = run_big["out"]["spikes"]
        figures["ingest_big_spikes_per_s"] = run_big["out"]["spikes"] / run_big["seconds"]
        figures["ingest_big_peak_rss_mb"] = run_big["rss"] / 2**20
        figures["rss_growth_ratio"] = run_big["rss"] / run_small["rss"]
        echo(f"session_x{growth}: {run_big['out']['spikes']:,} spikes")
        echo(_line(f"ingest_x{growth}_spikes_per_s", figures["ingest_big_spikes_per_s"], "spikes/s"))
        echo(_line(f"ingest_x{growth}_peak_rss", figures["ingest_big_peak_rss_mb"], "MB"))
        echo(f"rss_growth_for_{growth}x_session: {figures['rss_growth_ratio']:.2f}x")
    return figures
