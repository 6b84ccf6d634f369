"""Rehearse NLB's scoring path on real spikes: turn a recording that has every unit (here NLB's MC_Maze test split,
137 units, 574 trials) into NLB's two files of a session plus the target a user would download.

Some units are withheld as NLB's held-out units (flagged ``heldout`` in the train file, absent from the test file);
part of the trials become the train file (split train/val), the rest the test file, and the withheld units'
spikes on the test windows (move onset −250…+450 ms, 20 ms bins, trials in time order) go to ``target.h5`` as
``mc_maze_20/eval_spikes_heldout``. Then `docs/evaluation.md`'s recipe runs unchanged (results.md: "NLB's recipe
on real spikes"). Usage: ``python docs/scripts/nlb_pair_from_test_split.py OUT [--nwb FILE] [--heldout 35]``.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pynwb
from neurobridge.sim.config import Spec
from neurobridge.sim.writers import NwbSession, write_nlb_files

PRE_S, POST_S, BIN_S = 0.25, 0.45, 0.02


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--nwb", default="../shared/data/nlb_mc_maze/sub-Jenkins_ses-full_desc-test_ecephys.nwb")
    p.add_argument("--heldout", type=int, default=35, help="units withheld (NLB: 45 of MC_Maze's 182)")
    p.add_argument("--test-trials", type=int, default=114)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with pynwb.NWBHDF5IO(a.nwb, "r") as io:
        nwb = io.read()
        trials = {k: nwb.trials[k][:] for k in ("start_time", "stop_time", "move_onset_time")}
        spikes = [np.asarray(s) for s in nwb.units["spike_times"][:]]
        ids = np.asarray(nwb.units.id[:])
    n_trials, n_units = len(trials["start_time"]), len(spikes)
    g = np.random.default_rng(a.seed)
    held = np.zeros(n_units, bool)
    held[g.choice(n_units, a.heldout, replace=False)] = True
    order = g.permutation(n_trials)
    split = np.full(n_trials, "train", dtype=object)
    split[order[n_trials - a.test_trials :]] = "test"
    train_rows = np.flatnonzero(split == "train")
    split[g.choice(train_rows, len(train_rows) // 5, replace=False)] = "val"  # NLB's train file: a fifth is val
    times = np.concatenate(spikes)
    counts = np.array([len(s) for s in spikes])
    spec = Spec("nwb", "nlb", "full", ["M1"], n_units, (0, 0, 0), "", datetime(2009, 9, 25, tzinfo=timezone.utc))

    def table(keep):
        return {**{k: v[keep] for k, v in trials.items()}, "split": split[keep].astype(str)}

    is_test = split == "test"
    whole = NwbSession(ids, np.zeros(n_units, int), times, counts, held, trials=table(~is_test), dt=0.001)
    write_nlb_files(a.out / "sub-Jenkins", "sub-Jenkins_ses-full", spec, "Macaca mulatta", whole, table(is_test), g)
    onset = trials["move_onset_time"][is_test]  # time order: the trials table is
    edges = (onset[:, None] - PRE_S) + np.arange(round((PRE_S + POST_S) / BIN_S) + 1)[None, :] * BIN_S
    target = np.stack([np.diff(np.searchsorted(spikes[u], edges), axis=1) for u in np.flatnonzero(held)], axis=-1)
    with h5py.File(a.out / "target.h5", "w") as f:
        f.create_group("mc_maze_20")["eval_spikes_heldout"] = target
    print(f"{a.out}: {int(held.sum())} held-out units, {int((~is_test).sum())} train+val / {int(is_test.sum())} test")
    print(f"  target {target.shape}, {int(target.sum())} held-out spikes on the test windows")


if __name__ == "__main__":
    main()
