"""NLB's two files of one session, written by the simulator's pynwb writer in DANDI:000128's layout, and the
target a user would download: the train file (train and val trials, every unit with its ``heldout`` flag, hand
velocity), the test file (test trials, held-in units only, no behaviour), and the held-out units' spikes on the
test windows (NLB's ``eval_spikes_heldout``), which no file a model reads contains."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from neurobridge.sim.config import Spec
from neurobridge.sim.writers import NwbSession, write_nlb_files

DT = 0.001  # simulation step (s)
PRE_MS, POST_MS, BIN_MS = 250, 450, 20  # NLB's MC_Maze window around move onset, at NLB's 20 ms
WINDOW = {"mode": "intervals", "intervals": "trials", "align": "move_onset_time", "pre_s": 0.25, "post_s": 0.45}
SESSION = "full"


@dataclass
class NlbPair:
    folder: Path
    heldout_ids: list[str]
    eval_spikes_heldout: np.ndarray  # [test trials, 35, held-out units] at 20 ms, trials in time order
    train_behavior: np.ndarray  # [train + val trials, 35, 2]
    eval_behavior: np.ndarray  # [test trials, 35, 2]


def write_nlb_pair(folder: Path, n_trials: int = 60, n_units: int = 24, n_heldout: int = 6, seed: int = 0):
    g = np.random.default_rng(seed)
    onset = np.arange(n_trials) * 1.0 + 0.8  # one trial a second, movement 300 ms after its start
    split = np.resize(np.array(["train", "train", "val", "train", "test"]), n_trials)  # test trials interleaved
    ms = np.round(onset / DT).astype(int)
    steps = int(ms[-1] + 1000)
    tau = (np.arange(PRE_MS + POST_MS) - PRE_MS) * DT
    bump = np.exp(-(((tau - 0.15) / 0.12) ** 2))
    angle = g.integers(0, 4, n_trials) * np.pi / 2  # four reach directions
    latent = np.zeros((steps, 2))
    idx = (ms - PRE_MS)[:, None] + np.arange(PRE_MS + POST_MS)[None, :]
    latent[idx] = bump[None, :, None] * np.stack([np.cos(angle), np.sin(angle)], 1)[:, None, :]
    rate = np.exp(np.log(g.uniform(8, 30, n_units)) + latent @ g.normal(0, 1.2, (2, n_units)))  # Hz [steps, units]
    spikes = g.random((steps, n_units)) < rate * DT
    step_of, unit_of = np.nonzero(spikes)
    order = np.lexsort((step_of, unit_of))
    times, units = (step_of[order] + 0.5) * DT, unit_of[order]
    counts = np.bincount(units, minlength=n_units)
    ids = 1001 + 10 * np.arange(n_units)
    held = np.zeros(n_units, bool)
    held[g.choice(n_units, n_heldout, replace=False)] = True
    velocity = 10.0 * latent  # hand velocity: a readout of the latent state
    spec = Spec("nwb", "sim", SESSION, ["M1"], n_units, (0, 0, 0), "", datetime(2021, 1, 1, tzinfo=timezone.utc))
    regions = np.zeros(n_units, dtype=int)

    def trials(keep):
        s = onset[keep] - 0.3
        return {"start_time": s, "stop_time": s + 0.9, "move_onset_time": onset[keep], "split": split[keep]}

    train_trials, test_trials = split != "test", split == "test"
    whole = NwbSession(ids, regions, times, counts, held, trials=trials(train_trials), behavior=velocity, dt=DT)
    write_nlb_files(folder / "sub-sim", "sub-sim_ses-full", spec, "Macaca mulatta", whole, trials(test_trials), g)

    def binned(x, rows):  # [trials, 35, k]: 20 ms sums (spikes) of each window
        w = x[idx[rows]]
        return w.reshape(len(w), -1, BIN_MS, x.shape[1])

    return NlbPair(
        folder,
        [str(u) for u in ids[held]],
        binned(spikes[:, held].astype(np.int64), test_trials).sum(2),
        binned(velocity, train_trials).mean(2),
        binned(velocity, test_trials).mean(2),
    )
