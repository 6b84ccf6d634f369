"""Decoding examples from the token store: alignment's stimulus-level examples, labelled per task.

``align.dataset.build_alignment_data`` does the reading (each region in its response window, pooled; one-bin rows
such as fMRI betas as they are), the split by stimulus id (no image in two splits) and the repeat averaging
(training keeps every presentation; val and test average each image's repeats). This module attaches what each
task predicts: the concept class, the standardised property ratings, or the image embedding, and drops (and counts)
examples without a label. Volume decoders also get each session's voxel coordinates from the ``units`` table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neurobridge.align.dataset import build_alignment_data
from neurobridge.align.embeddings import EmbeddingTable, resolve_source
from neurobridge.align.examples import AlignDataError, AlignmentData, AlignmentSplit
from neurobridge.config import Settings
from neurobridge.decode.config import DecodeConfig
from neurobridge.decode.labels import Labels
from neurobridge.store.read import Source, iter_local, unit_columns

KINDS = {"concept": "class", "properties": "regress", "retrieval": "embed"}


@dataclass
class TaskBlock:
    """One session's examples of one split for one task."""

    session: str
    x: np.ndarray  # [n, features] float32
    target: np.ndarray  # class index [n] int64, or [n, k] float32
    stimulus_id: np.ndarray
    cells: int = 0

    def __len__(self) -> int:
        return len(self.stimulus_id)


@dataclass
class TaskData:
    task: str
    kind: str  # class | regress | embed
    splits: dict[str, list[TaskBlock]]
    names: list[str] = field(default_factory=list)  # class names (concepts) or property names
    mean: np.ndarray | None = None  # regress: training mean/std the targets were standardised with
    std: np.ndarray | None = None
    counts: dict = field(default_factory=dict)

    @property
    def out_dim(self) -> int:
        if self.kind == "class":
            return len(self.names)
        return int(self.splits["train"][0].target.shape[1])

    def sessions(self) -> list[str]:
        return sorted({b.session for b in self.splits["train"]})


def placeholder_embeddings(settings: Settings, srcs: list[Source]) -> EmbeddingTable:
    """A one-dimensional table over every stimulus of the datasets, for tasks that need no embedding (the reading
    joins examples to a table by stimulus id)."""
    ids: set[str] = set()
    for src in srcs:
        for batch in iter_local(settings, src, None, ["stimulus_id", "split"], 4096):
            ids.update(s for s in batch.column("stimulus_id").to_pylist() if s is not None)
    if not ids:
        raise AlignDataError(f"{', '.join(s.name for s in srcs)}: no row has a stimulus_id; decoding needs stimuli")
    return EmbeddingTable(np.array(sorted(ids)), np.zeros((len(ids), 1), np.float32))


def embedding_table(cfg: DecodeConfig, settings: Settings, srcs: list[Source]) -> EmbeddingTable:
    if cfg.data.embeddings is not None:
        return resolve_source(cfg.data.embeddings, settings)
    return placeholder_embeddings(settings, srcs)


def read_examples(cfg: DecodeConfig, settings: Settings, table: EmbeddingTable, encoder: bool) -> AlignmentData:
    """Stimulus-level examples: pooled responses, or (``encoder``) what the configured encoder needs."""
    data_cfg = cfg.data.model_copy(update={"encoder": cfg.encoder}) if encoder else cfg.data
    return build_alignment_data(data_cfg, settings, table)


def to_task(data: AlignmentData, labels: Labels, task: str, cfg: DecodeConfig) -> TaskData:
    """The examples of ``data`` labelled for ``task`` (unlabelled ones dropped and counted)."""
    kind = KINDS[task]
    out = TaskData(task, kind, {s: [] for s in ("train", "val", "test")})
    if kind == "class":
        concepts = labels.concepts(np.concatenate([b.stimulus_id for b in data.train.blocks]))
        names, counts = np.unique(concepts, return_counts=True)
        out.names = names[counts >= cfg.labels.min_class_examples].tolist()
    elif kind == "regress":
        out.names = labels.property_names
    for split in ("train", "val", "test"):
        blocks, dropped = _label(data.split(split), labels, out)
        out.splits[split] = blocks
        out.counts[f"{split}_unlabelled"] = dropped
    if not out.splits["train"]:
        raise AlignDataError(f"{task}: no labelled training example")
    if kind == "regress":
        _standardise(out)
    return out


def _label(split: AlignmentSplit, labels: Labels, out: TaskData) -> tuple[list[TaskBlock], int]:
    blocks, dropped = [], 0
    index = {c: i for i, c in enumerate(out.names)}
    for b in split.blocks:
        if out.kind == "class":
            target = np.array([index.get(c, -1) for c in labels.concepts(b.stimulus_id).tolist()], dtype=np.int64)
            keep = target >= 0
        elif out.kind == "regress":
            target, keep = labels.properties(b.stimulus_id)
        else:
            target, keep = b.y, np.ones(len(b), bool)
        dropped += int((~keep).sum())
        if keep.any():
            blocks.append(TaskBlock(b.session, b.x[keep], target[keep], b.stimulus_id[keep], b.cells))
    return blocks, dropped


def _standardise(out: TaskData) -> None:
    """Targets in training-set units, so every property weighs the same in the loss."""
    y = np.concatenate([b.target for b in out.splits["train"]])
    out.mean, std = y.mean(axis=0), y.std(axis=0)
    out.std = np.where(std > 1e-8, std, 1.0)
    for blocks in out.splits.values():
        for b in blocks:
            b.target = ((b.target - out.mean) / out.std).astype(np.float32)


def coordinates(settings: Settings, srcs: list[Source]) -> dict[str, dict[str, tuple[int, int, int]]]:
    """``<dataset>/<session>`` → unit id → voxel (x, y, z), from ``units`` tables that have coordinates (fMRI)."""
    out: dict[str, dict[str, tuple[int, int, int]]] = {}
    for src in srcs:
        info = src.ref.card.side_outputs.get("units")
        if info is None:
            continue
        try:
            axes = [unit_columns(settings, src, a) for a in "xyz"]
        except (KeyError, ValueError, OSError):
            continue  # a units table without coordinates (spike datasets)
        for session, xs in axes[0].items():
            ys, zs = axes[1].get(session, {}), axes[2].get(session, {})
            out[f"{src.name}/{session}"] = {u: (int(x), int(ys[u]), int(zs[u])) for u, x in xs.items() if u in ys}
    return out
