"""What is decoded from a stimulus: its concept, its concept's property ratings, and how reliable those are.

Concepts come from the token store when a dataset has a ``stimuli`` side table (THINGS-fMRI writes one), else
from a TSV, else from the THINGS path rule (``<prefix>/<concept>/<file>``: TVSD and THINGS images), else the
stimulus is its own class (Allen natural scenes). Property ratings (THINGSplus-style: one row per concept, one
column per property) and their split-half reliabilities come from TSVs; the reliability is each property's
ceiling: no decoder can correlate with the mean ratings better than ``sqrt(reliability)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from neurobridge.align.examples import AlignDataError
from neurobridge.config import Settings
from neurobridge.decode.config import LabelsConfig
from neurobridge.storage import filesystem, join
from neurobridge.store.read import Source


class LabelError(AlignDataError):
    """Labels that cannot be used; the message names the file and the problem."""


def path_concept(stimulus_id: str) -> str:
    """``things/aardvark/aardvark_01b.jpg`` → ``aardvark``; an id without a concept folder is its own class."""
    parts = stimulus_id.split("/")
    return parts[-2] if len(parts) >= 3 else stimulus_id


@dataclass
class Labels:
    concept_of: dict[str, str] = field(default_factory=dict)  # stimulus id → concept, where a table says
    ratings: pd.DataFrame | None = None  # concept → one column per property
    reliability: dict[str, float] = field(default_factory=dict)
    source: str = "path"

    @property
    def property_names(self) -> list[str]:
        return [] if self.ratings is None else list(self.ratings.columns)

    def concepts(self, stimulus_ids) -> np.ndarray:
        ids = np.asarray(stimulus_ids).astype(str)
        return np.array([self.concept_of.get(s) or path_concept(s) for s in ids.tolist()], dtype=str)

    def properties(self, stimulus_ids) -> tuple[np.ndarray, np.ndarray]:
        """([n, P] ratings of each stimulus's concept, found mask [n])."""
        concepts = self.concepts(stimulus_ids)
        if self.ratings is None:
            return np.zeros((len(concepts), 0), np.float32), np.zeros(len(concepts), bool)
        rows = self.ratings.index.get_indexer(concepts)
        found = rows >= 0
        values = self.ratings.to_numpy(np.float32)[np.maximum(rows, 0)]
        return np.where(found[:, None], values, np.nan).astype(np.float32), found


def _read_tsv(path: str, settings: Settings, what: str) -> pd.DataFrame:
    fs, p = filesystem(path, settings)
    try:
        with fs.open(p, "rb") as f:
            return pd.read_csv(f, sep="\t")
    except FileNotFoundError:
        raise LabelError(f"{path}: no such {what} file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise LabelError(f"{path}: unreadable {what} TSV: {err}") from None


def load_labels(cfg: LabelsConfig, settings: Settings, srcs: list[Source]) -> Labels:
    labels = Labels()
    if cfg.concepts == "auto":
        labels.concept_of, labels.source = _store_concepts(settings, srcs)
    else:
        df = _read_tsv(cfg.concepts, settings, "concepts")
        if not {"stimulus_id", "concept"} <= set(df.columns):
            raise LabelError(f"{cfg.concepts}: needs stimulus_id and concept columns (has {list(df.columns)})")
        labels.concept_of = dict(zip(df["stimulus_id"].astype(str), df["concept"].astype(str), strict=True))
        labels.source = cfg.concepts
    if cfg.properties is not None:
        labels.ratings = _ratings(cfg, settings)
    if cfg.reliability is not None:
        df = _read_tsv(cfg.reliability, settings, "reliability")
        if not {"property", "split_half_r"} <= set(df.columns):
            raise LabelError(f"{cfg.reliability}: needs property and split_half_r columns (has {list(df.columns)})")
        labels.reliability = dict(zip(df["property"].astype(str), df["split_half_r"].astype(float), strict=True))
    return labels


def _ratings(cfg: LabelsConfig, settings: Settings) -> pd.DataFrame:
    df = _read_tsv(cfg.properties, settings, "properties")
    if cfg.concept_column not in df:
        raise LabelError(f"{cfg.properties}: no concept column {cfg.concept_column!r} (has {list(df.columns)[:8]})")
    if df[cfg.concept_column].duplicated().any():
        dup = df.loc[df[cfg.concept_column].duplicated(), cfg.concept_column].iloc[0]
        raise LabelError(f"{cfg.properties}: concept {dup!r} is listed twice")
    df = df.set_index(df[cfg.concept_column].astype(str)).drop(columns=[cfg.concept_column])
    numeric = df.select_dtypes("number")
    names = cfg.property_names or list(numeric.columns)
    missing = [n for n in names if n not in numeric]
    if missing or not names:
        raise LabelError(f"{cfg.properties}: no numeric property column {missing or ''} (has {list(numeric.columns)})")
    return numeric[names].astype(np.float32)


def _store_concepts(settings: Settings, srcs: list[Source]) -> tuple[dict[str, str], str]:
    """stimulus id → concept from the datasets' ``stimuli`` side tables; a stimulus with two concepts is refused."""
    out: dict[str, str] = {}
    found = False
    for src in srcs:
        info = src.ref.card.side_outputs.get("stimuli")
        for rel in info.files if info is not None else []:
            found = True
            fs, path = filesystem(join(src.ref.path, rel), settings)
            with fs.open(path, "rb") as f:
                t = pq.read_table(f, columns=["stimulus_id", "concept"])
            for s, c in zip(t.column("stimulus_id").to_pylist(), t.column("concept").to_pylist(), strict=True):
                if out.setdefault(s, c) != c:
                    raise LabelError(f"{src.ref.ref}: stimulus {s!r} has concepts {out[s]!r} and {c!r}")
    return out, ("store" if found else "path")
