"""Pretrain runs for the registry tests, made the way ``train.pretrain`` makes one (start_run with its tags, a few
plain-loop steps, the weights-only ``model/model.pt``, end_run), without Ray Train's start-up."""

from __future__ import annotations

import tempfile

import pyarrow as pa
import torch
from neurobridge.models.checkpoint import save_checkpoint
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.store.read import iter_local, sources
from neurobridge.store.rows import ROW_COLUMNS
from neurobridge.store.splits import HeldoutSplit
from neurobridge.tracking import mlflow_run
from neurobridge.train.batches import CollateWindows
from neurobridge.train.config import load_config
from neurobridge.train.loop import run_steps
from neurobridge.train.pretrain import vocabularies

SMALL = {
    "model.d_model": 32,
    "model.heads": 2,
    "model.decoder_d_model": 32,
    "model.decoder_heads": 2,
    "model.depth": 1,
    "model.neurons_per_token": 16,
    "optim.batch_size": 8,
    "optim.warmup_steps": 1,
    "optim.max_steps": 4,
    "log_every": 1,
    "checkpoint_every": 4,
    "data.datasets": ["r_nwb"],
    "data.holdout_sessions": ["monkey00_s01"],
}


def pretrain_run(settings, name: str, ok: bool = True) -> str:
    """A pretrain run as ``train.pretrain`` leaves it: tags, config, metrics, ``model/model.pt``, status."""
    cfg = load_config(None, {**SMALL, "name": name})
    srcs = sources(settings, cfg.data.datasets)
    vocabs = vocabularies(srcs, cfg.data.holdout_sessions, settings)
    tags = {"kind": "pretrain", "mixture": "", **{f"dataset.{s.name}": s.ref.version for s in srcs}}
    run_id = mlflow_run.start_run(settings.mlflow_uri, cfg.experiment, name, cfg.model_dump(mode="json"), tags)
    table = pa.Table.from_batches(list(iter_local(settings, srcs[0], "train", ROW_COLUMNS)))
    collate = CollateWindows(vocabs, cfg.model.neurons_per_token, HeldoutSplit())
    torch.manual_seed(cfg.seed)
    model = MaskedNeuralModel(cfg.model, vocabs)
    logger = mlflow_run.MetricsLogger(settings.mlflow_uri, run_id)

    def batches(epoch):
        for i in range(0, table.num_rows - 8 + 1, 8):
            yield collate(table.slice(i, 8))

    run_steps(cfg, model, batches, report=lambda m, s: logger.log(m, m["step"]))
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(f"{d}/model.pt", model, vocabs, {"step": cfg.optim.max_steps})
        mlflow_run.log_artifact(settings.mlflow_uri, run_id, f"{d}/model.pt", "model")
    mlflow_run.end_run(settings.mlflow_uri, run_id, ok)
    return run_id


def passing_run(settings, name: str) -> str:
    """A finished pretrain run whose evaluation beats smoothing (a run as ``neurobridge evaluate`` leaves one that
    passes; a few training steps never do)."""
    from neurobridge.tracking import mlflow_run

    run_id = pretrain_run(settings, name)
    mlflow_run.log_metrics(
        settings.mlflow_uri, run_id, {"eval.r_nwb.co_bps": 0.31, "eval.r_nwb.co_bps_smoothing": 0.25}
    )
    return run_id
