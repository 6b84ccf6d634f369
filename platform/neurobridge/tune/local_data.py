"""Training batches for an in-process trial, read straight from the Parquet parts (no Ray Data pipeline).

A Ray Data pipeline per trial costs its start-up (tens of seconds on a busy 2-core machine) and CPUs the trials
compete for; an ablation trial on a laptop trains a small model on a small mixture, so it reads the train rows
once, mixes them exactly as ``ray_dataset`` does (the same per-row repeat draws, √N or proportional), and shuffles
per epoch from the seed. Large mixtures belong to the cluster path (a trial driving a TorchTrainer on Ray Data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import pyarrow as pa

from neurobridge.config import Settings
from neurobridge.storage import StoreError
from neurobridge.store.read import Mixing, Source, epoch_plan, iter_local, mix_rows, one_bin_width, planned_rows
from neurobridge.store.rows import ROW_COLUMNS, table_rows
from neurobridge.train.epochs import permuted


def mixed_rows(settings: Settings, srcs: list[Source], mixing: Mixing) -> pa.Table:
    """The train rows of one epoch of the mixture (rows repeated or dropped by their dataset's multiple): the same
    rows ``store.read.ray_dataset`` yields, read in-process for Tune trials."""
    one_bin_width(srcs)
    plan = epoch_plan(planned_rows(srcs, "train", mixing.fractions), mixing.rule, mixing.epoch_rows)
    cols = list(dict.fromkeys([*ROW_COLUMNS, "dataset", "session", "sample_id", "split"]))
    parts = [
        mix_rows(pa.Table.from_batches([b]), plan, mixing.seed, mixing.exclude_sessions, mixing.fractions)
        for s in srcs
        if plan[s.name] > 0
        for b in iter_local(settings, s, "train", cols)
    ]
    parts = [p for p in parts if p.num_rows]
    if not parts:
        raise StoreError(f"no train rows in {[s.name for s in srcs]}")
    return pa.concat_tables(parts, promote_options="permissive")


def epoch_batches(table: pa.Table, batch_size: int, collate, seed: int) -> Callable[[int], Iterator]:
    """``batches(epoch)`` for ``run_steps``: a seeded permutation per epoch, full batches only (the worker's rule)."""
    rows = table_rows(table)
    return partial(permuted, rows, batch_size, collate, seed)
