"""Training of the torch decoders: one loop for every net and task (``forward(x, session)`` → class scores,
standardised ratings or an embedding), keeping the weights of the best validation epoch.

Losses: cross-entropy for concepts; MSE or Huber for ratings and for embeddings (on unit vectors: the retrieval
geometry). Validation picks the epoch: the true concept's log-likelihood, mean R², or top-1 retrieval among the
validation images.
Like ``align.projector.fit_projector`` it runs in a process or in a Ray Train worker (``TrainWorker``: rank/world
shard the batches, ``wrap`` prepares DDP, ``report`` gets each epoch's record).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurobridge.align.projector import TrainWorker
from neurobridge.decode.config import NetConfig
from neurobridge.decode.data import TaskBlock, TaskData
from neurobridge.decode.linear import neg_cross_entropy
from neurobridge.decode.metrics import r2_per_column


def loss_fn(kind: str, cfg: NetConfig):
    if kind == "class":
        return F.cross_entropy

    def regress(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if kind == "embed":
            z, y = F.normalize(z, dim=-1), F.normalize(y, dim=-1)
        if cfg.loss == "huber":
            return F.huber_loss(z, y, delta=cfg.huber_delta)
        return F.mse_loss(z, y)

    return regress


def score(kind: str, pred: np.ndarray, target: np.ndarray) -> float:
    """Validation score, higher is better: the log-likelihood of the true concept (smooth where top-1 among hundreds
    of concepts stays at 0 for many epochs), mean R², or top-1 retrieval among the examples."""
    if not len(target):
        return float("nan")
    if kind == "class":
        return neg_cross_entropy(pred, target)
    if kind == "regress":
        r2 = r2_per_column(target, pred)
        return float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan")
    z = pred / np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
    e = target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
    return float(((z @ e.T).argmax(axis=1) == np.arange(len(e))).mean())


@torch.no_grad()
def predict(model: nn.Module, blocks: list[TaskBlock], chunk: int = 512) -> list[np.ndarray]:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for b in blocks:
        x = torch.as_tensor(b.x, device=device)
        out.append(torch.cat([model(x[i : i + chunk], b.session) for i in range(0, len(x), chunk)]).cpu().numpy())
    return out


def split_score(kind: str, model: nn.Module, blocks: list[TaskBlock]) -> float:
    scores = [score(kind, p, b.target) for p, b in zip(predict(model, blocks), blocks, strict=True) if len(b) >= 2]
    return float(np.nanmean(scores)) if scores and np.isfinite(scores).any() else float("nan")


def _batches(blocks: list[TaskBlock], size: int, rng: np.random.Generator, worker: TrainWorker):
    out = []
    for bi, b in enumerate(blocks):
        perm = rng.permutation(len(b))
        out += [(bi, perm[i : i + size]) for i in range(0, len(b), size) if len(perm[i : i + size]) >= 2]
    out = [out[i] for i in rng.permutation(len(out))]
    if worker.world > 1:  # every rank takes the same number of steps (DDP all-reduces each one)
        out = out[: len(out) // worker.world * worker.world]
    return out[worker.rank :: worker.world]


@dataclass
class NetFit:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = float("nan")
    seconds: float = 0.0
    examples_per_s: float = 0.0


def fit_net(model: nn.Module, task: TaskData, cfg: NetConfig, device, worker: TrainWorker | None = None) -> NetFit:
    """Train ``model`` on the task's training blocks; the best validation epoch's weights are kept."""
    worker = worker or TrainWorker()
    model.to(device)
    net = worker.wrap(model) if worker.wrap is not None else model
    groups = model.param_groups() if hasattr(model, "param_groups") else [{"params": list(model.parameters())}]
    for g in groups:
        g.setdefault("lr", cfg.lr)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lossf = loss_fn(task.kind, cfg)
    train, val = task.splits["train"], task.splits["val"]
    tensors = [(torch.as_tensor(b.x, device=device), torch.as_tensor(b.target, device=device)) for b in train]
    fit = NetFit(model)
    best_state, stale, examples = None, 0, 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        losses = []
        for bi, rows in _batches(train, cfg.batch_size, np.random.default_rng((cfg.seed, epoch)), worker):
            x, y = (t[torch.as_tensor(rows, device=device)] for t in tensors[bi])
            loss = lossf(net(x, train[bi].session), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{task.task}: loss is {loss.item()} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            examples += len(rows)
        fit.seconds += time.perf_counter() - t0
        val_score = split_score(task.kind, model, val) if val else float("nan")
        metric = val_score if not math.isnan(val_score) else -float(np.mean(losses or [np.inf]))
        if best_state is None or metric > fit.best_val:
            fit.best_val, fit.best_epoch, stale = metric, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        rec = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"), "val_score": val_score}
        fit.history.append(rec)
        if worker.report is not None:
            worker.report(rec)
        if cfg.patience is not None and stale >= cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    fit.examples_per_s = examples / max(fit.seconds, 1e-9)
    return fit


def set_normalizers(model: nn.Module, blocks: list[TaskBlock]) -> nn.Module:
    """Per-session input standardisation from the training features (projectors and volume decoders)."""
    for b in blocks:
        std = b.x.std(axis=0)
        model.set_normalizer(b.session, b.x.mean(axis=0), np.where(std > 1e-6, std, 1.0))
    return model
