"""Every decoder on every task for one region set: fit, predict the test images, score against chance and ceilings.

The same function runs in the driver (``scaling.backend: local``) and in a Ray Train worker (``decode/train.py``).
Decoders: ``ridge`` (logistic regression for concepts), ``mlp`` (the alignment projector's per-session read-in and
shared MLP; for retrieval, the existing contrastive alignment itself), ``encoder`` (the masked model: frozen, its
pooled latents under the MLP; or tuned with it), ``cnn3d`` and ``vit3d`` (volumes rebuilt from voxel coordinates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from neurobridge.align.examples import AlignmentSplit, Block
from neurobridge.align.projector import AlignProjector, TrainWorker, fit_projector
from neurobridge.decode import linear
from neurobridge.decode.config import VOLUME_DECODERS, DecodeConfig
from neurobridge.decode.data import TaskBlock, TaskData
from neurobridge.decode.fit import fit_net, predict, score, set_normalizers
from neurobridge.decode.metrics import (
    concept_scores,
    embedding_scores,
    mean_over_sessions,
    mean_properties,
    property_scores,
)
from neurobridge.decode.nets import VolumeDecoder, VolumeLayout


@dataclass
class SetInputs:
    """What one region set's decoders train on (JSON-free: it travels to Ray workers through the object store)."""

    name: str
    tasks: dict[str, TaskData]  # pooled responses
    encoder_tasks: dict[str, TaskData] = field(default_factory=dict)  # the encoder's input (latents or raw windows)
    encoder: dict | None = None  # tuned encoder: {"spec", "specs", "checkpoint"}
    layouts: dict[str, VolumeLayout] = field(default_factory=dict)  # sessions with voxel coordinates
    reliability: dict[str, float] = field(default_factory=dict)


@dataclass
class DecoderResult:
    task: str
    decoder: str
    mean: dict = field(default_factory=dict)
    sessions: dict = field(default_factory=dict)
    properties: dict = field(default_factory=dict)  # regress: per property, averaged over sessions
    curve: list = field(default_factory=list)  # class: top-k accuracy for k = 1.., averaged over sessions
    attention: dict = field(default_factory=dict)  # vit3d: share of CLS attention per ROI
    seconds: float = 0.0
    history: list = field(default_factory=list)
    skipped: str | None = None
    state: dict | None = None  # weights (not in the JSON summary)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "state"}


def fit_region_set(
    inp: SetInputs, cfg: DecodeConfig, device, worker: TrainWorker | None = None, report_for=None
) -> list[DecoderResult]:
    """Every (task, decoder) of the config; ``report_for(task, decoder)`` gives the epoch reporter of each fit."""
    worker = worker or TrainWorker()
    out = []
    for task in cfg.tasks:
        for dec in cfg.decoders:
            t0 = time.perf_counter()
            w = replace(worker, report=report_for(task, dec)) if report_for is not None else worker
            res = _fit_one(inp, task, dec, cfg, device, w)
            res.seconds = time.perf_counter() - t0
            out.append(res)
    return out


def _fit_one(inp: SetInputs, task: str, dec: str, cfg: DecodeConfig, device, worker) -> DecoderResult:
    data = inp.encoder_tasks.get(task) if dec == "encoder" else inp.tasks.get(task)
    res = DecoderResult(task, dec)
    if data is None:
        res.skipped = f"no {task} examples for the {dec} decoder"
        return res
    if not any(len(b) >= 2 for b in data.splits["test"]):
        res.skipped = (
            f"no session has 2+ labelled {task} test examples (e.g. each image its own concept: test images are "
            "never training classes)"
        )
        return res
    if dec in VOLUME_DECODERS:
        data = _with_layouts(data, inp.layouts)
        if data is None:
            res.skipped = "no session with voxel coordinates (volume decoders need fMRI units with x, y, z)"
            return res
    preds, model, history = _train(inp, data, dec, cfg, device, worker)
    _score(res, data, preds, inp.reliability, cfg)
    res.history = history
    if isinstance(model, dict):  # linear: per session standardisation, weights and bias
        res.state = {
            f"{s}/{k}": torch.as_tensor(np.asarray(getattr(m, k), dtype=np.float32))
            for s, m in model.items()
            for k in ("mean", "std", "weight", "bias")
        }
    elif isinstance(model, nn.Module):
        res.state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if dec == "vit3d":
            res.attention = _attention(model, data.splits["test"])
    return res


def _train(inp: SetInputs, data: TaskData, dec: str, cfg: DecodeConfig, device, worker):
    test = data.splits["test"]
    if dec == "ridge":
        if data.kind == "class":
            models = linear.fit_logistic(data, cfg.linear, cfg.net.seed)
        else:
            models = linear.fit_ridge(data, cfg.linear, lambda p, t: score(data.kind, p, t))
        return linear.predict(models, test), models, []
    model = _build(inp, data, dec, cfg, device)
    if data.kind == "embed" and dec in ("mlp", "encoder"):  # the existing alignment: InfoNCE projector
        fit = fit_projector(
            _split(data, "train"), _split(data, "val"), cfg.projector, device=device, model=model, worker=worker
        )
        return predict(fit.model, test), fit.model, fit.history
    fit = fit_net(model, data, cfg.net, device, worker)
    return predict(fit.model, test), fit.model, fit.history


def _build(inp: SetInputs, data: TaskData, dec: str, cfg: DecodeConfig, device) -> nn.Module | None:
    train = data.splits["train"]
    if dec in VOLUME_DECODERS:
        torch.manual_seed(cfg.net.seed)
        layouts = {s: inp.layouts[s] for s in data.sessions()}
        return set_normalizers(VolumeDecoder(layouts, dec, cfg.volume, data.out_dim), train)
    if dec == "encoder" and inp.encoder is not None:
        from neurobridge.align.config import EncoderSpec
        from neurobridge.align.encoder_train import build_encoder_projector

        e = inp.encoder
        return build_encoder_projector(
            _split(data, "train"),
            e["specs"],
            data.out_dim,
            EncoderSpec(**e["spec"]),
            cfg.projector,
            e["checkpoint"],
            device,
        )
    if data.kind == "embed":
        return None  # fit_projector builds and standardises its own projector
    torch.manual_seed(cfg.projector.seed)
    dims = {b.session: b.x.shape[1] for b in train}
    return set_normalizers(AlignProjector(dims, data.out_dim, cfg.projector), train)


def _split(data: TaskData, name: str) -> AlignmentSplit:
    blocks = [
        Block(b.session, b.x, np.asarray(b.target, np.float32), b.stimulus_id, np.ones(len(b), np.int64), b.cells)
        for b in data.splits[name]
    ]
    return AlignmentSplit(name, blocks)


def _with_layouts(data: TaskData, layouts: dict[str, VolumeLayout]) -> TaskData | None:
    """The task restricted to sessions whose features are exactly their voxels (one feature per coordinate)."""

    def ok(b: TaskBlock) -> bool:
        return b.session in layouts and b.x.shape[1] == len(layouts[b.session].flat)

    splits = {k: [b for b in v if ok(b)] for k, v in data.splits.items()}
    if not splits["train"]:
        return None
    return TaskData(data.task, data.kind, splits, data.names, data.mean, data.std, data.counts)


def _score(res: DecoderResult, data: TaskData, preds: list[np.ndarray], reliability: dict, cfg: DecodeConfig) -> None:
    per = {}
    curves = []
    for b, p in zip(data.splits["test"], preds, strict=True):
        if len(b) < 2:
            continue
        if data.kind == "class":
            s = concept_scores(p, b.target, cfg.topk)
            curves.append(s.pop("curve"))
        elif data.kind == "regress":
            y, pred = b.target * data.std + data.mean, p * data.std + data.mean
            s = property_scores(y, pred, data.names, reliability)
        else:
            s = embedding_scores(p, b.target, cfg.subset_candidates, cfg.subset_draws, cfg.net.seed)
        per[b.session] = s
    res.sessions = per
    res.mean = mean_over_sessions(per)
    if data.kind == "regress":
        res.properties = mean_properties(per)
    if curves:
        k = min(len(c) for c in curves)
        res.curve = np.mean([c[:k] for c in curves], axis=0).tolist()


def _attention(model: VolumeDecoder, blocks: list[TaskBlock]) -> dict[str, float]:
    device = next(model.parameters()).device
    shares: dict[str, list[float]] = {}
    for b in blocks:
        for region, v in model.attention_shares(torch.as_tensor(b.x, device=device), b.session).items():
            shares.setdefault(region, []).append(v)
    return {r: float(np.mean(v)) for r, v in sorted(shares.items())}
