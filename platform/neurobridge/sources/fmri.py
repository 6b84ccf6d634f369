"""THINGS-fMRI (Hebart et al. 2023): human single-trial responses to THINGS images, one item per subject.

Two layouts of the same betas (``fmri.layout``): the *table* (``sub-0X_ResponseData.h5``, pandas HDF, voxels ×
trials, ~8 GB for sub-01) read by ranges of trial columns, and the *volumes* (``betas_vol/sub-0X/ses-*/…_betas.nii.gz``
with ``_conditions.tsv``, on the grid of ``brainmasks/sub-0X_space-T1w_brainmask.nii.gz``) read one volume at a
time. Both take voxels and trials from ``VoxelMetadata.csv`` and ``StimulusMetadata.csv`` (``sources/fmri_meta.py``),
so the two layouts of one subject give the same rows.

Rows: one per official trial (train/test; other trial types are excluded and counted), the betas of the selected
voxels (ROIs by name, noise-ceiling rule) as ``mua`` with voxels as units, their ROI as region and one bin;
``stimulus_id`` is the THINGS image path (``things/<concept>/<file>``), ``repeat`` the image's presentation
count. Splits: test images stay test; training images are carved into train/val by image id, as for TVSD. NaN
betas are counted and written as ``nan_fill``; the item fails above ``max_nan_fraction``. Side tables: ``units``
(voxel id, coordinates, noise ceilings, every ROI holding the voxel) and ``stimuli`` (image → concept, split).
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from neurobridge.catalog import CatalogEntry, FmriConfig, FmriEntry, IngestConfig
from neurobridge.config import Settings
from neurobridge.sources.base import BinnedSource, Item, SessionMeta, SourceError, WindowBlock, item_key, register
from neurobridge.sources.fmri_layouts import TableStream, VolumeStream
from neurobridge.sources.fmri_meta import Trials, Voxels, read_trials, read_voxels
from neurobridge.storage import filesystem
from neurobridge.store.schema import FMRI_UNITS_SCHEMA, STIMULI_SCHEMA
from neurobridge.store.units import unit_vocab, units_table

ROW_OVERHEAD = 16  # bytes per unit and row besides the value and the id/region text (offsets, validity)


def config(entry: CatalogEntry) -> FmriConfig:
    return entry.fmri or FmriConfig()


def _paths(root: str, cfg: FmriConfig, subject: str) -> dict[str, str]:
    f = cfg.files
    return {
        name: posixpath.join(root, getattr(f, name).format(subject=subject))
        for name in ("responses", "voxels", "stimuli", "betas", "brainmask")
    }


def _subjects(fs, root: str, cfg: FmriConfig) -> list[str]:
    """Subjects named in the catalog, else those whose (layout's) data exist below the root."""
    if cfg.subjects:
        return list(cfg.subjects)
    pattern = cfg.files.responses if cfg.layout == "table" else cfg.files.betas
    head, tail = pattern.split("{subject}", 1)
    found = fs.glob(posixpath.join(root, pattern.format(subject="*")))
    base = posixpath.join(root, head)
    return sorted({p[len(base) :][: len(p) - len(base) - len(tail)] for p in found if p.startswith(base)})


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    """One item per subject; the fingerprint covers every file the subject's rows are read from (listing only)."""
    cfg = config(entry)
    uri = entry.resolved_uri(settings)
    fs, root = filesystem(uri, settings)
    if not fs.exists(root):
        raise SourceError(f"{uri}: no such directory or object prefix")
    scheme = uri.split("://", 1)[0] if "://" in uri else None
    items = []
    for subject in _subjects(fs, root, cfg):
        p = _paths(root, cfg, subject)
        data = [p["responses"]] if cfg.layout == "table" else [p["brainmask"], *_files_below(fs, p["betas"])]
        files = [p["voxels"], p["stimuli"], *data]
        missing = [f for f in files[:3] if not fs.exists(f)]
        if missing:
            raise SourceError(f"catalog entry {entry.name!r}, subject {subject}: missing {', '.join(missing)}")
        digest = hashlib.blake2b(digest_size=12)
        for f in files:
            info = fs.info(f)
            digest.update(
                f"{posixpath.relpath(f, root)}|{info.get('size')}|{info.get('mtime', info.get('ETag'))}".encode()
            )
        main = data[0] if cfg.layout == "table" else p["betas"]
        rel = posixpath.relpath(main, root)
        item_uri = f"{scheme}://{main}" if scheme else main
        extra = {"subject": subject, "root": uri}
        items.append(Item(item_key(subject), item_uri, rel, digest.hexdigest(), extra))
    items = [i for i in items if not any(fnmatch.fnmatch(i.extra["subject"], x) for x in entry.selection.exclude)]
    return items[: entry.selection.limit] if entry.selection.limit else items


def _files_below(fs, folder: str) -> list[str]:
    return sorted(fs.find(folder)) if fs.exists(folder) else []


def open_item(entry: CatalogEntry, item: Item, settings: Settings) -> FmriSource:
    return FmriSource(entry, item, settings)


class FmriSource(BinnedSource):
    def __init__(self, entry: CatalogEntry, item: Item, settings: Settings):
        self.entry, self.cfg, self.item = entry, config(entry), item.uri
        self.subject = item.extra["subject"]
        fs, root = filesystem(item.extra["root"], settings)
        p = _paths(root, self.cfg, self.subject)
        self.voxels: Voxels = read_voxels(fs, p["voxels"], self.cfg)
        if not len(self.voxels.rows):
            raise SourceError(f"{p['voxels']}: no voxel passes the ROI selection and noise-ceiling rule")
        prefix = entry.ingest.window.stimulus_prefix or "things"
        self.trials: Trials = read_trials(fs, p["stimuli"], prefix)
        if self.cfg.layout == "table":
            self.stream = TableStream(
                fs, p["responses"], self.cfg.files.table_key, self.voxels, self.trials, p["voxels"]
            )
        else:
            self.stream = VolumeStream(fs, p["betas"], p["brainmask"], self.voxels, self.trials, p["voxels"])
        self.meta = SessionMeta(self.subject, self.subject, entry.species, entry.task)
        self.counts = {"nan_cells": 0, "cells": 0, "trials_written": 0}

    # -- rows ------------------------------------------------------------------------------------------------------

    def _per_block(self) -> int:
        """Trials per block: the raw read and the rows built from it both stay within ``chunk_mb``."""
        ids, regions = self.voxels.ids.astype(str), self.voxels.region
        text = (
            len(self.entry.name) + len(self.subject) + 2 + np.char.str_len(ids).mean() + np.char.str_len(regions).mean()
        )
        per_row = len(ids) * (4 + text + ROW_OVERHEAD)
        raw = getattr(self.stream, "raw_bytes_per_trial", lambda: 0)()
        return max(1, int(self.cfg.chunk_mb * 2**20 // max(per_row, raw, 1)))

    def blocks(self, cfg: IngestConfig) -> Iterator[WindowBlock]:
        t = self.trials
        expected = int(t.official.sum()) * len(self.voxels.rows)
        unit_ids = self.voxels.ids.astype(str)
        names = np.char.add("trial_", np.char.zfill(t.trial_id.astype(str), 5))
        for rows, values in self.stream.chunks(self._per_block()):
            self._nan(values, expected)
            self.counts["trials_written"] += len(rows)
            yield WindowBlock(
                meta=self.meta,
                unit_ids=unit_ids,
                unit_regions=self.voxels.region,
                names=names[rows],
                t_start=np.full(len(rows), np.nan),
                bin_s=cfg.bin_ms / 1000.0,
                values=values[:, :, None],
                split=t.split[rows],
                split_key=t.stimulus_id[rows],  # an image never lands in two splits
                stimulus_id=t.stimulus_id[rows],
                repeat=t.repeat[rows],
            )

    def _nan(self, values: np.ndarray, expected: int) -> None:
        """Count NaN betas, fail the item as soon as they pass the allowed fraction, fill the rest."""
        nan = np.isnan(values)
        n = int(nan.sum())
        self.counts["nan_cells"] += n
        self.counts["cells"] += values.size
        limit = self.cfg.max_nan_fraction * expected
        if self.counts["nan_cells"] > limit:
            raise SourceError(
                f"{self.item}: {self.counts['nan_cells']:,} NaN betas among the {expected:,} selected cells "
                f"(> max_nan_fraction {self.cfg.max_nan_fraction:g}); first in trial block of {len(values)} trials"
            )
        if n:
            values[nan] = self.cfg.nan_fill

    # -- side outputs ------------------------------------------------------------------------------------------

    def side_outputs(self) -> Iterator[tuple[str, pa.Table]]:
        yield "units", self._units_table()
        yield "stimuli", self._stimuli_table()

    def _units_table(self) -> pa.Table:
        v = self.voxels
        vocab = unit_vocab(self.entry, self.meta.session, v.ids.astype(str), v.region)
        g = np.argsort(vocab.order)  # grid position → selected voxel
        n = len(g)
        base = units_table(self.entry.name, self.meta.session, vocab, v.ids)  # the columns every units/ table has
        cols = {
            **{name: base.column(name) for name in base.column_names},
            "subject": [self.subject] * n,
            **{axis: v.xyz[g, i] for i, axis in enumerate("xyz")},
            "nc_singletrial": v.nc_single[g],
            "nc_testset": v.nc_test[g],
            "rois": v.rois.take(pa.array(g)),
        }
        return pa.table(cols, schema=FMRI_UNITS_SCHEMA)

    def _stimuli_table(self) -> pa.Table:
        t = self.trials
        ids, first, count = np.unique(t.stimulus_id[t.official], return_index=True, return_counts=True)
        sel = np.flatnonzero(t.official)[first]
        n = len(ids)
        cols = {
            "dataset": [self.entry.name] * n,
            "session": [self.meta.session] * n,
            "subject": [self.subject] * n,
            "stimulus_id": ids,
            "concept": t.concept[sel],
            "image": t.image[sel],
            "split": t.split[sel],
            "presentations": count.astype(np.int32),
        }
        return pa.table(cols, schema=STIMULI_SCHEMA)

    def stats(self) -> dict:
        t = self.trials
        out = {
            **self.voxels.counts,
            "voxels_selected": len(self.voxels.rows),
            "trials_excluded": int((~t.official).sum()),
            "trials_without_data": int(t.official.sum()) - self.counts["trials_written"],
            "nan_cells": self.counts["nan_cells"],
            "beta_bytes_read": int(self.stream.bytes_read),
            "layout": self.cfg.layout,
        }
        if self.cfg.layout == "table":
            out["trial_labels"] = self.stream.labels
        else:
            out.update(self.stream.counts)
        return out

    def close(self) -> None:
        if getattr(self, "stream", None) is not None:
            self.stream.close()


READER = register(FmriEntry, discover, open_item)
