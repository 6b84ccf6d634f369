"""Writers of the real raw formats: NWB (NLB/DANDI), ALF folders with ONE cache tables, the true rates."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurobridge.sim.config import ID_NAMESPACE, TASKS, Spec

# ----------------------------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class NwbSession:
    """What one simulated session writes to NWB: its units and their spikes, and the events and behaviour of its
    format (trials for reaching, image presentations for visual sessions, hand velocity sampled every ``dt``)."""

    unit_ids: np.ndarray
    unit_region: np.ndarray  # index into spec.regions, per unit
    times: np.ndarray  # spike times (s), grouped by unit
    counts: np.ndarray  # spikes per unit
    heldout: np.ndarray  # held-out units for co-smoothing
    trials: dict | None = None
    presentations: tuple | None = None  # (start, stop, frame) arrays
    behavior: np.ndarray | None = None
    dt: float = 0.01


def write_nwb(path: Path, spec: Spec, species: str, session: NwbSession, rng: np.random.Generator) -> None:
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject

    nwb = NWBFile(
        session_description=f"NeuroBridge simulation ({TASKS[spec.fmt]})",
        identifier=str(uuid.uuid3(ID_NAMESPACE, f"{spec.key}/{spec.session_id}")),
        session_start_time=spec.start,
        file_create_date=spec.start,
        session_id=spec.session_id,
        subject=Subject(subject_id=spec.subject, species=species, description="simulated subject"),
        institution="NeuroBridge simulator",
    )
    _add_units(nwb, spec, session, rng)
    if session.trials is not None:
        _add_trials(nwb, session.trials)
    if session.presentations is not None:
        _add_presentations(nwb, session.presentations)
    if session.behavior is not None:
        _add_hand_velocity(nwb, session.behavior, session.dt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def write_nlb_files(folder: Path, prefix: str, spec: Spec, species: str, whole: NwbSession, test_trials: dict, rng):
    """NLB's two files of one session (DANDI:000128's layout): ``<prefix>_desc-train_behavior+ecephys.nwb`` with
    every unit, its ``heldout`` flag, ``whole``'s trials and behaviour; ``<prefix>_desc-test_ecephys.nwb`` with
    ``test_trials`` and the held-in units only, so the held-out units' test spikes exist in no file a model reads."""
    write_nwb(folder / f"{prefix}_desc-train_behavior+ecephys.nwb", spec, species, whole, rng)
    held = np.asarray(whole.heldout, dtype=bool)
    keep = ~np.repeat(held, whole.counts)  # times are grouped by unit
    heldin = NwbSession(
        whole.unit_ids[~held],
        whole.unit_region[~held],
        whole.times[keep],
        whole.counts[~held],
        held[~held],
        trials=test_trials,
    )
    write_nwb(folder / f"{prefix}_desc-test_ecephys.nwb", spec, species, heldin, rng)


def _add_units(nwb, spec: Spec, session: NwbSession, rng: np.random.Generator) -> None:
    """16 electrodes per region, each unit on a random one of its region's, and the units table (spike times,
    electrodes, held-out flags)."""
    from hdmf.common import DynamicTableRegion, VectorData, VectorIndex
    from pynwb.misc import Units

    device = nwb.create_device(name="probe" if spec.fmt == "visual" else "array", description="simulated")
    per_region = 16
    for region in spec.regions:
        group = nwb.create_electrode_group(
            name=f"group_{region}", description=f"electrodes in {region}", location=region, device=device
        )
        for _ in range(per_region):
            nwb.add_electrode(group=group, location=region)
    unit_region = session.unit_region
    rows = unit_region * per_region + rng.integers(0, per_region, len(unit_region))
    spike_times = VectorData(name="spike_times", description="spike times (s)", data=session.times)
    columns = [
        spike_times,
        VectorIndex(name="spike_times_index", data=np.cumsum(session.counts).astype(np.int64), target=spike_times),
    ]
    electrodes = DynamicTableRegion(
        name="electrodes", description="electrode of each unit", data=rows.astype(np.int64), table=nwb.electrodes
    )
    columns += [
        electrodes,
        VectorIndex(name="electrodes_index", data=np.arange(1, len(rows) + 1, dtype=np.int64), target=electrodes),
        VectorData(name="heldout", description="held-out unit for co-smoothing", data=session.heldout.astype(bool)),
    ]
    ids = session.unit_ids.astype(np.int64)
    nwb.units = Units(name="units", description="simulated units", id=ids, columns=columns)


def _add_trials(nwb, trials: dict) -> None:
    nwb.add_trial_column(name="move_onset_time", description="movement onset (s)")
    nwb.add_trial_column(name="split", description="train / val / test")
    for i in range(len(trials["start_time"])):
        nwb.add_trial(
            start_time=float(trials["start_time"][i]),
            stop_time=float(trials["stop_time"][i]),
            move_onset_time=float(trials["move_onset_time"][i]),
            split=str(trials["split"][i]),
        )


def _add_presentations(nwb, presentations: tuple) -> None:
    from pynwb.epoch import TimeIntervals

    table = TimeIntervals(name="natural_scenes_presentations", description="natural scene presentations")
    table.add_column(name="frame", description="image index")
    for s, e, f in zip(*presentations, strict=True):
        table.add_interval(start_time=float(s), stop_time=float(e), frame=int(f))
    nwb.add_time_intervals(table)


def _add_hand_velocity(nwb, behavior: np.ndarray, dt: float) -> None:
    """NLB layout: processing/behavior/hand_vel with explicit timestamps."""
    from pynwb import TimeSeries

    module = nwb.create_processing_module(name="behavior", description="simulated hand kinematics")
    stamps = (np.arange(len(behavior)) + 0.5) * dt
    module.add(
        TimeSeries(
            name="hand_vel",
            data=behavior,
            timestamps=stamps,
            unit="a.u.",
            description="hand velocity: a fixed linear readout of the latent state",
        )
    )


def write_alf(
    folder: Path,
    unit_region: np.ndarray,
    regions: list[str],
    times: np.ndarray,
    units: np.ndarray,
    rng: np.random.Generator,
    trials: dict,
) -> None:
    """``folder`` is the probe collection (``<session>/alf/probe00``); trials go to its parent ``alf``."""
    folder.mkdir(parents=True, exist_ok=True)
    U, R = len(unit_region), len(regions)
    np.save(folder / "spikes.times.npy", times.astype(np.float64))
    np.save(folder / "spikes.clusters.npy", units.astype(np.int64))
    np.save(folder / "clusters.brainLocationAcronyms_ccf_2017.npy", np.array(regions)[unit_region].astype(str))
    label = np.where(rng.random(U) < 0.7, 1.0, rng.choice([1 / 3, 2 / 3], U))
    np.save(folder / "clusters.label.npy", label.astype(np.float64))
    band = 3800.0 / R  # µm along the probe; the first region is the most superficial (largest depth)
    depths = 200.0 + (R - 1 - unit_region + rng.random(U)) * band
    np.save(folder / "clusters.depths.npy", depths.astype(np.float64))
    alf = folder.parent
    for name in ("stimOn_times", "intervals", "choice", "feedbackType", "feedback_times"):
        np.save(alf / f"trials.{name}.npy", trials[name])


def write_wheel(folder: Path, velocity: np.ndarray, dt: float, rng: np.random.Generator, trials: dict) -> None:
    """IBL-style ``wheel.position``/``wheel.timestamps`` (irregular samples) and the trial contrasts."""
    alf = folder.parent
    t = (np.arange(len(velocity)) + 0.5) * dt
    keep = np.sort(rng.choice(len(t), size=max(2, len(t) // 2), replace=False))  # encoder-like irregular sampling
    position = np.cumsum(velocity.astype(np.float64)) * dt
    np.save(alf / "wheel.position.npy", position[keep])
    np.save(alf / "wheel.timestamps.npy", t[keep])
    n = len(trials["stimOn_times"])
    contrast = rng.choice([0.0, 0.0625, 0.125, 0.25, 1.0], n)
    left = trials["condition"] < np.median(trials["condition"])
    np.save(alf / "trials.contrastLeft.npy", np.where(left, contrast, np.nan))
    np.save(alf / "trials.contrastRight.npy", np.where(left, np.nan, contrast))
    np.save(alf / "trials.probabilityLeft.npy", np.full(n, 0.5))


def write_truth_rates(
    root: Path, spec: Spec, unit_ids: np.ndarray, regions: list[str], unit_region: np.ndarray, dt_ms: float
) -> None:
    folder = root / "truth" / spec.session_id
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "unit_ids": [int(u) for u in unit_ids],
        "regions": [regions[r] for r in unit_region],
        "bin_ms": dt_ms,
        "t0": 0.0,
        "format": spec.fmt,
        "path": spec.rel_path,
    }
    (folder / "units.json").write_text(json.dumps(info, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# ONE cache
# ----------------------------------------------------------------------------------------------------------------


def build_one_cache(alf_root: Path) -> dict[str, str]:
    """Index an ALF tree (``<lab>/Subjects/<subject>/<date>/<number>/...``) into ONE's ``sessions.pqt`` and
    ``datasets.pqt`` at ``alf_root`` so that ``ONE(mode='local', cache_dir=alf_root)`` finds it.

    ``make_parquet_db`` derives its UUIDs from a time-based namespace (a new eid on every run): the ids are
    re-derived here from the session and dataset paths, so they are stable across runs. It also stores an empty
    string as the hash, which makes ONE md5 every file on every load (iblutil allocates a 256 MB buffer per file)
    and then log "local md5 mismatch"; a null hash skips that check. Returns {session path: eid}.
    """
    import pandas as pd
    from iblutil.io import parquet
    from one.alf.cache import make_parquet_db

    fn_ses, fn_dsets = make_parquet_db(alf_root, hash_ids=True, hash_files=False)
    sessions, meta_s = parquet.load(fn_ses)
    datasets, meta_d = parquet.load(fn_dsets)
    if sessions.empty:
        return {}
    if "id" in sessions.columns:
        sessions = sessions.set_index("id")
    if "eid" in datasets.columns:
        datasets = datasets.set_index(["eid", "id"])
    rel = {
        old: f"{row.lab}/Subjects/{row.subject}/{row.date}/{int(row.number):03d}"
        if row.lab
        else f"{row.subject}/{row.date}/{int(row.number):03d}"
        for old, row in sessions.iterrows()
    }
    new_eid = {old: str(uuid.uuid3(ID_NAMESPACE, path)) for old, path in rel.items()}
    sessions.index = sessions.index.map(new_eid).rename("id")
    old_eids = datasets.index.get_level_values(0)
    ds_ids = [
        str(uuid.uuid3(ID_NAMESPACE, f"{rel[e]}/{p}")) for e, p in zip(old_eids, datasets["rel_path"], strict=True)
    ]
    datasets.index = pd.MultiIndex.from_arrays([old_eids.map(new_eid), ds_ids], names=["eid", "id"])
    datasets["hash"] = None
    datasets["default_revision"] = True  # one revision per dataset: silences ONE's "no default revision" warning
    parquet.save(fn_ses, sessions.sort_index(), meta_s)
    parquet.save(fn_dsets, datasets.sort_index(), meta_d)
    return {rel[old]: new_eid[old] for old in rel}
