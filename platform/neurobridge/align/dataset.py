"""Alignment examples from the token store: one response vector per stimulus presentation, joined to its image's
embedding, split by stimulus id.

Each region is read in its own response window (TVSD: V1 25-125, V4 50-150, IT 75-175 ms), so later areas are
not diluted by the time before their latency. Rows are streamed in Arrow batches and reduced to pooled features
at once; only the pooled features are kept (``align/responses.py``). Training keeps every presentation (repeats
act as noise augmentation); validation and test average the repeats of each stimulus, as the TVSD and MindEye
evaluations do. Splits are by stimulus id, and a stimulus that would land in two splits is refused, not silently
reassigned (``align/splits.py``). The examples' types are in ``align/examples.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from neurobridge.align.config import AlignDataConfig
from neurobridge.align.embeddings import EmbeddingTable, resolve_source
from neurobridge.align.examples import (
    AlignDataError,
    AlignmentData,
    AlignmentSplit,
    Block,
    DimensionMismatch,
    MissingEmbeddings,
    SessionInfo,
)
from neurobridge.align.responses import ResponseAccumulator
from neurobridge.align.splits import SPLITS, assert_no_leak, assign_splits, average_repeats
from neurobridge.config import Settings, get_settings
from neurobridge.store.read import iter_local, sources
from neurobridge.store.rows import CONTEXT_COLUMNS, GRID_COLUMNS

COLUMNS = [c for c in CONTEXT_COLUMNS if c != "sample_id"] + ["stimulus_id", *GRID_COLUMNS]


def build_alignment_data(
    cfg: AlignDataConfig, settings: Settings | None = None, embeddings: EmbeddingTable | None = None
) -> AlignmentData:
    """Read the datasets' rows, pool them per presentation, join embeddings and split by stimulus id."""
    settings = settings or get_settings()
    table = _embedding_table(cfg, settings, embeddings)
    acc = _read_responses(cfg, settings)
    keys = _sessions_with_examples(cfg, acc)
    x = {k: np.concatenate(acc.x[k]) for k in keys}
    stim = {k: np.concatenate(acc.stim[k]) for k in keys}
    store_split = _store_labels(acc, stim)
    all_stim = np.array(sorted(store_split))
    found = _with_embedding(cfg, table, all_stim)
    missing = all_stim[~found]
    have = set(all_stim[found].tolist())
    split_of = assign_splits(all_stim[found], {s: v for s, v in store_split.items() if s in have}, cfg)
    parts: dict[str, list[Block]] = {s: [] for s in SPLITS}
    dropped_presentations = 0
    for k in keys:
        keep = np.isin(stim[k], missing, invert=True)
        dropped_presentations += int((~keep).sum())
        for name, block in _session_blocks(acc.plans[k].info, x[k][keep], stim[k][keep], split_of, cfg, table):
            parts[name].append(block)
    data = AlignmentData(
        AlignmentSplit("train", parts["train"]),
        AlignmentSplit("val", parts["val"]),
        AlignmentSplit("test", parts["test"]),
        {k: acc.plans[k].info for k in keys},
        table,
        cfg.regions,
    )
    assert_no_leak(data.train, data.val, data.test)
    data.counts = {
        **{k: v for k, v in acc.counts.items()},
        "stimuli": len(all_stim),
        "missing_embeddings": len(missing),
        "missing_examples": missing[:10].tolist(),
        "presentations_without_embedding": dropped_presentations,
        **{f"{s}_examples": len(data.split(s)) for s in SPLITS},
        **{f"{s}_stimuli": len(data.split(s).stimuli) for s in SPLITS},
    }
    if not len(data.train):
        raise AlignDataError(f"no training examples in {', '.join(cfg.datasets)} after the split")
    return data


def _embedding_table(cfg: AlignDataConfig, settings: Settings, embeddings: EmbeddingTable | None) -> EmbeddingTable:
    """The table given, else the configured source; refused when its dimension is not ``expected_dim``."""
    table = embeddings if embeddings is not None else resolve_source(cfg.embeddings, settings)
    if cfg.expected_dim is not None and table.dim != cfg.expected_dim:
        raise DimensionMismatch(
            f"embedding table {table.model or cfg.embeddings.name} has dimension {table.dim}, "
            f"but data.expected_dim is {cfg.expected_dim}"
        )
    return table


def _read_responses(cfg: AlignDataConfig, settings: Settings) -> ResponseAccumulator:
    """Every row of the datasets, reduced per presentation as its batch streams by (a frozen encoder, when the
    config names one, is loaded once here)."""
    encoder = None
    if cfg.encoder is not None and not cfg.encoder.trainable:
        from neurobridge.align.encoder import EncoderFeatures

        encoder = EncoderFeatures(cfg.encoder, settings)
    acc = ResponseAccumulator(cfg, encoder)
    for src in sources(settings, cfg.datasets, allow_partial=cfg.allow_partial):
        for batch in iter_local(settings, src, None, COLUMNS, cfg.batch_rows):
            acc.add(src, batch)
    return acc


def _sessions_with_examples(cfg: AlignDataConfig, acc: ResponseAccumulator) -> list[str]:
    """The sessions that produced examples; an error naming why when none did."""
    if acc.counts["rows"] and acc.counts["rows_without_stimulus"] == acc.counts["rows"]:
        raise AlignDataError(f"{', '.join(cfg.datasets)}: no row has a stimulus_id; alignment needs visual datasets")
    keys = [k for k in acc.x if acc.x[k]]
    if not keys:
        regions = f"regions {cfg.regions}" if cfg.regions else "any region with a window"
        raise AlignDataError(f"no session of {', '.join(cfg.datasets)} has units in {regions}")
    return keys


def _store_labels(acc: ResponseAccumulator, stim: dict[str, np.ndarray]) -> dict[str, set[str]]:
    """stimulus id → every split label the token store gave its presentations (more than one is a leak)."""
    store_split = defaultdict(set)
    for k, ids in stim.items():
        for s, sp in zip(ids.tolist(), np.concatenate(acc.split[k]).tolist(), strict=True):
            store_split[s].add(sp)
    return store_split


def _with_embedding(cfg: AlignDataConfig, table: EmbeddingTable, stimuli: np.ndarray) -> np.ndarray:
    """Which stimuli have an embedding; refused when more than ``max_missing_fraction`` have none."""
    _, found = table.lookup(stimuli)
    missing = stimuli[~found]
    if len(missing) > cfg.max_missing_fraction * len(stimuli):
        raise MissingEmbeddings(
            f"{len(missing)} of {len(stimuli)} stimuli have no embedding in {table.model or 'the table'} "
            f"(max_missing_fraction {cfg.max_missing_fraction}); e.g. {missing[:3].tolist()}"
        )
    return found


def _session_blocks(
    info: SessionInfo,
    x: np.ndarray,
    stim: np.ndarray,
    split_of: dict[str, str],
    cfg: AlignDataConfig,
    table: EmbeddingTable,
) -> Iterator[tuple[str, Block]]:
    """One session's examples per split: training keeps every presentation (unless ``train_average_repeats``);
    val and test average the repeats of each stimulus."""
    labels = np.array([split_of.get(s, "none") for s in stim.tolist()])
    for name in SPLITS:
        sel = labels == name
        if not sel.any():
            continue
        if name == "train" and not cfg.train_average_repeats:
            bx, bs, br = x[sel], stim[sel], np.ones(int(sel.sum()), np.int64)
        else:
            bx, bs, br = average_repeats(x[sel], stim[sel])
        rows, _ = table.lookup(bs)
        yield name, Block(info.key, bx, table.vectors[rows], bs, br, info.cells)


def to_arrow(split: AlignmentSplit) -> pa.Table:
    """One split as a table (session, stimulus_id, x, y) for Ray Data (``ray.data.from_arrow``) in a Train job."""

    def lists(a: np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(
            pa.array(np.arange(len(a) + 1, dtype=np.int32) * a.shape[1]), pa.array(a.ravel(), pa.float32())
        )

    tables = [
        pa.table(
            {
                "session": pa.array([b.session] * len(b), pa.string()),
                "stimulus_id": pa.array(b.stimulus_id, pa.string()),
                "n_repeats": pa.array(b.n_repeats, pa.int32()),
                "x": lists(b.x),
                "y": lists(b.y),
            }
        )
        for b in split.blocks
    ]
    return pa.concat_tables(tables) if tables else pa.table({})
