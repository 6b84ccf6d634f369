"""Neural Pile ingest benchmark (``neurobridge bench ingest --source pile``), against references in the same run.

- throughput: the shards ingested end to end (read row by row → re-window → tokenize → Parquet write) in a fresh
  single-core process, in source rows/s and cells/s, vs a plain ``pyarrow.parquet.read_table`` of the same shards
  converted to NumPy (the least any reader must do), in a fresh process too;
- memory: peak RSS of ingesting one long row at two lengths (growth should be the one-row materialisation in
  Arrow's decoder, nothing more), and of a shard holding several long rows in one row group (flat in row count),
  beside the full read's peak RSS for that shard.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from neurobridge.bench.ingest import _line
from neurobridge.bench.worker import ONE_THREAD_EVERYWHERE, timed


def _shard(path: Path, rows: list[tuple[str, int, int]], row_group_rows: int) -> int:
    """Write (once) a shard of simulated rows ``(segment, units, bins)``; returns its cells."""
    from neurobridge.sim.pile import PileRow, simulate_counts, write_shard

    cells = sum(u * b for _, u, b in rows)
    if path.exists():
        return cells
    pairs = []
    for seg, u, b in rows:
        row = PileRow("bench", f"s{seg}", seg, "bench_pile", u, b)
        pairs.append((row, simulate_counts(row)))
    tmp = path.with_suffix(".tmp")
    write_shard(str(tmp), pairs, row_group_rows=row_group_rows)
    tmp.rename(path)
    return cells


def ingest_shards(root: str, store: str) -> dict:
    """Every shard under ``root`` through the engine's per-item path (no Ray: one core, start-up excluded)."""
    from neurobridge.catalog import CatalogEntry
    from neurobridge.config import get_settings
    from neurobridge.ingest.item import process_item
    from neurobridge.sources import discover

    settings = get_settings(store=store)
    entry = CatalogEntry.of(name="bench_pile", kind="pile", uri=root, ingest={"window": {"mode": "chunks"}})
    vdir = f"{store}/tokens/bench_pile/run-{time.time_ns()}"
    totals = {"rows_in": 0, "windows": 0, "tokens": 0}
    for item in discover(entry, settings):
        rec = process_item(entry, item, vdir, settings)
        if not rec.ok:
            raise RuntimeError(rec.error)
        totals["rows_in"] += rec.stats["pile_rows_read"]
        totals["windows"] += rec.rows
        totals["tokens"] += rec.tokens
    return totals


def full_read(root: str) -> dict:
    """The reference: each shard read whole by pyarrow and its counts turned into one NumPy array."""
    import pyarrow.parquet as pq

    rows = cells = 0
    for path in sorted(Path(root).rglob("*.parquet")):
        table = pq.read_table(path, columns=["spike_counts"], use_threads=False)
        values = table.column("spike_counts").combine_chunks().flatten().flatten().to_numpy()
        rows, cells = rows + table.num_rows, cells + len(values)
        del table, values
    return {"rows": rows, "cells": cells}


def _timed(fn: str, *args: str) -> dict:
    return timed("neurobridge.bench.pile", fn, *args, threads=ONE_THREAD_EVERYWHERE)


@dataclass
class PileBenchSizes:
    """The simulated shards: the throughput shards' rows and their shape, and the long row measured for memory at
    one length and ``growth`` times it (then ``growth`` such rows in one row group)."""

    rows: int = 24
    units: int = 200
    bins: int = 15_000
    long_units: int = 300
    long_bins: int = 33_000
    growth: int = 4


def bench_pile(sizes: PileBenchSizes | None = None, workdir: str | None = None, echo=print) -> dict:
    sizes = sizes or PileBenchSizes()
    rows, units, bins, growth = sizes.rows, sizes.units, sizes.bins, sizes.growth
    long_units, long_bins = sizes.long_units, sizes.long_bins
    work = Path(workdir or Path(tempfile.gettempdir()) / "neurobridge-bench") / "pile"
    thr = work / f"throughput_r{rows}_u{units}_b{bins}"
    echo(f"simulating Neural Pile shards in {work} …")
    half = rows // 2
    cells = _shard(thr / "data" / "train-00000-of-00002.parquet", [(str(i), units, bins) for i in range(half)], 8)
    cells += _shard(
        thr / "data" / "train-00001-of-00002.parquet", [(str(i), units, bins) for i in range(half, rows)], 8
    )
    store = work / "store"
    ours = _timed("ingest_shards", str(thr), str(store))
    ref = _timed("full_read", str(thr))
    figures = {
        "rows": rows,
        "cells": cells,
        "ingest_rows_per_s": rows / ours["seconds"],
        "ingest_cells_per_s": cells / ours["seconds"],
        "full_read_rows_per_s": rows / ref["seconds"],
        "full_read_cells_per_s": cells / ref["seconds"],
        "ingest_vs_full_read_time": ours["seconds"] / ref["seconds"],
        "ingest_peak_rss_mb": ours["rss"] / 2**20,
        "full_read_peak_rss_mb": ref["rss"] / 2**20,
    }
    echo(f"shards: {rows} rows of {units} units × {bins} bins ({cells:,} cells), 2 shards")
    echo(_line("ingest_rows_per_s", figures["ingest_rows_per_s"], "rows/s (1 core, end to end, Parquet written)"))
    echo(_line("ingest_cells_per_s", figures["ingest_cells_per_s"], "cells/s"))
    echo(_line("full_read_rows_per_s", figures["full_read_rows_per_s"], "rows/s (pyarrow read_table → NumPy)"))
    echo(_line("full_read_cells_per_s", figures["full_read_cells_per_s"], "cells/s"))
    echo(f"ingest_time_vs_full_read: {figures['ingest_vs_full_read_time']:.2f}x")
    echo(_line("ingest_peak_rss", figures["ingest_peak_rss_mb"], "MB"))
    echo(_line("full_read_peak_rss", figures["full_read_peak_rss_mb"], "MB"))

    sizes = {"x1": long_bins, f"x{growth}": long_bins * growth}
    rss = {}
    for tag, b in sizes.items():
        root = work / f"long_u{long_units}_b{b}"
        _shard(root / "data" / "train-0.parquet", [("0", long_units, b)], 1)
        rss[tag] = _timed("ingest_shards", str(root), str(store))["rss"]
        echo(_line(f"long_row_{tag}_peak_rss", rss[tag] / 2**20, f"MB (one row, {long_units * b:,} cells)"))
    many = work / f"many_u{long_units}_b{long_bins}_n{growth}"
    _shard(many / "data" / "train-0.parquet", [(str(i), long_units, long_bins) for i in range(growth)], growth)
    rss["many"] = _timed("ingest_shards", str(many), str(store))["rss"]
    rss["many_full_read"] = _timed("full_read", str(many))["rss"]
    extra_cells = long_units * long_bins * (growth - 1)
    figures.update(
        {
            "long_row_peak_rss_mb": {k: v / 2**20 for k, v in rss.items()},
            "rss_bytes_per_extra_row_cell": (rss[f"x{growth}"] - rss["x1"]) / extra_cells,
            "rss_ratio_many_rows_vs_one": rss["many"] / rss["x1"],
        }
    )
    echo(f"rss_per_extra_cell_of_the_long_row: {figures['rss_bytes_per_extra_row_cell']:.1f} bytes")
    echo(_line(f"shard_{growth}_long_rows_peak_rss", rss["many"] / 2**20, "MB (one row group)"))
    echo(f"rss_{growth}_rows_vs_1_row: {figures['rss_ratio_many_rows_vs_one']:.2f}x")
    echo(_line(f"shard_{growth}_long_rows_full_read_peak_rss", rss["many_full_read"] / 2**20, "MB"))
    return figures
