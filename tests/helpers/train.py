"""Small pretraining configs over the session's 'tiny' mixture (conftest.pretrain_store), and the training loop
run on it in this process, without Ray."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import torch
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.store.read import iter_local, sources
from neurobridge.store.rows import ROW_COLUMNS
from neurobridge.store.splits import HeldoutSplit
from neurobridge.train.batches import CollateWindows
from neurobridge.train.config import load_config
from neurobridge.train.loop import run_steps
from neurobridge.train.pretrain import vocabularies

SMALL_MODEL = {
    "d_model": 32,
    "heads": 2,
    "decoder_d_model": 32,
    "decoder_heads": 2,
    "depth": 1,
    "neurons_per_token": 16,
    "dropout": 0.0,
}


def small_cfg(**over):
    """A pretraining config with ``SMALL_MODEL`` on mixture 'tiny', a few steps; dotted keys override it."""
    base = {
        "model": SMALL_MODEL,
        "data.mixture": "tiny",
        "optim.batch_size": 8,
        "optim.warmup_steps": 2,
        "optim.max_steps": 12,
        "checkpoint_every": 4,
        "log_every": 2,
        "seed": 3,
    }
    base.update(over)
    model = base.pop("model")
    return load_config(None, {**{f"model.{k}": v for k, v in model.items()}, **base})


def local_batches(store, cfg, vocabs):
    """Batches of the mixture's training windows read in this process, shuffled by epoch: ``batches(epoch)``."""
    srcs = sources(store, [], "tiny")
    table = pa.concat_tables(
        [pa.Table.from_batches([b]) for s in srcs for b in iter_local(store, s, "train", ROW_COLUMNS)]
    )
    collate = CollateWindows(vocabs, cfg.model.neurons_per_token, HeldoutSplit(), crop_bins=cfg.data.crop_bins)
    bs = cfg.optim.batch_size

    def batches(epoch):
        order = np.random.default_rng(epoch).permutation(table.num_rows)
        for i in range(0, table.num_rows - bs + 1, bs):
            yield collate(table.take(order[i : i + bs]))

    return batches


def train_locally(store, cfg, state=None, model=None):
    """Train with ``run_steps`` on ``local_batches``: (loss by step, checkpointed states by step, model, vocabs)."""
    vocabs = vocabularies(sources(store, [], "tiny"))
    torch.manual_seed(cfg.seed)
    model = model or MaskedNeuralModel(cfg.model, vocabs)
    log, states = [], {}

    def report(m, st):
        log.append((m["step"], m["loss"]))
        if st is not None:  # state_dict() tensors are live references: snapshot them as a checkpoint write does
            states[m["step"]] = copy.deepcopy(st)

    run_steps(cfg, model, local_batches(store, cfg, vocabs), report=report, state=state)
    return dict(log), states, model, vocabs
