"""TVSD ingest benchmark (the MUA float path), against a plain h5py full read measured in the same run.

A simulated monkey folder (``THINGS_MUA_trials.mat`` laid out as MATLAB v7.3 lays it out) at two sizes; each
run happens in a fresh interpreter so that its peak RSS is its own: ours (open → window → bin by mean → region
order → Parquet), and the reference ``h5py.File(...)["ALLMUA"][()]`` that a notebook would start with. Both read
a file the simulator has just written, so both are served from the page cache: the figures compare work on the
data, not disks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from neurobridge.bench.worker import timed

BIN_MS = 10.0
WINDOW_S = 0.2


def _regions(channels: int) -> list[tuple[int, int, str]]:
    a, b = channels // 2, channels * 3 // 4
    return [(1, a, "V1"), (a + 1, b, "V4"), (b + 1, channels, "IT")]


def _folder(work: Path, channels: int, trials: int) -> Path:
    from neurobridge.sim.tvsd import TvsdSimConfig, write_monkey

    root = work / f"tvsd_c{channels}_t{trials}"
    folder = root / "monkeyB"
    done = root / "done.json"
    if not done.exists():
        n_test, reps = 10, 10
        cfg = TvsdSimConfig(
            monkeys={"monkeyB": _regions(channels)},
            n_train=max(trials - n_test * reps, 1),
            n_test=n_test,
            test_repeats=reps,
            normalized=False,
            raw_kb=1,
        )
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(write_monkey(folder, cfg, "monkeyB", 0)))
    return folder


def _entry(folder: Path):
    from neurobridge.catalog import CatalogEntry

    channels = json.loads((folder.parent / "done.json").read_text())["channels"]
    regions = [{"first": a, "last": b, "region": r} for a, b, r in _regions(channels)]
    return CatalogEntry.of(
        name="bench_tvsd",
        kind="tvsd",
        uri=str(folder.parent),
        tvsd={"datalad": {"url": None}, "responses": False, "regions": {"monkeyB": regions}},
        ingest={"bin_ms": BIN_MS, "window": {"pre_s": 0.0, "post_s": WINDOW_S}},
    )


def _timed(fn: str, *args: str) -> dict:
    return timed(
        "neurobridge.bench.tvsd", fn, *args, warm=("h5py", "neurobridge.ingest.blocks", "neurobridge.sources.tvsd")
    )


def ingest_one(folder: str, store: str) -> dict:
    """Ours, in this process: the engine's binned-source path for one monkey; returns rows and bytes read."""
    from neurobridge.config import get_settings
    from neurobridge.ingest.blocks import ingest_binned
    from neurobridge.sources import discover, open_source

    settings = get_settings(store=store, raw_root=str(Path(folder).parent))
    entry = _entry(Path(folder))
    item = discover(entry, settings)[0]
    with open_source(entry, item, settings) as src:
        rec = ingest_binned(src, entry, item, f"{store}/tokens/bench_tvsd/run-{time.time_ns()}", settings)
        return {"rows": rec["rows"], "tokens": rec["tokens"], "bytes": src.mua_bytes_read}


def full_read(folder: str) -> dict:
    """The reference: the whole ALLMUA into memory with h5py."""
    import h5py

    with h5py.File(Path(folder) / "THINGS_MUA_trials.mat", "r") as f:
        arr = f["ALLMUA"][()]
    return {"bytes": int(arr.nbytes)}


def bench_tvsd(
    channels: int = 256, trials: int = 1000, growth: int = 4, workdir: str | None = None, repeats: int = 2, echo=print
) -> dict:
    """Ours vs the full h5py read at ``trials`` and ``growth × trials``; echoes ``NAME: VALUE UNIT`` lines."""
    import tempfile

    work = Path(workdir or Path(tempfile.gettempdir()) / "neurobridge-bench")
    figures: dict = {}
    sizes = [("small", trials)] + ([(f"x{growth}", trials * growth)] if growth > 1 else [])
    for label, n in sizes:
        echo(f"simulating TVSD-style MUA: {channels} channels × {n} trials × 400 ms at 1 kHz in {work} …")
        folder = _folder(work, channels, n)
        mb = (folder / "THINGS_MUA_trials.mat").stat().st_size / 2**20
        ours = min(
            (_timed("ingest_one", str(folder), str(work / "store")) for _ in range(repeats)),
            key=lambda r: r["seconds"],
        )
        ref = min((_timed("full_read", str(folder)) for _ in range(repeats)), key=lambda r: r["seconds"])
        f = {
            "file_mb": mb,
            "rows": ours["out"]["rows"],
            "ingest_mua_mb_per_s": ours["out"]["bytes"] / 2**20 / ours["seconds"],
            "ingest_rows_per_s": ours["out"]["rows"] / ours["seconds"],
            "ingest_peak_rss_mb": ours["rss"] / 2**20,
            "reference_full_read_mb_per_s": ref["out"]["bytes"] / 2**20 / ref["seconds"],
            "reference_peak_rss_mb": ref["rss"] / 2**20,
        }
        f["mb_per_s_vs_reference"] = f["ingest_mua_mb_per_s"] / f["reference_full_read_mb_per_s"]
        figures[label] = f
        echo(f"{label} file {mb:,.0f} MB, {f['rows']:,} rows (window {WINDOW_S * 1000:g} ms, {BIN_MS:g} ms bins)")
        echo(f"{label} ingest_mua_read: {f['ingest_mua_mb_per_s']:,.1f} MB/s of raw MUA (1 core, end to end)")
        echo(f"{label} ingest_rows_per_s: {f['ingest_rows_per_s']:,.1f} rows/s")
        echo(f"{label} reference_h5py_full_read: {f['reference_full_read_mb_per_s']:,.1f} MB/s")
        echo(f"{label} ingest_vs_reference_mb_per_s: {f['mb_per_s_vs_reference']:.2f}x")
        echo(f"{label} ingest_peak_rss: {f['ingest_peak_rss_mb']:,.0f} MB")
        echo(f"{label} reference_peak_rss: {f['reference_peak_rss_mb']:,.0f} MB")
    if growth > 1:
        g = figures[f"x{growth}"]["ingest_peak_rss_mb"] / figures["small"]["ingest_peak_rss_mb"]
        figures["rss_growth_ratio"] = g
        ref_g = figures[f"x{growth}"]["reference_peak_rss_mb"] / figures["small"]["reference_peak_rss_mb"]
        echo(f"rss_growth_for_{growth}x_dataset: {g:.2f}x (reference: {ref_g:.2f}x)")
    return figures
