"""One simulated session: its events, its model, its spikes, written in its format with its truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neurobridge.sim.config import SPECIES, TASKS, SimConfig, Spec, random_stream
from neurobridge.sim.dynamics import build_model, generate
from neurobridge.sim.events import ibl_trials, nlb_trials, presentations
from neurobridge.sim.writers import NwbSession, write_alf, write_nwb, write_truth_rates, write_wheel


def simulate_one(
    root: Path, cfg: SimConfig, spec: Spec, embeddings: np.ndarray | None, write_truth: bool
) -> dict[str, Any]:
    """Generate and write one session under the local directory ``root``; returns its index record."""
    ev_rng = random_stream(cfg.seed, *spec.key, 4)
    duration = cfg.minutes * 60.0
    dt = cfg.truth_bin_ms / 1000.0
    record: dict[str, Any] = {}
    if spec.fmt == "nwb":
        trials = nlb_trials(ev_rng, duration, cfg.n_conditions)
        steps = np.floor(trials["go_time"] / dt + 1e-9).astype(np.int64)
        model = build_model(cfg, spec, duration, trials_reset=(steps, trials["condition"]))
        record["n_trials"] = len(steps)
    elif spec.fmt == "alf":
        trials = ibl_trials(ev_rng, duration, cfg.n_conditions)
        steps = np.floor(trials["stimOn_times"] / dt + 1e-9).astype(np.int64)
        model = build_model(cfg, spec, duration, trials_reset=(steps, trials["condition"]))
        record["n_trials"] = len(steps)
    else:
        start, stop, frames = presentations(ev_rng, cfg)
        duration = max(duration, float(stop[-1]) + 1.0)
        model = build_model(cfg, spec, duration, visual=(embeddings, start, frames))
        record["n_presentations"] = len(frames)
    truth_path = root / "truth" / spec.session_id / "rates.npy" if write_truth else None
    if spec.fmt in ("nwb", "alf"):  # hand velocity (2-D) or wheel velocity (1-D) read out from the latents
        readout = random_stream(cfg.seed, *spec.key, 5).normal(size=(2 if spec.fmt == "nwb" else 1, model.A.shape[0]))
        model.behavior_readout = readout / np.linalg.norm(readout, axis=1, keepdims=True)
    U = spec.n_units
    if spec.fmt == "alf":
        times, units = generate(model, cfg.seed, spec.key, "time", truth_path)
        unit_ids = np.arange(U)
        write_alf(root / spec.rel_path, model.unit_region, spec.regions, times, units, ev_rng, trials)
        write_wheel(root / spec.rel_path, np.concatenate(model.behavior_out)[:, 0], dt, ev_rng, trials)
    else:
        times, counts = generate(model, cfg.seed, spec.key, "unit", truth_path)
        if spec.fmt == "visual":  # Allen-style large unit ids
            unit_ids = np.sort(ev_rng.choice(np.arange(950_000_000, 951_000_000), U, replace=False))
        else:
            unit_ids = np.arange(U)
        heldout = np.zeros(U, dtype=bool)
        heldout[ev_rng.permutation(U)[: int(round(0.25 * U))]] = True
        session = NwbSession(
            unit_ids,
            model.unit_region,
            times,
            counts,
            heldout,
            trials=trials if spec.fmt == "nwb" else None,
            presentations=(start, stop, frames) if spec.fmt == "visual" else None,
            behavior=np.concatenate(model.behavior_out) if model.behavior_out else None,
            dt=dt,
        )
        write_nwb(root / spec.rel_path, spec, SPECIES[spec.fmt], session, ev_rng)
    if write_truth:
        write_truth_rates(root, spec, unit_ids, spec.regions, model.unit_region, cfg.truth_bin_ms)
    return {
        "session_id": spec.session_id,
        "subject": spec.subject,
        "species": SPECIES[spec.fmt],
        "task": TASKS[spec.fmt],
        "format": spec.fmt,
        "path": spec.rel_path,
        "regions": spec.regions,
        "n_units": U,
        "n_spikes": int(len(times)),
        "duration_s": model.n_steps * dt,
        "truth": f"truth/{spec.session_id}" if write_truth else None,
        **record,
    }
