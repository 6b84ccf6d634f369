"""Training-side reading of the token store: dataset versions and mixtures → rows, with dataset mixing weights.

Reading goes through the card (``_dataset.json``), never a directory listing, so a version being written (no card
yet) or a side table (``units/``) is never read as rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neurobridge.config import Settings
from neurobridge.storage import StoreError, filesystem, join
from neurobridge.store.mixtures import read_mixture
from neurobridge.store.versions import DatasetRef, resolve_dataset

MIXING_RULES = ("sqrt", "proportional", "uniform")


@dataclass
class Source:
    """One dataset version as training sees it."""

    ref: DatasetRef
    files: list[str]  # absolute URIs of the row parts

    @property
    def name(self) -> str:
        return self.ref.dataset

    @property
    def bin_ms(self) -> float:
        return self.ref.card.bin_ms

    def rows(self, split: str | None = None) -> int:
        return self.ref.card.split_rows(split)


class PartialDataError(StoreError):
    """A dataset version some of whose items failed, named where the config did not allow partial data."""


def sources(
    settings: Settings, datasets: list[str] | None = None, mixture: str | None = None, allow_partial: bool = False
) -> list[Source]:
    """Sources named by dataset refs (``name`` or ``name@version``) and/or a mixture name.

    A version with failed items is refused unless ``allow_partial``: training, alignment or evaluation on part of
    a source must be a decision (``allow_partial: true``, recorded in the run), never an accident of a flaky ingest.
    """
    refs = list(datasets or [])
    if mixture:
        refs += [d.ref for d in read_mixture(settings, mixture).datasets]
    if not refs:
        raise StoreError("name at least one dataset or a mixture to train on")
    out = []
    for r in refs:
        ref = resolve_dataset(settings, r)
        files = [join(ref.path, f) for f in ref.card.files]
        if not files:
            raise StoreError(f"{ref.dataset}@{ref.version} has no rows (all items failed or were empty)")
        out.append(Source(ref, files))
    partial = [s.ref for s in out if s.ref.card.partial]
    if partial and not allow_partial:
        raise PartialDataError(
            "partial dataset version(s): "
            + "; ".join(f"{r.ref}: {partial_note(r.card)}" for r in partial)
            + ". Rerun the ingest to retry the failed items (`neurobridge inspect <dataset>` lists why they failed), "
            "or set allow_partial: true (data.allow_partial in training and alignment configs, --allow-partial for "
            "evaluate) to use the items that succeeded; the run then records the failed count"
        )
    return out


def partial_note(card) -> str:
    """ "2 of 5 items failed (first: <item>: <reason>)" for a partial version's card."""
    c = card.counts
    first = card.failed[0] if card.failed else None
    why = f" (first: {first.item}: {(first.error or '')[:160]})" if first else ""
    return f"{c.items_failed} of {c.items} items failed{why}"


def unit_columns(settings: Settings, src: Source, key: str | None) -> dict[str, dict[str, object]]:
    """session → store unit id → ``key`` (e.g. ``heldout``, ``raw_id``; None: the unit id itself) from the dataset's
    ``units/`` side table; empty for datasets without one. Null values are left out."""
    info = src.ref.card.side_outputs.get("units")
    out: dict[str, dict[str, object]] = {}
    for rel in info.files if info is not None else []:
        fs, path = filesystem(join(src.ref.path, rel), settings)
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["session", "unit_id"] + ([key] if key else []))
        cols = [t.column(c).to_pylist() for c in t.column_names]
        for sess, uid, value in zip(cols[0], cols[1], cols[-1], strict=True):
            if value is not None:
                out.setdefault(sess, {})[uid] = value
    return out


def one_bin_width(srcs: list[Source]) -> float:
    """The bin width every source shares, or an error naming each dataset's: a model has one bin size."""
    widths = {s.ref.ref: s.bin_ms for s in srcs}
    if len(set(widths.values())) > 1:
        listed = ", ".join(f"{r} {w:g} ms" for r, w in widths.items())
        raise StoreError(
            f"these datasets have different bin widths ({listed}): a model's time axis has one bin size; "
            "train on datasets ingested at one bin_ms (set ingest.bin_ms in their catalog entries)"
        )
    return next(iter(widths.values()))


def mixing_weights(rows: dict[str, int], rule: str = "sqrt") -> dict[str, float]:
    """Sampling weight per dataset: ``sqrt`` (∝ √N, so big datasets do not drown small ones), ``proportional``
    (∝ N: every row equally likely) or ``uniform`` (each dataset equally)."""
    if rule not in MIXING_RULES:
        raise ValueError(f"mixing rule {rule!r} is not one of {MIXING_RULES}")
    n = np.array([max(int(v), 0) for v in rows.values()], dtype=np.float64)
    if n.sum() == 0:
        raise StoreError(f"no rows to mix in {list(rows)}")
    raw = {"sqrt": np.sqrt(n), "proportional": n, "uniform": (n > 0).astype(float)}[rule]
    return dict(zip(rows, raw / raw.sum(), strict=True))


def epoch_plan(rows: dict[str, int], rule: str, epoch_rows: int | None = None) -> dict[str, float]:
    """Rows drawn from each dataset per epoch, as a multiple of its size (> 1: the dataset repeats)."""
    weights = mixing_weights(rows, rule)
    total = epoch_rows or sum(rows.values())
    return {k: (total * w / rows[k] if rows[k] else 0.0) for k, w in weights.items()}


def iter_local(
    settings: Settings, src: Source, split: str | None, columns: list[str] | None = None, batch_rows: int = 256
) -> Iterator[pa.RecordBatch]:
    """Rows of one source without Ray (evaluation, the plain-PyTorch reference loop), streamed in batches."""
    for uri in src.files:
        fs, path = filesystem(uri, settings)
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns):
                if split is not None:
                    batch = batch.filter(pc.equal(batch.column("split"), split))
                if batch.num_rows:
                    yield batch


def _uniform(sample_ids, salt: str) -> np.ndarray:
    """One number in [0, 1) per sample id from a hash of (salt, id): the same on any worker, run or machine."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{salt}\x1f{s}".encode(), digest_size=8).digest(), "big") / 2.0**64
            for s in sample_ids
        ),
        dtype=np.float64,
        count=len(sample_ids),
    )


def repeats(sample_ids, factor: float, seed: int) -> np.ndarray:
    """How many times each row appears in an epoch drawn with ``factor`` (its dataset's multiple).

    Whole multiples repeat every row; the fractional part keeps each row with that probability, decided by a hash
    of (seed, sample id), so a rerun (or a resumed run) draws exactly the same rows on any worker.
    """
    whole, frac = int(factor), factor - int(factor)
    out = np.full(len(sample_ids), whole, dtype=np.int64)
    if frac > 1e-9:
        out += _uniform(sample_ids, str(seed)) < frac
    return out


def kept(sample_ids, fraction: float) -> np.ndarray:
    """Which rows a dataset trained on ``fraction`` of its rows keeps (``data.train_fraction``): a hash of the sample
    id alone, not of the seed, so a smaller fraction keeps a subset of a larger one's rows and a data-scaling curve
    varies the data while a seed varies everything else."""
    return _uniform(sample_ids, "keep") < fraction


def mix_rows(
    batch: pa.Table, factors: dict[str, float], seed: int, exclude: frozenset, fractions: dict[str, float] | None = None
) -> pa.Table:
    ids = batch.column("sample_id").to_pylist()
    names = np.asarray(batch.column("dataset").to_pylist(), dtype=object)
    n = np.zeros(len(ids), dtype=np.int64)
    for name in set(names):
        rows = np.flatnonzero(names == name)
        row_ids = [ids[i] for i in rows]
        n[rows] = repeats(row_ids, factors.get(name, 0.0), seed)
        if fractions and name in fractions:
            n[rows[~kept(row_ids, fractions[name])]] = 0
    if exclude:
        n[np.isin(np.array(batch.column("session").to_pylist(), dtype=object), list(exclude))] = 0
    return batch.take(pa.array(np.repeat(np.arange(len(ids)), n)))


@dataclass(frozen=True)
class Mixing:
    """How the datasets of a training read are mixed into one epoch: ``rule`` weights them (``MIXING_RULES``),
    ``epoch_rows`` sizes the epoch (None: all rows), ``seed`` fixes which rows repeat or drop, and
    ``exclude_sessions`` never appear (sessions held out for evaluation or fine-tuning). ``fractions``
    (dataset → share) train on part of a dataset's rows (``kept``), weighted as a dataset of that many rows."""

    rule: str = "sqrt"
    epoch_rows: int | None = None
    seed: int = 0
    exclude_sessions: frozenset[str] = frozenset()
    fractions: dict[str, float] = field(default_factory=dict)


def planned_rows(srcs: list[Source], split: str | None, fractions: dict[str, float]) -> dict[str, int]:
    """Rows each dataset brings to the epoch: its ``split`` rows, times the share of them it keeps (``kept``)."""
    return {s.name: int(round(s.rows(split) * fractions.get(s.name, 1.0))) for s in srcs}


def ray_dataset(
    settings: Settings,
    srcs: list[Source],
    split: str | None,
    mixing: Mixing = Mixing(),
    columns: list[str] | None = None,
):
    """One Ray Dataset over the sources' ``split`` rows, mixed as ``mixing`` says (rows repeat or are subsampled).

    One streaming read and one map, no global shuffle: file order is randomised by seed and the trainer's local
    shuffle buffer mixes rows, so an epoch costs one pass over the Parquet parts.
    """
    import ray.data

    one_bin_width(srcs)
    plan = epoch_plan(planned_rows(srcs, split, mixing.fractions), mixing.rule, mixing.epoch_rows)
    files = [u for s in srcs if plan[s.name] > 0 for u in s.files]
    if not files:
        raise StoreError(f"no {split} rows in {[s.name for s in srcs]}")
    fs, _ = filesystem(files[0], settings)
    cols = None if columns is None else list(dict.fromkeys([*columns, "dataset", "session", "sample_id", "split"]))
    paths = [filesystem(u, settings)[1] for u in files]
    # streaming: file order randomised (the same each epoch, so a resumed run replays it), no all-to-all barrier
    shuffle = ray.data.FileShuffleConfig(seed=mixing.seed, reseed_after_execution=False)
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=cols, shuffle=shuffle)
    if split is not None:
        ds = ds.filter(expr=f"split == '{split}'")
    return ds.map_batches(
        mix_rows,
        fn_kwargs={
            "factors": plan,
            "seed": mixing.seed,
            "exclude": frozenset(mixing.exclude_sessions),
            "fractions": mixing.fractions,
        },
        batch_format="pyarrow",
    )
