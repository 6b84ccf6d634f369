"""Neural responses → image-embedding space: a per-session read-in, a shared MLP, symmetric InfoNCE (+ MSE).

Sessions record different units, so each gets its own standardisation and linear read-in into a shared hidden
space; the MLP above it is shared. ``fit_projector`` is a plain PyTorch loop: it runs as is in a process, or
inside a Ray Train worker given a ``TrainWorker`` with ``report`` = ``ray.train.report``, ``rank/world`` sharding
the batches and ``wrap`` = ``ray.train.torch.prepare_model`` (with
``parallel_strategy_kwargs={"find_unused_parameters": True}`` when several sessions are trained: a step uses one
session's read-in only).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neurobridge.align.config import ProjectorConfig
from neurobridge.align.examples import AlignmentSplit, DimensionMismatch


class AlignProjector(nn.Module):
    def __init__(self, in_dims: dict[str, int], out_dim: int, cfg: ProjectorConfig):
        super().__init__()
        self.keys = sorted(in_dims)
        self.in_dims = dict(in_dims)
        self.out_dim = out_dim
        self.cfg = cfg
        h = cfg.hidden
        self.stems = nn.ModuleList([nn.Linear(in_dims[k], h) for k in self.keys])
        for i, k in enumerate(self.keys):
            self.register_buffer(f"mean_{i}", torch.zeros(in_dims[k]))
            self.register_buffer(f"std_{i}", torch.ones(in_dims[k]))
        layers: list[nn.Module] = []
        for _ in range(cfg.depth - 1):
            layers += [nn.LayerNorm(h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, h)]
        layers += [nn.LayerNorm(h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, out_dim)]
        self.trunk = nn.Sequential(*layers)
        self.in_drop = nn.Dropout(cfg.input_dropout)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / cfg.temperature)), requires_grad=cfg.learn_temperature
        )

    def index(self, session: str) -> int:
        try:
            return self.keys.index(session)
        except ValueError:
            raise KeyError(f"the projector has no read-in for session {session!r} (trained on {self.keys})") from None

    def set_normalizer(self, session: str, mean: np.ndarray, std: np.ndarray) -> None:
        i = self.index(session)
        getattr(self, f"mean_{i}").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"std_{i}").copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor, session: str) -> torch.Tensor:
        i = self.index(session)
        if x.shape[-1] != self.in_dims[session]:
            raise DimensionMismatch(
                f"session {session}: {x.shape[-1]} features, the projector expects {self.in_dims[session]}"
            )
        x = (x - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")
        return self.trunk(self.stems[i](self.in_drop(x)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)


def info_nce(z: torch.Tensor, e: torch.Tensor, scale: torch.Tensor | float, ids: torch.Tensor | None = None):
    """Symmetric InfoNCE between neural and image embeddings (cosine logits × scale).

    ``ids`` (integer stimulus codes) mark repeated presentations of one image in a batch as one correct answer
    (the loss is −log of the probability summed over them) instead of false negatives.
    """
    z, e = F.normalize(z, dim=-1), F.normalize(e, dim=-1)
    logits = scale * z @ e.T
    pos = torch.eye(len(z), device=z.device, dtype=torch.bool) if ids is None else ids[:, None] == ids[None, :]
    hit = logits.masked_fill(~pos, float("-inf"))  # the probability of picking any presentation of the image
    rows = torch.logsumexp(logits, dim=1) - torch.logsumexp(hit, dim=1)
    cols = torch.logsumexp(logits, dim=0) - torch.logsumexp(hit, dim=0)
    return 0.5 * (rows.mean() + cols.mean())


def cosine_mse(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Squared distance between unit vectors (= 2 − 2 cos): MSE to the target in the retrieval geometry."""
    return (F.normalize(z, dim=-1) - F.normalize(e, dim=-1)).pow(2).sum(-1).mean()


@dataclass
class FitResult:
    model: nn.Module  # AlignProjector, or an encoder trained with it (encoder_train.EncoderProjector)
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_top1: float = float("nan")
    seconds: float = 0.0
    examples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    steps: int = 0


@torch.no_grad()
def project(model: AlignProjector, split: AlignmentSplit, device: torch.device | None = None) -> list[np.ndarray]:
    """Neural embeddings (unit norm) per block of ``split``."""
    device = device or next(model.parameters()).device
    model.eval()
    return [
        F.normalize(model(torch.as_tensor(b.x, device=device), b.session), dim=-1).cpu().numpy() for b in split.blocks
    ]


def val_top1(model: AlignProjector, split: AlignmentSplit) -> float:
    """Mean over sessions of top-1 neural → image retrieval among the split's stimuli (a selection signal)."""
    scores = []
    for b, z in zip(split.blocks, project(model, split), strict=True):
        if len(b) < 2:
            continue
        e = b.y / np.linalg.norm(b.y, axis=1, keepdims=True)
        sim = z @ e.T
        scores.append(float(np.mean(sim.argmax(1) == np.arange(len(b)))))
    return float(np.mean(scores)) if scores else float("nan")


def _batches(split: AlignmentSplit, size: int, rng: np.random.Generator, rank: int, world: int):
    """(block index, row indices) for one epoch: shuffled within blocks, blocks interleaved, sharded by rank."""
    out = []
    for bi, b in enumerate(split.blocks):
        perm = rng.permutation(len(b))
        out += [(bi, perm[i : i + size]) for i in range(0, len(b), size) if len(perm[i : i + size]) >= 2]
    order = rng.permutation(len(out))
    out = [out[i] for i in order]
    if world > 1:  # every rank takes the same number of steps (DDP all-reduces each one)
        out = out[: len(out) // world * world]
    return out[rank::world]


@dataclass
class TrainWorker:
    """Where the loop runs when it is one worker of several (Ray Train): its ``rank`` of ``world`` shards the
    batches, ``report`` receives each logged epoch's record (e.g. ``ray.train.report``), and ``wrap`` prepares the
    module for data-parallel training (e.g. ``ray.train.torch.prepare_model``). The defaults are one process."""

    rank: int = 0
    world: int = 1
    report: Callable[[dict], None] | None = None
    wrap: Callable[[nn.Module], nn.Module] | None = None


def fit_projector(
    train: AlignmentSplit,
    val: AlignmentSplit | None,
    cfg: ProjectorConfig,
    *,
    device: torch.device | str | None = None,
    model: nn.Module | None = None,
    worker: TrainWorker | None = None,
) -> FitResult:
    """Train a projector on ``train``; keep the weights of the epoch with the best validation top-1.

    ``model``: a prepared module with the projector's interface (``forward(x, session)``, ``scale()``, optional
    ``param_groups()``), e.g. an encoder trained with the projector; default: a new ``AlignProjector``.
    ``worker``: rank, world size, reporting and wrapping inside a Ray Train worker (default: one process)."""
    worker = worker or TrainWorker()
    dims, out_dim = _check_dimensions(train, val)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model is None:
        model = _new_projector(train, dims, out_dim, cfg)
    model.to(device)
    loop = _EpochLoop(model, train, cfg, device, worker)
    has_val = val is not None and len(val) > 0
    result = FitResult(model)
    best_state, best, stale = None, -1.0, 0
    for epoch in range(cfg.epochs):
        losses = loop.run_epoch(epoch)
        score = val_top1(model, val) if has_val else float("nan")
        metric = score if not math.isnan(score) else -float(np.mean(losses))
        if metric > best:
            best, stale, result.best_epoch = metric, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        rec = loop.record(epoch, losses, score)
        result.history.append(rec)
        if worker.report is not None and (epoch % cfg.log_every == 0 or epoch == cfg.epochs - 1):
            worker.report(rec)
        if cfg.patience is not None and stale >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.best_val_top1 = best if has_val else float("nan")
    result.seconds, result.steps = loop.seconds, loop.steps
    result.examples_per_s, result.tokens_per_s = loop.rates()
    return result


def _check_dimensions(train: AlignmentSplit, val: AlignmentSplit | None) -> tuple[dict[str, int], int]:
    """Features per training session and the one target dimension; val sessions must be trained sessions with the
    same features."""
    if not train.blocks:
        raise ValueError("no training examples")
    dims = {b.session: b.x.shape[1] for b in train.blocks}
    val_blocks = val.blocks if val else []
    out_dims = {b.y.shape[1] for b in train.blocks} | {b.y.shape[1] for b in val_blocks}
    if len(out_dims) != 1:
        raise DimensionMismatch(f"target embeddings have several dimensions: {sorted(out_dims)}")
    for b in val_blocks:
        if b.session not in dims:
            raise ValueError(f"validation session {b.session} has no training examples")
        if b.x.shape[1] != dims[b.session]:
            raise DimensionMismatch(f"{b.session}: {b.x.shape[1]} val features vs {dims[b.session]} in train")
    return dims, out_dims.pop()


def _new_projector(train: AlignmentSplit, dims: dict[str, int], out_dim: int, cfg: ProjectorConfig) -> AlignProjector:
    """A projector seeded by ``cfg.seed``, each session standardised by its training features' mean and std."""
    torch.manual_seed(cfg.seed)
    model = AlignProjector(dims, out_dim, cfg)
    for b in train.blocks:
        std = b.x.std(axis=0)
        model.set_normalizer(b.session, b.x.mean(axis=0), np.where(std > 1e-6, std, 1.0))
    return model


class _EpochLoop:
    """The optimiser, schedule and training tensors of one fit, and what it has done so far (steps, examples,
    token-grid cells, training seconds: validation is not timed)."""

    def __init__(self, model: nn.Module, train: AlignmentSplit, cfg: ProjectorConfig, device, worker: TrainWorker):
        self.model, self.train, self.cfg, self.device, self.worker = model, train, cfg, device, worker
        self.net = worker.wrap(model) if worker.wrap is not None else model
        groups = (
            model.param_groups()
            if hasattr(model, "param_groups")
            else [{"params": list(model.parameters()), "lr": cfg.lr}]
        )
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.total_steps = max(1, cfg.epochs * math.ceil(len(train) / cfg.batch_size / max(worker.world, 1)))
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=[g["lr"] for g in groups], total_steps=self.total_steps + len(train.blocks), pct_start=0.1
        )
        codes = {s: i for i, s in enumerate(sorted({s for b in train.blocks for s in b.stimulus_id.tolist()}))}
        self.tensors = [
            (
                torch.as_tensor(b.x, device=device),
                torch.as_tensor(b.y, device=device),
                torch.as_tensor(np.array([codes[s] for s in b.stimulus_id.tolist()]), device=device),
            )
            for b in train.blocks
        ]
        self.steps, self.examples, self.cells, self.seconds = 0, 0, 0, 0.0

    def run_epoch(self, epoch: int) -> list[float]:
        """One pass over this worker's shard of the batches; returns the step losses."""
        rng = np.random.default_rng((self.cfg.seed, epoch))
        t0 = time.perf_counter()
        self.net.train()
        losses = []
        for bi, rows in _batches(self.train, self.cfg.batch_size, rng, self.worker.rank, self.worker.world):
            losses.append(self._step(epoch, bi, rows))
        self.seconds += time.perf_counter() - t0
        return losses

    def _step(self, epoch: int, bi: int, rows: np.ndarray) -> float:
        cfg = self.cfg
        x, y, ids = (t[torch.as_tensor(rows, device=self.device)] for t in self.tensors[bi])
        z = self.net(x, self.train.blocks[bi].session)
        loss = info_nce(z, y, self.model.scale(), ids)
        if cfg.mse_weight > 0:
            loss = loss + cfg.mse_weight * cosine_mse(z, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {self.steps}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.steps < self.total_steps:
            self.sched.step()
        self.steps += 1
        self.examples += len(rows)
        self.cells += len(rows) * self.train.blocks[bi].cells
        return float(loss.detach())

    def rates(self) -> tuple[float, float]:
        """(examples/s, tokens/s) of training time so far."""
        seconds = max(self.seconds, 1e-9)
        return self.examples / seconds, self.cells / seconds

    def record(self, epoch: int, losses: list[float], val_top1: float) -> dict:
        examples_per_s, tokens_per_s = self.rates()
        return {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "val_top1": val_top1,
            "temperature": float(1.0 / self.model.scale().detach()),
            "steps": self.steps,
            "examples_per_s": examples_per_s,
            "tokens_per_s": tokens_per_s,
        }


def save_projector(model: AlignProjector, path: str) -> None:
    """Weights and the constructor arguments, loadable with ``weights_only=True`` (no pickled classes)."""
    torch.save(
        {
            "state": model.state_dict(),
            "in_dims": model.in_dims,
            "out_dim": model.out_dim,
            "cfg": model.cfg.model_dump(),
        },
        path,
    )


def load_projector(path: str, map_location: str = "cpu") -> AlignProjector:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    model = AlignProjector(payload["in_dims"], payload["out_dim"], ProjectorConfig(**payload["cfg"]))
    model.load_state_dict(payload["state"])
    return model.eval()
