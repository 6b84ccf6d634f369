"""Ground-truth simulator: multi-session, multi-subject, multi-region spiking recordings in the real raw formats.

Generative model (per session, time step ``dt = truth_bin_ms``):

* every region has a latent state of ``latent_dim`` dimensions following a stable linear dynamical system
  (2-D rotations at 1-3 Hz with decay, plus Gaussian noise); region ``r`` drives region ``r + 1`` through a small
  random coupling matrix. In trial-structured sessions the latents are reset to a condition-dependent state at
  each trial's go time, so trial-aligned activity is structured and predictable from other neurons;
* units (count random per session) belong to one region and load only on that region's latents:
  ``log rate = log(U(2, 20) Hz) + C x (+ stimulus drive)``, clipped to 200 Hz. There is no private slow noise:
  the only private variability is Poisson;
* visual sessions add a stimulus-locked drive ``gain_r · W_r @ embedding`` (plus a non-specific onset response)
  starting at each region's latency and lasting ``response_ms``; the gain grows along the hierarchy;
* spikes are exact inhomogeneous Poisson for the piecewise-constant rates: counts per step ~ Poisson(rate·dt),
  times uniform within the step. Generation runs in time chunks, so memory is bounded by the chunk size plus the
  final spike arrays.

Formats written under ``out`` (a local path or any fsspec URI; remote outputs are built in a local temp dir and
uploaded with ``fs.put``): NWB (NLB/DANDI style) in ``nwb/``, ALF sessions plus ONE cache tables in ``alf/``,
Allen-style visual NWB files and the image set in ``visual/``, true rates in ``truth/<session_id>/`` and an index
``simulation.json`` (written last: its presence marks a complete simulation).
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from neurobridge.sim.config import FORMAT_CODE, SCHEMA_VERSION, START_DATE, SimConfig, Spec, alf_rel, plan_sessions
from neurobridge.sim.events import image_embeddings, write_images
from neurobridge.sim.session import simulate_one
from neurobridge.sim.writers import build_one_cache
from neurobridge.storage import filesystem, is_local_fs, write_json_atomic

# ----------------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------------


def publish(local: Path, fs, dest: str) -> None:
    """Upload the contents of the local folder ``local`` into ``dest`` on ``fs``."""
    fs.put(str(local).rstrip("/") + "/", dest.rstrip("/") + "/", recursive=True)


def simulate(out: str, cfg: SimConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Write every session of ``cfg`` under ``out`` (local path or fsspec URI); returns the index, which is also
    written to ``out/simulation.json`` last."""
    cfg = cfg or SimConfig()
    fs, path = filesystem(out)
    local_fs = is_local_fs(fs)
    tmp = None if local_fs else tempfile.mkdtemp(prefix="nb-sim-")
    root = Path(path) if local_fs else Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    try:
        specs = plan_sessions(cfg)
        embeddings = image_embeddings(cfg) if cfg.visual_sessions else None
        if embeddings is not None:
            write_images(root, cfg, embeddings)
        sessions = []
        with progress_bar(progress) as bar:
            task = bar.add_task("simulating", total=len(specs)) if bar else None
            for spec in specs:
                if bar:
                    bar.update(task, description=f"{spec.fmt} {spec.session_id}")
                sessions.append(simulate_one(root, cfg, spec, embeddings, cfg.write_truth))
                if bar:
                    bar.advance(task)
        if any(s.fmt == "alf" for s in specs):
            eids = build_one_cache(root / "alf")
            for rec, spec in zip(sessions, specs, strict=True):
                if spec.alf_parts is not None:
                    rec["eid"] = eids.get(alf_rel(spec.alf_parts))
                    rec["collection"] = "alf/probe00"
        tvsd = simulate_tvsd_dataset(root, cfg, local_fs) if cfg.tvsd else None
        if cfg.pile:
            from neurobridge.sim.pile import write_demo_shards

            shards = write_demo_shards(str(root / "pile"), seed=cfg.seed)  # names hold data/train-*, data/test-*
        index = {
            "schema_version": SCHEMA_VERSION,
            "config": cfg.model_dump(mode="json"),
            "sessions": sessions,
            "images": None
            if embeddings is None
            else {
                "n_images": cfg.n_images,
                "embedding_dim": cfg.embedding_dim,
                "embeddings": "visual/images/embeddings.npy",
                "frames": "visual/images/frame_{:03d}.png" if cfg.write_images else None,
                "stimulus_ids": [f"frame_{i:03d}" for i in range(cfg.n_images)],
            },
            **({"tvsd": tvsd} if cfg.tvsd else {}),
            **({"pile": {"shards": sorted(f"pile/{n}" for n in shards)}} if cfg.pile else {}),
        }
        if tmp is not None:
            publish(root, fs, path)
        write_json_atomic(fs, posixpath.join(path.rstrip("/"), "simulation.json"), index)
        return index
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def simulate_session_file(
    path: str,
    fmt: Literal["nwb", "alf"],
    n_units: int,
    minutes: float,
    seed: int,
    write_truth: bool = False,
    cfg: SimConfig | None = None,
) -> dict[str, Any]:
    """One (big) session for benchmarks.

    ``fmt="nwb"``: ``path`` is the ``.nwb`` file to write (or a folder, which gets ``sub-bench_ses-sNN.nwb``).
    ``fmt="alf"``: ``path`` is the ONE cache root; the session goes to ``<lab>/Subjects/bench/<date>/001`` with
    the spikes in collection ``alf/probe00`` and the cache tables at the root. Truth (optional) goes to
    ``truth/<session_id>/`` beside the file (nwb) or under the root (alf). Returns the session record, with the
    recording's URI in ``uri`` and the wall time in ``seconds``.
    """
    if fmt not in ("nwb", "alf"):
        raise ValueError(f"fmt must be 'nwb' or 'alf', not {fmt!r}")
    tic = time.perf_counter()
    base = SimConfig.model_validate({**(cfg or SimConfig()).model_dump(), "seed": seed, "minutes": minutes})
    fs, target = filesystem(path)
    is_file = fmt == "nwb" and target.endswith(".nwb")
    out_dir = posixpath.dirname(target) if is_file else target
    key = (FORMAT_CODE["bench"], FORMAT_CODE[fmt], n_units)
    start = datetime(START_DATE.year, START_DATE.month, START_DATE.day, 9, 0, tzinfo=timezone.utc)
    if fmt == "nwb":
        name = posixpath.basename(target) if is_file else f"sub-bench_ses-s{seed:02d}.nwb"
        spec = Spec("nwb", "bench", f"bench_s{seed:02d}", list(base.nwb_regions), n_units, key, name, start)
    else:
        day = START_DATE.isoformat()
        spec = Spec(
            "alf",
            "bench",
            f"bench_{day}_001_probe00",
            list(base.alf_regions),
            n_units,
            key,
            f"{base.lab}/Subjects/bench/{day}/001/alf/probe00",
            start,
            (base.lab, "bench", day, "001"),
        )
    local_fs = is_local_fs(fs)
    tmp = None if local_fs else tempfile.mkdtemp(prefix="nb-sim-")
    root = Path(out_dir) if local_fs else Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    try:
        record = simulate_one(root, base, spec, None, write_truth)
        if fmt == "alf":
            eids = build_one_cache(root)
            record["eid"] = eids.get(alf_rel(spec.alf_parts))
            record["collection"] = "alf/probe00"
        if tmp is not None:
            publish(root, fs, out_dir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    record["uri"] = path if is_file else posixpath.join(path.rstrip("/"), spec.rel_path)
    record["seconds"] = round(time.perf_counter() - tic, 3)
    return record


def simulate_tvsd_dataset(root: Path, cfg: SimConfig, local: bool) -> dict[str, Any]:
    """The TVSD-style DataLad dataset in ``<root>/tvsd`` (see sim_tvsd); DataLad cannot live on object stores."""
    if not local:
        return {"skipped": "a DataLad dataset needs a local path; simulate to a local out for tvsd"}
    from neurobridge.sim.tvsd import TvsdSimConfig, simulate_tvsd

    return simulate_tvsd(root / "tvsd", TvsdSimConfig(seed=cfg.seed))


class progress_bar:  # noqa: N801 - a context manager like rich's Progress, or nothing when disabled
    def __init__(self, enabled: bool):
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self):
        if self._bar is not None:
            self._bar.__enter__()
        return self._bar

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False
