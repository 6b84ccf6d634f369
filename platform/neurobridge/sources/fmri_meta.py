"""THINGS-fMRI metadata: which voxels a subject's rows keep (ROIs, noise ceiling) and which trials they hold.

``VoxelMetadata.csv``: one row per voxel, in the response table's row order: ``voxel_id``, ``voxel_x/y/z`` (indices
into the subject's volumes), noise ceilings (``nc_singletrial``, ``nc_testset``, percent), pRF columns, and one
dummy-coded column per ROI (``V1``, ``hV4``, ``lFFA``, …, and the ``glasser-*`` parcels). ``StimulusMetadata.csv``:
one row per trial: ``trial_type`` (train/test), ``session``, ``run``, ``trial_id``, ``stimulus`` (the image file),
``concept``. Both are read once per item, by column (``usecols``), so a 211k-voxel file with hundreds of parcel
columns costs only the columns asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from neurobridge.catalog import FmriConfig
from neurobridge.sources.base import SourceError

VOXEL_REQUIRED = ("voxel_id", "voxel_x", "voxel_y", "voxel_z")
NOT_ROI_PREFIXES = ("voxel_", "nc_", "prf", "splithalf", "unnamed")
PARCEL_PREFIX = "glasser-"
TRIAL_REQUIRED = ("trial_type", "session", "run", "trial_id", "stimulus", "concept")
OFFICIAL = ("train", "test")


@dataclass
class Voxels:
    """The selected voxels of one subject, in table row order (``rows``: indices into the metadata rows)."""

    n_total: int
    all_ids: np.ndarray  # [V] int64, every voxel in table row order
    rows: np.ndarray  # [U] int64, ascending
    region: np.ndarray  # [U] str
    xyz: np.ndarray  # [U, 3] int32
    nc_single: np.ndarray  # [U] float32 (NaN when the file has no such column)
    nc_test: np.ndarray
    rois: pa.Array  # [U] list<string>: every ROI column that holds the voxel
    counts: dict

    @property
    def ids(self) -> np.ndarray:
        return self.all_ids[self.rows]


def roi_columns(header: list[str]) -> list[str]:
    """The dummy-coded ROI columns of a VoxelMetadata header (everything that is not a voxel fact)."""
    return [c for c in header if not c.lower().startswith(NOT_ROI_PREFIXES)]


def describe_rois(rois: list[str]) -> str:
    named = [r for r in rois if not r.startswith(PARCEL_PREFIX)]
    parcels = len(rois) - len(named)
    return ", ".join(named) + (f" and {parcels} {PARCEL_PREFIX}* parcels" if parcels else "")


def _read_csv(fs, path: str, **kw) -> pd.DataFrame:
    try:
        with fs.open(path, "rb") as f:
            return pd.read_csv(f, **kw)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise SourceError(f"{path}: unreadable CSV: {err}") from None


def read_voxels(fs, path: str, cfg: FmriConfig) -> Voxels:
    """Voxel ids, the selection (ROIs in priority order, noise-ceiling rule) and each kept voxel's facts."""
    header = list(_read_csv(fs, path, nrows=0).columns)
    missing = [c for c in VOXEL_REQUIRED if c not in header]
    if missing:
        raise SourceError(f"{path}: no {', '.join(missing)} column(s) (is this a THINGS VoxelMetadata file?)")
    rois = roi_columns(header)
    if cfg.rois is not None:
        unknown = [r for r in cfg.rois if r not in rois]
        if unknown:
            raise SourceError(f"{path}: no ROI named {', '.join(map(repr, unknown))}; it has {describe_rois(rois)}")
        wanted = list(cfg.rois)
    else:
        wanted = [r for r in rois if not r.startswith(PARCEL_PREFIX)]
    rule = cfg.noise_ceiling
    if rule.min is not None and rule.column not in header:
        raise SourceError(f"{path}: no noise-ceiling column {rule.column!r} for the noise_ceiling rule")
    nc_cols = [c for c in ("nc_singletrial", "nc_testset", rule.column) if c in header]
    df = _read_csv(fs, path, usecols=list(dict.fromkeys([*VOXEL_REQUIRED, *nc_cols, *wanted])))
    ids = pd.to_numeric(df["voxel_id"], errors="coerce").to_numpy()
    if np.isnan(ids).any() or len(np.unique(ids)) != len(ids):
        raise SourceError(f"{path}: voxel_id holds missing or repeated values")
    member = (df[wanted].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64) > 0.5) if wanted else None
    keep = np.ones(len(df), dtype=bool) if cfg.rois is None else member.any(axis=1)
    in_roi = int(keep.sum())
    if rule.min is not None:
        nc = pd.to_numeric(df[rule.column], errors="coerce").to_numpy(dtype=np.float64)
        keep &= np.nan_to_num(nc, nan=-np.inf) >= rule.min
    rows = np.flatnonzero(keep)
    region = _regions(member, wanted, rows)
    xyz = df[list(VOXEL_REQUIRED[1:])].to_numpy()[rows]
    if not np.isfinite(xyz.astype(np.float64)).all():
        raise SourceError(f"{path}: voxel_x/y/z hold missing values")
    counts = {"voxels_total": len(df), "voxels_in_rois": in_roi, "voxels_below_ceiling": in_roi - len(rows)}
    return Voxels(
        len(df),
        ids.astype(np.int64),
        rows.astype(np.int64),
        region,
        xyz.astype(np.int32),
        _column(df, "nc_singletrial", rows),
        _column(df, "nc_testset", rows),
        _memberships(member, wanted, rows),
        counts,
    )


def _regions(member: np.ndarray | None, names: list[str], rows: np.ndarray) -> np.ndarray:
    """The first ROI (in ``names`` order) holding each kept voxel, else 'other'."""
    if member is None or not len(names):
        return np.full(len(rows), "other", dtype=object).astype(str)
    m = member[rows]
    first = np.argmax(m, axis=1)
    return np.where(m.any(axis=1), np.asarray(names, dtype=object)[first], "other").astype(str)


def _memberships(member: np.ndarray | None, names: list[str], rows: np.ndarray) -> pa.Array:
    if member is None or not len(names):
        return pa.ListArray.from_arrays(pa.array(np.zeros(len(rows) + 1, np.int32)), pa.array([], pa.string()))
    r, c = np.nonzero(member[rows])
    offsets = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=len(rows)))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(names, dtype=object)[c], pa.string()))


def _column(df: pd.DataFrame, name: str, rows: np.ndarray) -> np.ndarray:
    if name not in df:
        return np.full(len(rows), np.nan, dtype=np.float32)
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float32)[rows]


@dataclass
class Trials:
    """Every trial the metadata lists, in file order; ``official`` marks train/test ones (others are excluded)."""

    trial_id: np.ndarray  # [T] int64
    session: np.ndarray  # [T] int64
    run: np.ndarray  # [T] int64
    image: np.ndarray  # [T] str: the image file name
    concept: np.ndarray  # [T] str
    stimulus_id: np.ndarray  # [T] str: <prefix>/<concept>/<image>
    split: np.ndarray  # [T] str: train | test (official), else the file's trial_type
    repeat: np.ndarray  # [T] int32: 1-based presentation of its image, in (session, run, trial_id) order
    official: np.ndarray  # [T] bool

    def __len__(self) -> int:
        return len(self.trial_id)


def read_trials(fs, path: str, prefix: str) -> Trials:
    """The stimulus metadata, checked: unique trial ids, one concept per image, known trial types."""
    df = _read_csv(fs, path)
    missing = [c for c in TRIAL_REQUIRED if c not in df.columns]
    if missing:
        raise SourceError(f"{path}: no {', '.join(missing)} column(s) (is this a THINGS StimulusMetadata file?)")
    nums = df[["trial_id", "session", "run"]].apply(pd.to_numeric, errors="coerce")
    if nums.isna().any().any():
        raise SourceError(f"{path}: trial_id, session or run holds missing or non-numeric values")
    ids = nums["trial_id"].to_numpy(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise SourceError(f"{path}: trial_id repeats ({pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]})")
    if (df["stimulus"].isna() | df["concept"].isna()).any():
        raise SourceError(f"{path}: a trial has no stimulus or no concept")
    image = df["stimulus"].astype(str).str.rsplit("/", n=1).str[-1].to_numpy().astype(str)
    concept = df["concept"].astype(str).str.strip().to_numpy().astype(str)
    _one_concept_per_image(path, image, concept)
    kind = df["trial_type"].astype(str).str.strip().str.lower().to_numpy().astype(str)
    official = np.isin(kind, OFFICIAL)
    session, run = nums["session"].to_numpy(np.int64), nums["run"].to_numpy(np.int64)
    stim = np.char.add(np.char.add(f"{prefix}/", np.char.add(concept, "/")), image)
    order = np.lexsort((ids, run, session))
    rep = np.zeros(len(df), dtype=np.int32)
    rep[order] = pd.Series(stim[order]).groupby(stim[order]).cumcount().to_numpy() + 1
    _one_split_per_image(path, stim[official], kind[official])
    return Trials(ids, session, run, image, concept, stim, kind, rep, official)


def _one_concept_per_image(path: str, image: np.ndarray, concept: np.ndarray) -> None:
    pairs = pd.DataFrame({"image": image, "concept": concept}).drop_duplicates()
    dup = pairs[pairs["image"].duplicated(keep=False)]
    if len(dup):
        first = dup["image"].iloc[0]
        names = sorted(dup.loc[dup["image"] == first, "concept"])
        raise SourceError(
            f"{path}: stimulus {first!r} is listed with different concepts ({', '.join(names)}); "
            f"{dup['image'].nunique()} image(s) disagree"
        )


def _one_split_per_image(path: str, stim: np.ndarray, kind: np.ndarray) -> None:
    pairs = pd.DataFrame({"s": stim, "k": kind}).drop_duplicates()
    dup = pairs[pairs["s"].duplicated(keep=False)]
    if len(dup):
        raise SourceError(f"{path}: image {dup['s'].iloc[0]!r} is a train and a test trial: it would leak")
