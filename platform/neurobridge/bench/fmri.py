"""THINGS-fMRI ingest benchmark (the table layout), against a plain h5py read of the same table in the same run.

A simulated subject of ~200,000 voxels at ``trials`` and ``growth × trials`` trials (the simulator writes the table
block by block in pandas' layout). Each measured run is a fresh interpreter, so its peak RSS is its own: ours (the
fmri reader + the binned-source engine → Parquet, one core, no Ray start-up) with an ROI selection (the usual
ingest: ~10 % of the voxels) and with every voxel, and the reference ``h5py.File(...)[…/block0_values][()]`` a
notebook starts with. Both read a file the simulator just wrote, so both are served from the page cache: the
figures compare work on the data, not disks. Throughput is raw table bytes read per second.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from neurobridge.bench.worker import ONE_THREAD_EVERYWHERE, timed

ROIS = ["V1", "hV4", "lFFA", "IT"]


def _cfg(voxels: int, trials: int):
    from neurobridge.sim.fmri import FmriSimConfig, RoiSim
    from neurobridge.sim.things import ThingsSimConfig

    side = int((voxels / 0.463 / 0.75) ** (1 / 3))  # the mask fills 4/3·π·0.48³ of its 1:1:0.75 box
    while True:
        grid = (side, side, max(int(side * 0.75), 4))
        x, y, z = (((np.arange(n) + 0.5) / n - 0.5) / 0.48 for n in grid)
        if np.count_nonzero(x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2 <= 1) >= voxels:
            break
        side += 1
    per = max(voxels // 40, 1)  # each ROI a 40th: ~10 % of the voxels in ROIs
    rois = [RoiSim(name=n, voxels=per, noise_ceiling=20.0, centre=c) for n, c in zip(ROIS, _CENTRES, strict=True)]
    test, sessions = 25, 4
    concepts = max((trials - test * sessions) // 4, test)
    things = ThingsSimConfig(concepts=concepts, train_images=4, test_concepts=test)
    return FmriSimConfig(
        grid=grid,
        sessions=sessions,
        runs_per_session=4,
        rois=rois,
        things=things,
        volumes=False,
        oracle=False,
        block_trials=32,
    )


_CENTRES = [(0.5, 0.15, 0.45), (0.5, 0.35, 0.35), (0.3, 0.6, 0.3), (0.68, 0.62, 0.3)]


def simulate(work: Path, voxels: int, trials: int) -> Path:
    """The subject's table layout (cached under ``work``); returns its folder."""
    from neurobridge.sim.fmri_writers import write_subject
    from neurobridge.sim.things import make_images

    root = work / f"fmri_v{voxels}_t{trials}"
    done = root / "done.json"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        cfg = _cfg(voxels, trials)
        rec = write_subject(root, cfg, make_images(cfg.things), 0)
        done.write_text(json.dumps({k: rec[k] for k in ("voxels", "trials")}))
    return root / "fmri"


def ingest_one(folder: str, store: str, rois: str) -> dict:
    """Ours, in this process: the reader and the engine's binned path for the subject; rows and bytes read."""
    from neurobridge.catalog import CatalogEntry
    from neurobridge.config import get_settings
    from neurobridge.ingest.blocks import ingest_binned
    from neurobridge.sources import discover, open_source

    settings = get_settings(store=store, raw_root=str(Path(folder).parent))
    opts = {"rois": ROIS} if rois == "roi" else {}
    entry = CatalogEntry.of(name="bench_fmri", kind="fmri", uri=folder, fmri=opts, ingest={"bin_ms": 4500})
    item = discover(entry, settings)[0]
    vdir = f"{store}/tokens/bench_fmri/run-{time.time_ns()}"
    try:
        with open_source(entry, item, settings) as src:
            rec = ingest_binned(src, entry, item, vdir, settings)
            return {"rows": rec["rows"], "units": rec["units"], "bytes": int(src.stream.bytes_read)}
    finally:
        shutil.rmtree(vdir, ignore_errors=True)  # the all-voxel rows are GBs


def full_read(folder: str) -> dict:
    """The reference: the whole response table into memory with h5py."""
    import h5py

    path = next(Path(folder).glob("*_ResponseData.h5"))
    with h5py.File(path, "r") as f:
        arr = f["ResponseData/block0_values"][()]
    return {"bytes": int(arr.nbytes)}


def _timed(fn: str, *args: str) -> dict:
    warm = ("h5py", "neurobridge.ingest.blocks", "neurobridge.sources.fmri")  # imports before the clock
    return timed("neurobridge.bench.fmri", fn, *args, warm=warm, threads=ONE_THREAD_EVERYWHERE)


def _measure(folder: Path, store: Path, label: str, modes: list[str], echo) -> dict:
    out: dict = {}
    ref = _timed("full_read", str(folder))
    mb_ref = ref["out"]["bytes"] / 2**20 / ref["seconds"]
    out["reference"] = {"mb_per_s": mb_ref, "peak_rss_mb": ref["rss"] / 2**20, "seconds": ref["seconds"]}
    echo(f"{label} reference_h5py_full_read: {mb_ref:,.0f} MB/s, peak RSS {ref['rss'] / 2**20:,.0f} MB")
    for mode in modes:
        r = _timed("ingest_one", str(folder), str(store), mode)
        mb = r["out"]["bytes"] / 2**20 / r["seconds"]
        out[mode] = {
            "mb_per_s": mb,
            "rows_per_s": r["out"]["rows"] / r["seconds"],
            "units": r["out"]["units"],
            "peak_rss_mb": r["rss"] / 2**20,
            "seconds": r["seconds"],
            "vs_reference": mb / mb_ref,
        }
        echo(
            f"{label} ingest[{mode}, {r['out']['units']:,} voxels]: {mb:,.0f} MB/s of table "
            f"({mb / mb_ref:.2f}x the h5py read), {r['out']['rows'] / r['seconds']:,.0f} rows/s, "
            f"peak RSS {r['rss'] / 2**20:,.0f} MB"
        )
    return out


def bench_fmri(
    voxels: int = 200_000,
    trials: int = 2000,
    growth: int = 2,
    workdir: str | None = None,
    all_voxels: bool = True,
    echo=print,
) -> dict:
    """Ours vs the full h5py read at ``trials`` and ``growth × trials``; echoes ``NAME: VALUE`` lines."""
    import tempfile

    work = Path(workdir or Path(tempfile.gettempdir()) / "neurobridge-bench")
    modes = ["roi", "all"] if all_voxels else ["roi"]
    figures: dict = {}
    sizes = [("small", trials)] + ([(f"x{growth}", trials * growth)] if growth > 1 else [])
    for label, n in sizes:
        echo(f"simulating a THINGS-fMRI table: ~{voxels:,} voxels × {n:,} trials in {work} …")
        t0 = time.perf_counter()
        folder = simulate(work, voxels, n)
        size = next(folder.glob("*_ResponseData.h5")).stat().st_size / 2**20
        echo(f"{label} table {size:,.0f} MB (simulated in {time.perf_counter() - t0:,.0f} s or cached)")
        figures[label] = {"table_mb": size, **_measure(folder, work / "store", label, modes, echo)}
    if growth > 1:
        big = figures[f"x{growth}"]
        for mode in [*modes, "reference"]:
            g = big[mode]["peak_rss_mb"] / figures["small"][mode]["peak_rss_mb"]
            figures[f"rss_growth_{mode}"] = g
            echo(f"rss_growth_for_{growth}x_trials[{mode}]: {g:.2f}x")
    return figures
