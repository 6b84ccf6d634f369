"""Allen Visual Coding Neuropixels look-alikes: session NWB files and an EcephysProjectCache tree around them.

The simulator's ``visual`` output is NLB/DANDI-shaped (``units/electrodes`` regions, no blanks, no quality
metrics). The Allen files differ in exactly what the reader must get right, so these reproduce them: units
carry ``peak_channel_id`` (an electrodes-table *id*, and ids are not in row order), quality metrics
(``quality``, ``isi_violations``, ``amplitude_cutoff``, ``presence_ratio``, ``snr``, ``firing_rate``) with some
units failing allensdk's default filters, the electrodes table labels channels with structure acronyms
(``location``, plus ``ecephys_structure_acronym`` in some sessions, as in later releases) including ``grey``,
and ``intervals/natural_scenes_presentations`` holds back-to-back 250 ms presentations with ``frame`` as
float64, ``-1`` for blanks, in shuffled repeats. ``functional_connectivity`` sessions have no natural scenes.

``simulate_allen_cache`` lays the sessions out like the real cache: ``sessions.csv``, ``probes.csv``,
``channels.csv``, ``units.csv`` at the root (the columns allensdk's EcephysProjectCache reads), and
``session_<id>/session_<id>.nwb`` with ``probe_<id>_lfp.nwb`` files beside it (LFP only, never to be ingested).
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from neurobridge.sim.config import FORMAT_CODE, ID_NAMESPACE, SimConfig, Spec, random_stream
from neurobridge.sim.dynamics import build_model, generate
from neurobridge.sim.simulate import publish
from neurobridge.storage import filesystem, is_local_fs

NATURAL_SCENES = "brain_observatory_1.1"
FUNCTIONAL_CONNECTIVITY = "functional_connectivity"
# allensdk 2.16's default unit filters (allensdk.brain_observatory.ecephys.UNIT_FILTER_DEFAULTS + validity)
ALLEN_UNIT_FILTER = {
    "quality": {"one_of": ["good"]},
    "isi_violations": {"max": 0.5},
    "amplitude_cutoff": {"max": 0.1},
    "presence_ratio": {"min": 0.95},
}
FAILURES = ("quality", "isi_violations", "amplitude_cutoff", "amplitude_cutoff_nan", "presence_ratio")
_ALLEN_CODE = 6


class AllenSimConfig(BaseModel):
    """Small by default: a few sessions of ~30 s each, written in about a second apiece."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    sessions: int = Field(2, ge=0, description="brain_observatory_1.1 sessions (with natural scenes)")
    fc_sessions: int = Field(1, ge=0, description="functional_connectivity sessions (no natural scenes)")
    n_images: int = Field(8, ge=1, le=118)
    repeats: int = Field(3, ge=1, description="shuffled blocks, each showing every image once")
    blanks_per_repeat: int = Field(1, ge=0, description="frame -1 presentations per block")
    units_min: int = Field(20, ge=1)
    units_max: int = Field(30, ge=1)
    fail_fraction: float = Field(0.3, ge=0, le=1, description="units failing one of the default quality filters")
    probes: list[list[str]] = Field(
        default_factory=lambda: [["VISp", "grey", "CA1"], ["LGd", "grey", "VISl"]],
        description="structures along each probe, tip last; channels are split evenly between them",
    )
    channels_per_probe: int = Field(24, ge=1)
    acronym_column_every: int = Field(2, ge=0, description="every Nth session also writes ecephys_structure_acronym")
    lfp_samples: int = Field(200, ge=1)
    embedding_dim: int = Field(8, ge=1)


def _session_plan(cfg: AllenSimConfig) -> list[dict]:
    plan = []
    for k in range(cfg.sessions + cfg.fc_sessions):
        kind = NATURAL_SCENES if k < cfg.sessions else FUNCTIONAL_CONNECTIVITY
        sid = 715_093_703 + 37 * k + cfg.seed  # Allen-like ids; deterministic
        plan.append({"index": k, "id": sid, "session_type": kind, "specimen_id": 699_733_573 + k})
    return plan


def _presentations(rng: np.random.Generator, cfg: AllenSimConfig, t0: float):
    """Back-to-back 250 ms presentations: each block shows every image once and the blanks, shuffled."""
    block = np.concatenate([np.arange(cfg.n_images), np.full(cfg.blanks_per_repeat, -1)])
    frames = np.concatenate([rng.permutation(block) for _ in range(cfg.repeats)]).astype(np.float64)
    start = t0 + 0.25 * np.arange(len(frames))
    return start, start + 0.25, frames


def _metrics(rng: np.random.Generator, n: int, fail_fraction: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Quality metrics passing allensdk's defaults, except for a fraction of units failing one of them."""
    failing = rng.random(n) < fail_fraction
    how = np.where(failing, rng.integers(0, len(FAILURES), n), -1)
    m = {
        "quality": np.where(how == 0, "noise", "good").astype(object),
        "isi_violations": np.where(how == 1, rng.uniform(0.6, 3.0, n), rng.uniform(0.0, 0.45, n)),
        "amplitude_cutoff": np.where(how == 2, rng.uniform(0.15, 0.5, n), rng.uniform(0.0, 0.09, n)),
        "presence_ratio": np.where(how == 4, rng.uniform(0.5, 0.93, n), rng.uniform(0.96, 1.0, n)),
        "snr": rng.uniform(1.0, 6.0, n),
    }
    m["amplitude_cutoff"][how == 3] = np.nan
    return m, failing


def _electrodes(cfg: AllenSimConfig, rng: np.random.Generator, k: int) -> dict[str, np.ndarray]:
    """Channels of all probes: id, probe, local index, structure; rows shuffled so ids are not in row order."""
    ids, probe, local, structure = [], [], [], []
    for p, structs in enumerate(cfg.probes):
        band = np.array_split(np.arange(cfg.channels_per_probe), len(structs))
        for s, chans in zip(structs, band, strict=True):
            for c in chans:
                ids.append(849_000_000 + 100_000 * k + 1_000 * p + int(c))
                probe.append(p)
                local.append(int(c))
                structure.append(s)
    perm = rng.permutation(len(ids))
    return {
        "id": np.array(ids, dtype=np.int64)[perm],
        "probe": np.array(probe, dtype=np.int64)[perm],
        "local_index": np.array(local, dtype=np.int64)[perm],
        "structure": np.array(structure)[perm],
    }


def write_allen_session(root: Path, cfg: AllenSimConfig, plan: dict, embeddings: np.ndarray) -> dict[str, Any]:
    """One session NWB (and its probes' LFP files) under ``root/session_<id>/``; returns the truth record."""
    from hdmf.common import VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.misc import Units

    k, sid = plan["index"], plan["id"]
    rng = random_stream(cfg.seed, _ALLEN_CODE, k, 7)
    elec = _electrodes(cfg, rng, k)
    regions = list(dict.fromkeys(s for probe in cfg.probes for s in probe))
    n_units = int(rng.integers(cfg.units_min, cfg.units_max + 1))
    natural = plan["session_type"] == NATURAL_SCENES
    start, stop, frames = _presentations(rng, cfg, t0=2.0)
    duration = float(stop[-1]) + 2.0
    base = SimConfig(
        seed=cfg.seed,
        visual_regions=regions,
        visual_latency_ms=[50.0 + 10 * i for i in range(len(regions))],
        n_images=cfg.n_images,
        embedding_dim=cfg.embedding_dim,
        minutes=duration / 60.0,
    )
    t_start = datetime(2019, 1, 1, 9, 0, tzinfo=timezone.utc) + timedelta(days=k)
    spec = Spec("visual", str(plan["specimen_id"]), str(sid), regions, n_units, (_ALLEN_CODE, k), "", t_start)
    shown = np.where(frames >= 0, frames, -1).astype(np.int64) if natural else np.full(len(frames), -1)
    model = build_model(base, spec, duration, visual=(embeddings, start, shown))
    times, counts = generate(model, cfg.seed, spec.key, "unit", None)

    # each unit's peak channel lies in its region (any probe that crosses it)
    peak = np.array([rng.choice(elec["id"][elec["structure"] == regions[r]]) for r in model.unit_region])
    unit_ids = np.sort(rng.choice(np.arange(950_900_000, 951_000_000), n_units, replace=False))
    metrics, failing = _metrics(rng, n_units, cfg.fail_fraction)
    acronym_col = cfg.acronym_column_every > 0 and k % cfg.acronym_column_every == 1

    nwb = NWBFile(
        session_description=f"simulated Allen Visual Coding session ({plan['session_type']})",
        identifier=str(sid),
        session_start_time=t_start,
        file_create_date=t_start,
        session_id=str(sid),
        subject=Subject(subject_id=str(plan["specimen_id"]), species="Mus musculus", description="simulated"),
        institution="NeuroBridge simulator (Allen layout)",
    )
    groups = []
    for p in range(len(cfg.probes)):
        device = nwb.create_device(name=f"probe{p}", description="Neuropixels (simulated)")
        groups.append(nwb.create_electrode_group(f"probe{p}", description="probe", location="", device=device))
    if acronym_col:
        nwb.add_electrode_column(name="ecephys_structure_acronym", description="CCF structure acronym")
        nwb.add_electrode_column(name="local_index", description="channel index on the probe")
    for i in range(len(elec["id"])):
        extra = {"ecephys_structure_acronym": elec["structure"][i], "local_index": int(elec["local_index"][i])}
        # later releases keep the acronym in its own column; `location` then holds something else
        location = "see ecephys_structure_acronym" if acronym_col else str(elec["structure"][i])
        nwb.add_electrode(
            id=int(elec["id"][i]), group=groups[elec["probe"][i]], location=location, **(extra if acronym_col else {})
        )
    spike_times = VectorData(name="spike_times", description="spike times (s)", data=times)
    firing = counts / duration
    columns = [
        spike_times,
        VectorIndex(name="spike_times_index", data=np.cumsum(counts).astype(np.int64), target=spike_times),
        VectorData(name="peak_channel_id", description="electrodes id of the peak channel", data=peak),
        VectorData(name="quality", description="sorter label", data=[str(q) for q in metrics["quality"]]),
        VectorData(name="firing_rate", description="Hz", data=firing.astype(np.float64)),
    ]
    for name in ("isi_violations", "amplitude_cutoff", "presence_ratio", "snr"):
        columns.append(VectorData(name=name, description=name, data=metrics[name].astype(np.float64)))
    nwb.units = Units(name="units", description="simulated units", id=unit_ids.astype(np.int64), columns=columns)
    if natural:
        table = TimeIntervals(name="natural_scenes_presentations", description="natural scene presentations")
        table.add_column(name="frame", description="image index, -1: blank")
        table.add_column(name="stimulus_name", description="stimulus")
        for s, e, f in zip(start, stop, frames, strict=True):
            table.add_interval(
                start_time=float(s),
                stop_time=float(e),
                frame=float(f),
                stimulus_name="natural_scenes",
                tags=["stimulus_time_interval"],
            )
    else:
        table = TimeIntervals(name="drifting_gratings_75_repeats_presentations", description="gratings")
        table.add_column(name="orientation", description="degrees")
        for s, e in zip(start, stop, strict=True):
            table.add_interval(start_time=float(s), stop_time=float(e), orientation=float(rng.choice([0, 45, 90])))
    nwb.add_time_intervals(table)
    folder = root / f"session_{sid}"
    folder.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(folder / f"session_{sid}.nwb"), "w") as io:
        io.write(nwb)

    probe_ids = [810_755_797 + 10 * k + p for p in range(len(cfg.probes))]
    for p, pid in enumerate(probe_ids):  # LFP-only files beside the session file
        lfp = NWBFile(
            session_description="simulated LFP",
            identifier=str(uuid.uuid3(ID_NAMESPACE, f"lfp/{pid}")),
            session_start_time=t_start,
        )
        dev = lfp.create_device(name=f"probe{p}", description="Neuropixels (simulated)")
        grp = lfp.create_electrode_group(f"probe{p}", description="probe", location="", device=dev)
        chans = np.flatnonzero(elec["probe"] == p)
        for c in chans:
            lfp.add_electrode(id=int(elec["id"][c]), group=grp, location=str(elec["structure"][c]))
        region = lfp.create_electrode_table_region(list(range(len(chans))), "LFP channels")
        data = rng.standard_normal((cfg.lfp_samples, len(chans))).astype(np.float32)
        lfp.add_acquisition(ElectricalSeries(name=f"probe_{pid}_lfp_data", data=data, electrodes=region, rate=1250.0))
        with NWBHDF5IO(str(folder / f"probe_{pid}_lfp.nwb"), "w") as io:
            io.write(lfp)

    kept = ~failing
    return {
        **plan,
        "path": f"session_{sid}/session_{sid}.nwb",
        "lfp": [f"session_{sid}/probe_{pid}_lfp.nwb" for pid in probe_ids],
        "probe_ids": probe_ids,
        "unit_ids": [str(u) for u in unit_ids],
        "unit_regions": [regions[r] for r in model.unit_region],
        "peak_channel_id": [int(c) for c in peak],
        "passes_filter": [bool(x) for x in kept],
        "metrics": {
            k_: [None if isinstance(v, float) and np.isnan(v) else v for v in vals.tolist()]
            for k_, vals in metrics.items()
        },
        "channels": {k_: v.tolist() for k_, v in elec.items()},
        "frames": frames.tolist() if natural else None,
        "acronym_column": bool(acronym_col),
        "n_spikes": int(len(times)),
    }


def _write_tables(root: Path, cfg: AllenSimConfig, records: list[dict]) -> None:
    """The four cache tables with the columns allensdk's EcephysProjectCache reads (index column `id`)."""

    def write(name: str, header: list[str], rows: list[list]) -> None:
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    write(
        "sessions.csv",
        [
            "id",
            "date_of_acquisition",
            "published_at",
            "specimen_id",
            "session_type",
            "age_in_days",
            "sex",
            "full_genotype",
            "has_nwb",
            "isi_experiment_id",
        ],
        [
            [
                r["id"],
                "2019-01-01T09:00:00Z",
                "2019-10-03T00:00:00Z",
                r["specimen_id"],
                r["session_type"],
                100 + r["index"],
                "M",
                "wt/wt",
                True,
                700_000_000 + r["index"],
            ]
            for r in records
        ],
    )
    probes, channels, units = [], [], []
    for r in records:
        ch = r["channels"]
        for p, pid in enumerate(r["probe_ids"]):
            probes.append([pid, r["id"], f"probe{'ABCDEF'[p % 6]}", 29999.9, 1249.99, "3a", True])
        for cid, p, li, s in zip(ch["id"], ch["probe"], ch["local_index"], ch["structure"], strict=True):
            channels.append([cid, r["probe_ids"][p], li, 43, 20 * li, s])
        m = r["metrics"]
        for i, uid in enumerate(r["unit_ids"]):
            amp = m["amplitude_cutoff"][i]
            units.append(
                [
                    uid,
                    r["peak_channel_id"][i],
                    m["quality"][i],
                    m["snr"][i],
                    m["isi_violations"][i],
                    m["presence_ratio"][i],
                    "" if amp is None else amp,
                ]
            )
    write(
        "probes.csv",
        ["id", "ecephys_session_id", "name", "sampling_rate", "lfp_sampling_rate", "phase", "has_lfp_data"],
        probes,
    )
    write(
        "channels.csv",
        [
            "id",
            "ecephys_probe_id",
            "local_index",
            "probe_horizontal_position",
            "probe_vertical_position",
            "ecephys_structure_acronym",
        ],
        channels,
    )
    write(
        "units.csv",
        ["id", "ecephys_channel_id", "quality", "snr", "isi_violations", "presence_ratio", "amplitude_cutoff"],
        units,
    )


def simulate_allen_cache(out: str, cfg: AllenSimConfig | None = None, settings=None) -> dict[str, Any]:
    """An EcephysProjectCache-style tree under ``out`` (local path or fsspec URI; remote trees are built in a
    temp dir and uploaded). Returns the truth: per session its files, units, regions and which units pass."""
    cfg = cfg or AllenSimConfig()
    fs, path = filesystem(out, settings)
    local = is_local_fs(fs)
    tmp = None if local else tempfile.mkdtemp(prefix="nb-allen-")
    root = Path(path) if local else Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    try:
        e = random_stream(cfg.seed, FORMAT_CODE["images"], _ALLEN_CODE).standard_normal(
            (cfg.n_images, cfg.embedding_dim)
        )
        embeddings = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
        records = [write_allen_session(root, cfg, plan, embeddings) for plan in _session_plan(cfg)]
        _write_tables(root, cfg, records)
        if tmp is not None:
            publish(root, fs, path)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"root": out, "unit_filter": ALLEN_UNIT_FILTER, "sessions": records}


__all__ = ["ALLEN_UNIT_FILTER", "AllenSimConfig", "simulate_allen_cache", "write_allen_session"]
