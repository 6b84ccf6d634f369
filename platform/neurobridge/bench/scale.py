"""Ingest scaling: the same items ingested through the real Ray Data plan with 1, 2, … items in flight, in one run.

Each setting ingests every item into a fresh store (nothing is skipped as already done), after a warm-up that
starts the worker processes and imports, so the figures are steady-state throughput. Settings alternate order
between repeats and the best time of each is kept, which damps drift from other load on a shared machine; the
load average before and after is reported with them. The 1-worker figure is the per-core cost the cluster cost
model scales from (README "Scale on paper"); bytes per token come from the committed Parquet parts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from neurobridge.bench.ingest import BIN_MS, CHUNK_S, _line
from neurobridge.catalog import CatalogEntry
from neurobridge.config import get_settings


def _items(work: Path, items: int, n_units: int, minutes: float) -> Path:
    from neurobridge.sim import simulate_session_file

    folder = work / f"scale_u{n_units}_m{minutes:g}"
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(items):
        if not (folder / f"sub-bench_ses-s{seed:02d}.nwb").exists():
            simulate_session_file(str(folder), "nwb", n_units=n_units, minutes=minutes, seed=seed)
    return folder


def _entry(folder: Path, items: int) -> CatalogEntry:
    return CatalogEntry.of(
        name="bench_scale",
        kind="nwb",
        uri=str(folder),
        selection={"limit": items},
        ingest={"bin_ms": BIN_MS, "window": {"mode": "chunks", "chunk_s": CHUNK_S}},
    )


def _run(entry: CatalogEntry, store: Path, workers: int) -> tuple[float, dict, int, float, float]:
    from neurobridge.ingest.pipeline import ingest

    settings = get_settings(store=str(store))
    t0 = time.perf_counter()
    report = ingest(entry, settings, workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    if not report.ok or report.processed != report.items:
        raise RuntimeError(f"benchmark ingest did not process every item: {report.failed}")
    size = sum((Path(report.path) / f).stat().st_size for f in report.card.files)
    records = [json.loads(p.read_text()) for p in (Path(report.path) / "_items").glob("*.json")]
    item_seconds = sum(r["seconds"] for r in records)
    cpu_seconds = sum(r["cpu_seconds"] for r in records)
    return seconds, report.card.counts.model_dump(), size, item_seconds, cpu_seconds


def bench_scaling(
    workers: list[int],
    items: int = 8,
    n_units: int = 500,
    minutes: float = 10.0,
    repeats: int = 3,
    workdir: str | None = None,
    echo=print,
) -> dict:
    """Ingest throughput per number of concurrent Ray workers, as ratios against 1 worker measured in the same run."""
    from neurobridge.config import ensure_ray

    if sorted(set(workers)) != sorted(workers) or min(workers) < 1:
        raise ValueError(f"--workers must be distinct counts >= 1, got {workers}")
    work = Path(workdir or Path(tempfile.gettempdir()) / "neurobridge-bench")
    echo(f"simulating {items} sessions of {n_units} units × {minutes:g} min in {work} …")
    folder = _items(work, items, n_units, minutes)
    entry = _entry(folder, items)
    settings = get_settings(ray_num_cpus=max(workers))  # a local Ray with exactly as many CPUs as the top setting
    ensure_ray(settings)
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < max(workers):
        raise RuntimeError(f"the Ray cluster has {cpus} CPUs; cannot run {max(workers)} workers at once")
    stores = work / f"scale-stores-{time.time_ns()}"
    load0 = os.getloadavg()
    _run(_entry(folder, max(workers)), stores / "warmup", max(workers))  # starts and warms the worker processes
    best: dict[int, tuple[float, float, float]] = {}  # workers → (wall s, summed item s, summed item CPU s), fastest
    counts, size = {}, 0
    for rep in range(repeats):
        for w in workers if rep % 2 == 0 else workers[::-1]:
            seconds, counts, size, item_seconds, cpu_seconds = _run(entry, stores / f"w{w}-r{rep}", w)
            if seconds < best.get(w, (float("inf"),))[0]:
                best[w] = (seconds, item_seconds, cpu_seconds)
    load1 = os.getloadavg()
    shutil.rmtree(stores, ignore_errors=True)  # the sessions stay cached for the next run; the stores are spent
    base = min(workers)
    figures: dict = {
        "items": items,
        "spikes": counts["spikes"],
        "tokens": counts["tokens"],
        "rows": counts["rows"],
        "store_bytes": size,
        "store_bytes_per_token": size / counts["tokens"],
        "store_bytes_per_spike": size / max(counts["spikes"], 1),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load0[0],
        "loadavg_after": load1[0],
        "reference_workers": base,
    }
    echo(
        f"items: {items} sessions, {counts['spikes']:,} spikes, {counts['tokens']:,} tokens "
        f"({BIN_MS:g} ms bins, {CHUNK_S:g} s windows); machine: {os.cpu_count()} cores, "
        f"load average {load0[0]:.2f} before, {load1[0]:.2f} after"
    )
    for w in workers:
        s, item_s, cpu_s = best[w]
        # items in flight on average, and how long one item took: a slower item at the same concurrency means the
        # workers did not get whole cores (other load), not that Ray failed to run them side by side
        figures[f"w{w}_concurrency"] = item_s / s
        figures[f"w{w}_item_seconds"] = item_s / items
        figures[f"w{w}_cpu_share"] = cpu_s / item_s  # of one core, per busy worker: < 1 when others took the CPU
        figures[f"w{w}_spikes_per_cpu_s"] = counts["spikes"] / cpu_s
        figures[f"w{w}_tokens_per_cpu_s"] = counts["tokens"] / cpu_s
        figures[f"w{w}_seconds"] = s
        figures[f"w{w}_spikes_per_s"] = counts["spikes"] / s
        figures[f"w{w}_tokens_per_s"] = counts["tokens"] / s
        figures[f"w{w}_spikes_per_s_per_worker"] = counts["spikes"] / s / w
        figures[f"w{w}_speedup"] = best[base][0] / s
        echo(_line(f"ingest_{w}_workers_spikes_per_s", figures[f"w{w}_spikes_per_s"], f"spikes/s ({s:.2f} s)"))
        echo(_line(f"ingest_{w}_workers_tokens_per_s", figures[f"w{w}_tokens_per_s"], "tokens/s"))
        echo(_line(f"ingest_{w}_workers_spikes_per_s_per_core", figures[f"w{w}_spikes_per_s_per_worker"], "spikes/s"))
        echo(
            f"ingest_{w}_workers_items_in_flight: {item_s / s:.2f} (one item: {item_s / items:.2f} s, "
            f"{cpu_s / item_s:.0%} of a core while it ran)"
        )
        echo(_line(f"ingest_{w}_workers_spikes_per_cpu_s", figures[f"w{w}_spikes_per_cpu_s"], "spikes per CPU-second"))
        echo(_line(f"ingest_{w}_workers_tokens_per_cpu_s", figures[f"w{w}_tokens_per_cpu_s"], "tokens per CPU-second"))
        if w != base:
            echo(f"speedup_{w}_vs_{base}_workers: {figures[f'w{w}_speedup']:.2f}x")
    echo(_line("store_bytes_per_token", figures["store_bytes_per_token"], "B (zstd Parquet, rows only)"))
    echo(_line("store_bytes_per_spike", figures["store_bytes_per_spike"], "B"))
    return figures
