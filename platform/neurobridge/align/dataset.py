"""Alignment examples from the token store: one response vector per stimulus presentation, joined to its image's
embedding, split by stimulus id.

Each region is read in its own response window (TVSD: V1 25-125, V4 50-150, IT 75-175 ms), so later areas are
not diluted by the time before their latency. Rows are streamed in Arrow batches and reduced to pooled features
at once; only the pooled features are kept. Training keeps every presentation (repeats act as noise
augmentation); validation and test average the repeats of each stimulus, as the TVSD and MindEye evaluations do.
Splits are by stimulus id, and a stimulus that would land in two splits is refused, not silently reassigned.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from neurobridge.align.config import WINDOW_PRESETS, AlignDataConfig
from neurobridge.align.embeddings import EmbeddingTable, resolve_source
from neurobridge.config import Settings, get_settings
from neurobridge.store.read import Source, iter_local, sources

SPLITS = ("train", "val", "test")
COLUMNS = [
    "dataset",
    "session",
    "subject",
    "task",
    "split",
    "stimulus_id",
    "n_units",
    "n_bins",
    "counts",
    "mua",
    "unit_ids",
    "unit_regions",
]


class AlignDataError(ValueError):
    """The token store or the embeddings cannot make alignment examples; the message names what and where."""


class LeakageError(AlignDataError):
    """A stimulus would be in more than one split (an image seen in training would be tested on)."""


class MissingEmbeddings(AlignDataError):
    """More stimuli than allowed have no embedding."""


class DimensionMismatch(AlignDataError):
    """The embedding table's dimension is not the one expected (by the config or a trained projector)."""


@dataclass
class SessionInfo:
    key: str  # "<dataset>/<session>"
    unit_ids: np.ndarray  # selected units, in feature order
    feature_regions: np.ndarray  # region of each feature
    windows: dict[str, tuple[float, float]]  # region → window used (ms)
    cells: int  # token-grid cells (units × bins) read per presentation
    cells_by_region: dict[str, int] = field(default_factory=dict)
    unit_regions: np.ndarray | None = None  # region of each selected unit
    bins: dict[str, np.ndarray] = field(default_factory=dict)  # region → bin indices of its window
    context: dict | None = None  # raw mode: session/subject/task/dataset, n_bins, is_counts (encoder input rows)

    @property
    def n_features(self) -> int:
        return len(self.feature_regions)


@dataclass
class Block:
    """One session's examples of one split."""

    session: str
    x: np.ndarray  # [n, features] float32
    y: np.ndarray  # [n, dim] float32 target embeddings
    stimulus_id: np.ndarray  # [n]
    n_repeats: np.ndarray  # [n] presentations averaged into each example
    cells: int = 0  # token-grid cells behind one presentation (for tokens/s)

    def __len__(self) -> int:
        return len(self.stimulus_id)


@dataclass
class AlignmentSplit:
    name: str
    blocks: list[Block]

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks)

    @property
    def stimuli(self) -> set[str]:
        return {s for b in self.blocks for s in b.stimulus_id.tolist()}


@dataclass
class AlignmentData:
    train: AlignmentSplit
    val: AlignmentSplit
    test: AlignmentSplit
    sessions: dict[str, SessionInfo]
    embeddings: EmbeddingTable
    regions: list[str] | None
    counts: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.embeddings.dim

    def split(self, name: str) -> AlignmentSplit:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def select_regions(self, regions: list[str] | None) -> AlignmentData:
        """The same examples restricted to the features of ``regions`` (None: all); sessions without any
        unit there are left out. Lets one read of the store serve every region subset."""
        if regions is None:
            return self
        keep: dict[str, np.ndarray] = {}
        sessions = {}
        for k, info in self.sessions.items():
            mask = np.isin(info.feature_regions, regions)
            if mask.any():
                keep[k] = mask
                units = np.isin(info.unit_regions, regions)
                cells = sum(n for r, n in info.cells_by_region.items() if r in regions)
                sessions[k] = SessionInfo(
                    k,
                    info.unit_ids[units],
                    info.feature_regions[mask],
                    {r: w for r, w in info.windows.items() if r in regions},
                    cells,
                    {r: n for r, n in info.cells_by_region.items() if r in regions},
                    info.unit_regions[units],
                    {r: b for r, b in info.bins.items() if r in regions},
                    info.context,
                )
        if not keep:
            raise AlignDataError(f"no session has units in regions {regions}")

        def sub(sp: AlignmentSplit) -> AlignmentSplit:
            return AlignmentSplit(
                sp.name,
                [
                    Block(
                        b.session, b.x[:, keep[b.session]], b.y, b.stimulus_id, b.n_repeats, sessions[b.session].cells
                    )
                    for b in sp.blocks
                    if b.session in keep
                ],
            )

        return AlignmentData(
            sub(self.train),
            sub(self.val),
            sub(self.test),
            sessions,
            self.embeddings,
            regions,
            {**self.counts, "regions": regions},
        )


# ---------------------------------------------------------------------------------------------------- windows


def region_windows(dataset: str, cfg: AlignDataConfig, regions: list[str]) -> dict[str, tuple[float, float]]:
    """region → window (ms) for the regions present; regions without a window are left out (or get the default)."""
    table = cfg.windows if cfg.windows is not None else WINDOW_PRESETS.get(dataset)
    if table is None and cfg.default_window is None:
        raise AlignDataError(
            f"no response windows for dataset {dataset!r}: set data.windows (region → [start_ms, stop_ms]) or "
            f"data.default_window; presets exist for {sorted(WINDOW_PRESETS)}"
        )
    out = {}
    for r in regions:
        w = (table or {}).get(r, cfg.default_window)
        if w is not None and (cfg.regions is None or r in cfg.regions):
            out[r] = (float(w[0]), float(w[1]))
    return out


def window_bins(window: tuple[float, float], n_bins: int, bin_ms: float, pre_ms: float) -> np.ndarray:
    """Bins whose centre lies in [start, stop) ms after onset (rows start ``pre_ms`` before onset)."""
    centres = (np.arange(n_bins) + 0.5) * bin_ms - pre_ms
    return np.flatnonzero((centres >= window[0]) & (centres < window[1]))


# ---------------------------------------------------------------------------------------------------- features


def _values(column: pa.Array, rows: np.ndarray, length: int) -> np.ndarray:
    """[len(rows), length] from a list column, gathered by offsets (no Python loop over cells)."""
    flat = column.values.to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    idx = offsets[rows][:, None] + np.arange(length)[None, :]
    return flat[idx].astype(np.float32, copy=False)


@dataclass
class _SessionPlan:
    info: SessionInfo
    unit_ids: list[str]
    gather: list[tuple[np.ndarray, np.ndarray]]  # per region: (unit indices, bin indices)
    shape: tuple[int, int]
    unit_regions: np.ndarray  # every unit's region (the encoder pools region-pure tokens)
    windows: list[tuple[str, np.ndarray]]  # (region, bin indices) in feature order


class _Accumulator:
    """Pooled features per presentation, per session (only pooled values are kept). In raw mode (an encoder
    trained with the projector) the selected units' whole windows are kept instead, ``[units × bins]`` flat."""

    def __init__(self, cfg: AlignDataConfig, encoder=None):
        self.cfg = cfg
        self.encoder = encoder  # EncoderFeatures or None
        self.raw = cfg.encoder is not None and cfg.encoder.trainable
        self.plans: dict[str, _SessionPlan | None] = {}
        self.x: dict[str, list[np.ndarray]] = defaultdict(list)
        self.stim: dict[str, list[np.ndarray]] = defaultdict(list)
        self.split: dict[str, list[np.ndarray]] = defaultdict(list)
        self.counts = {"rows": 0, "rows_without_stimulus": 0, "sessions_without_regions": []}

    def plan(self, src: Source, session: str, batch: pa.RecordBatch, row: int) -> _SessionPlan | None:
        key = f"{src.name}/{session}"
        if key in self.plans:
            return self.plans[key]
        ingest = src.ref.card.ingest
        bin_ms, pre_ms = float(ingest.bin_ms), float(ingest.window.pre_s) * 1000.0
        n_units, n_bins = int(batch.column("n_units")[row].as_py()), int(batch.column("n_bins")[row].as_py())
        units = np.array(batch.column("unit_ids")[row].as_py(), dtype=str)
        regions = np.array(batch.column("unit_regions")[row].as_py(), dtype=str)
        present = list(dict.fromkeys(regions.tolist()))
        wins = region_windows(src.name, self.cfg, present)
        gather, feat_regions, unit_sel, cells, by_region = [], [], [], 0, {}
        for r, w in wins.items():
            bins = window_bins(w, n_bins, bin_ms, pre_ms)
            if len(bins) == 0:
                lo, hi = -pre_ms, n_bins * bin_ms - pre_ms
                raise AlignDataError(
                    f"{key}: window {w} ms for {r} holds no bin of the rows ({lo:g}..{hi:g} ms, {bin_ms:g} ms bins)"
                )
            u = np.flatnonzero(regions == r)
            gather.append((u, bins))
            if self.raw:
                feat_regions.append(np.repeat(r, len(u) * n_bins))
            elif self.encoder is not None:
                feat_regions.append(np.repeat(r, self.encoder.dim))
            else:
                per_unit = 1 if self.cfg.pool == "mean" else len(bins)
                feat_regions.append(np.repeat(r, len(u) * per_unit))
            unit_sel.append(units[u])
            cells += len(u) * len(bins)
            by_region[r] = len(u) * len(bins)
        if not gather:
            self.counts["sessions_without_regions"].append(key)
            self.plans[key] = None
            return None
        unit_regions = np.concatenate([np.repeat(r, len(u)) for (u, _), r in zip(gather, wins, strict=True)])
        windows = [(r, bins) for (_, bins), r in zip(gather, wins, strict=True)]
        context = None
        if self.raw:
            context = {f: batch.column(f)[row].as_py() for f in ("session", "subject", "task", "dataset")}
            context["n_bins"] = n_bins
            context["is_counts"] = bool(batch.column("counts").is_valid().to_numpy(zero_copy_only=False)[row])
        info = SessionInfo(
            key,
            np.concatenate(unit_sel),
            np.concatenate(feat_regions),
            wins,
            cells,
            by_region,
            unit_regions,
            dict(windows),
            context,
        )
        plan = _SessionPlan(info, units.tolist(), gather, (n_units, n_bins), regions, windows)
        self.plans[key] = plan
        return plan

    def add(self, src: Source, batch: pa.RecordBatch) -> None:
        n = batch.num_rows
        self.counts["rows"] += n
        stim = batch.column("stimulus_id").to_numpy(zero_copy_only=False)
        has = np.array([s is not None for s in stim])
        self.counts["rows_without_stimulus"] += int((~has).sum())
        sessions = batch.column("session").to_numpy(zero_copy_only=False)
        splits = batch.column("split").to_numpy(zero_copy_only=False)
        counts_col, mua_col = batch.column("counts"), batch.column("mua")
        for session in np.unique(sessions[has]):
            rows = np.flatnonzero((sessions == session) & has)
            plan = self.plan(src, session, batch, int(rows[0]))
            if plan is None:
                continue
            key = plan.info.key
            U, B = plan.shape
            n_units = batch.column("n_units").to_numpy()[rows]
            if (n_units != U).any() or batch.column("unit_ids")[int(rows[0])].as_py() != plan.unit_ids:
                raise AlignDataError(f"{key}: rows of this session do not share one unit list ({U} units first)")
            is_counts = counts_col.is_valid().to_numpy(zero_copy_only=False)[rows]
            col = counts_col if is_counts.all() else mua_col
            if not is_counts.all() and is_counts.any():
                raise AlignDataError(f"{key}: session mixes counts and MUA rows")
            if self.raw:
                order = np.concatenate([u for u, _ in plan.gather])
                x = _values(col, rows, U * B).reshape(len(rows), U, B)[:, order].reshape(len(rows), -1)
            elif self.encoder is not None:
                x = self.encoder(_row_dicts(batch, rows), plan.unit_regions, plan.windows)
            else:
                grid = _values(col, rows, U * B).reshape(len(rows), U, B)
                feats = []
                for units, bins in plan.gather:
                    part = grid[:, units][:, :, bins]
                    feats.append(part.mean(axis=2) if self.cfg.pool == "mean" else part.reshape(len(rows), -1))
                x = np.concatenate(feats, axis=1)
                if is_counts.all() and self.cfg.transform != "none":
                    x = np.sqrt(x) if self.cfg.transform == "sqrt" else np.log1p(x)
            self.x[key].append(x.astype(np.float32))
            self.stim[key].append(stim[rows].astype(str))
            self.split[key].append(splits[rows].astype(str))


def _row_dicts(batch: pa.RecordBatch, rows: np.ndarray) -> list[dict]:
    from neurobridge.store.rows import table_rows

    return table_rows(pa.Table.from_batches([batch.take(pa.array(rows))]))


# ---------------------------------------------------------------------------------------------------- splits


def _hash_unit(ids: np.ndarray, salt: str) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{salt}|{s}".encode(), digest_size=8).digest(), "big") / 2**64 for s in ids]
    )


def assign_splits(stimuli: np.ndarray, store_split: dict[str, set[str]], cfg: AlignDataConfig) -> dict[str, str]:
    """stimulus id → split. ``store``: the store's label, refusing ids labelled differently in different rows;
    ``hash``: a salted hash of the id (exact counts with n_test / n_val: the smallest hashes)."""
    spec = cfg.split
    if spec.rule == "store":
        clash = sorted(s for s, labels in store_split.items() if len(labels & set(SPLITS)) > 1)
        if clash:
            raise LeakageError(
                f"{len(clash)} stimuli are in more than one split of the token store (e.g. "
                f"{', '.join(f'{s}: {sorted(store_split[s])}' for s in clash[:3])}); re-split with split.rule: hash"
            )
        return {s: next(iter(labels)) for s, labels in store_split.items()}
    uniq = np.unique(stimuli)
    u = _hash_unit(uniq, spec.salt)
    order = np.argsort(u, kind="stable")
    n = len(uniq)
    n_test = spec.n_test if spec.n_test is not None else int(round(spec.test_fraction * n))
    n_val = spec.n_val if spec.n_val is not None else int(round(spec.val_fraction * n))
    if n_test + n_val >= n:
        raise AlignDataError(f"{n_test} test + {n_val} val stimuli leave none of the {n} stimuli for training")
    labels = np.full(n, "train", dtype=object)
    labels[order[:n_test]] = "test"
    labels[order[n_test : n_test + n_val]] = "val"
    return dict(zip(uniq.tolist(), labels.tolist(), strict=True))


def assert_no_leak(*splits: AlignmentSplit) -> None:
    """Refuse any stimulus id present in two splits (across all sessions and datasets)."""
    seen: dict[str, str] = {}
    for sp in splits:
        for s in sp.stimuli:
            other = seen.setdefault(s, sp.name)
            if other != sp.name:
                raise LeakageError(
                    f"stimulus {s!r} is in both {other} and {sp.name}; an image seen in training "
                    "must never be tested on"
                )


def _average(x: np.ndarray, stim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    uniq, inv, counts = np.unique(stim, return_inverse=True, return_counts=True)
    sums = np.zeros((len(uniq), x.shape[1]), dtype=np.float64)
    np.add.at(sums, inv, x)
    return (sums / counts[:, None]).astype(np.float32), uniq, counts


# ---------------------------------------------------------------------------------------------------- build


def build_alignment_data(
    cfg: AlignDataConfig, settings: Settings | None = None, embeddings: EmbeddingTable | None = None
) -> AlignmentData:
    """Read the datasets' rows, pool them per presentation, join embeddings and split by stimulus id."""
    settings = settings or get_settings()
    table = embeddings if embeddings is not None else resolve_source(cfg.embeddings, settings)
    if cfg.expected_dim is not None and table.dim != cfg.expected_dim:
        raise DimensionMismatch(
            f"embedding table {table.model or cfg.embeddings.name} has dimension {table.dim}, "
            f"but data.expected_dim is {cfg.expected_dim}"
        )
    encoder = None
    if cfg.encoder is not None and not cfg.encoder.trainable:
        from neurobridge.align.encoder import EncoderFeatures

        encoder = EncoderFeatures(cfg.encoder, settings)
    acc = _Accumulator(cfg, encoder)
    for src in sources(settings, cfg.datasets):
        for batch in iter_local(settings, src, None, COLUMNS, cfg.batch_rows):
            acc.add(src, batch)
    if acc.counts["rows"] and acc.counts["rows_without_stimulus"] == acc.counts["rows"]:
        raise AlignDataError(f"{', '.join(cfg.datasets)}: no row has a stimulus_id; alignment needs visual datasets")
    keys = [k for k in acc.x if acc.x[k]]
    if not keys:
        regions = f"regions {cfg.regions}" if cfg.regions else "any region with a window"
        raise AlignDataError(f"no session of {', '.join(cfg.datasets)} has units in {regions}")
    x = {k: np.concatenate(acc.x[k]) for k in keys}
    stim = {k: np.concatenate(acc.stim[k]) for k in keys}
    store_split = defaultdict(set)
    for k in keys:
        for s, sp in zip(stim[k].tolist(), np.concatenate(acc.split[k]).tolist(), strict=True):
            store_split[s].add(sp)
    all_stim = np.array(sorted(store_split))
    idx, found = table.lookup(all_stim)
    missing = all_stim[~found]
    if len(missing) > cfg.max_missing_fraction * len(all_stim):
        raise MissingEmbeddings(
            f"{len(missing)} of {len(all_stim)} stimuli have no embedding in {table.model or 'the table'} "
            f"(max_missing_fraction {cfg.max_missing_fraction}); e.g. {missing[:3].tolist()}"
        )
    have = set(all_stim[found].tolist())
    split_of = assign_splits(all_stim[found], {s: v for s, v in store_split.items() if s in have}, cfg)
    parts: dict[str, list[Block]] = {s: [] for s in SPLITS}
    dropped_presentations = 0
    for k in keys:
        keep = np.isin(stim[k], missing, invert=True)
        dropped_presentations += int((~keep).sum())
        xs, ss = x[k][keep], stim[k][keep]
        labels = np.array([split_of.get(s, "none") for s in ss.tolist()])
        for name in SPLITS:
            sel = labels == name
            if not sel.any():
                continue
            if name == "train" and not cfg.train_average_repeats:
                bx, bs, br = xs[sel], ss[sel], np.ones(int(sel.sum()), np.int64)
            else:
                bx, bs, br = _average(xs[sel], ss[sel])
            rows, _ = table.lookup(bs)
            parts[name].append(Block(k, bx, table.vectors[rows], bs, br, acc.plans[k].info.cells))
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
