"""The two THINGS-fMRI layouts as one stream of trial blocks: ``(metadata rows, betas [trials, selected voxels])``.

Table: ``ResponseData.h5`` (pandas fixed format, on disk ``[voxels, trials]``) is read by ranges of trial columns,
so a block costs ``voxels × trials_per_block`` floats whatever the file's size. Volume: one NIfTI per run
(``…_betas.nii.gz``, a volume per trial, 4-D) with its ``_conditions.tsv``; volumes are read one at a time through
nibabel's array proxy and each gives the selected voxels at their ``voxel_x/y/z``. Every run must share the brain
mask's grid (shape and affine), since the coordinates index that grid.
"""

from __future__ import annotations

import gzip
import posixpath
import re
from collections.abc import Iterator

import h5py
import numpy as np
import pandas as pd

from neurobridge.sources.base import SourceError
from neurobridge.sources.fmri_meta import Trials, Voxels
from neurobridge.sources.io import pandas_hdf
from neurobridge.storage import is_local_fs

Chunk = tuple[np.ndarray, np.ndarray]  # (indices into Trials, betas [trials, selected voxels] float32)


class TableStream:
    """ResponseData.h5 by ranges of trial columns."""

    def __init__(self, fs, path: str, key: str | None, voxels: Voxels, trials: Trials, voxels_path: str):
        self.path, self.voxels, self.bytes_read = path, voxels, 0
        self._file = fs.open(path, "rb") if not is_local_fs(fs) else None
        try:
            self._h5 = h5py.File(self._file or path, "r")
        except OSError as err:
            raise SourceError(f"{path}: cannot be opened as HDF5 (truncated or corrupt?): {err}") from None
        try:
            frame = pandas_hdf.open_frame(self._h5, key)
            self.block = frame.widest_float_block()
            self._check_voxels(frame, voxels_path)
            self.column_trial, self.labels = self._columns(trials)
        except pandas_hdf.FrameError as err:
            self.close()
            raise SourceError(f"{path}: {err}") from None
        except SourceError:
            self.close()
            raise

    @property
    def n_selected(self) -> int:
        return int((self.column_trial >= 0).sum())

    def raw_bytes_per_trial(self) -> int:
        return self.voxels.n_total * self.block.values.dtype.itemsize

    def _check_voxels(self, frame: pandas_hdf.FixedFrame, voxels_path: str) -> None:
        if frame.n_rows != self.voxels.n_total:
            raise SourceError(
                f"{self.path}: the table has {frame.n_rows:,} voxel rows but {voxels_path} lists "
                f"{self.voxels.n_total:,} voxels"
            )
        ids = frame.column("voxel_id")
        if ids is not None and not np.array_equal(np.asarray(ids, dtype=np.int64), self.voxels.all_ids):
            row = int(np.flatnonzero(np.asarray(ids, dtype=np.int64) != self.voxels.all_ids)[0])
            raise SourceError(
                f"{self.path}: voxel_id of row {row} is {int(ids[row])} but {voxels_path} lists "
                f"{int(self.voxels.all_ids[row])} there (rows must follow the metadata's order)"
            )

    def _columns(self, trials: Trials) -> tuple[np.ndarray, str]:
        """Trial (metadata row) of each column: by the stored labels (trial ids), else by position."""
        n = self.block.n_columns
        items = self.block.items
        ints = pd.to_numeric(pd.Series(items), errors="coerce") if items is not None else None
        if ints is not None and not ints.isna().any():
            where = pd.Index(trials.trial_id).get_indexer(ints.to_numpy(np.int64))
            if (where < 0).any():
                bad = int(ints.to_numpy()[where < 0][0])
                raise SourceError(f"{self.path}: column {bad} names no trial_id of the stimulus metadata")
            how = self.block.how
        elif n == len(trials):
            where, how = np.arange(n), "positional"
        else:
            raise SourceError(
                f"{self.path}: the table has {n:,} trial columns but the stimulus metadata lists {len(trials):,} trials"
            )
        return np.where(trials.official[where], where, -1), how

    def chunks(self, per: int) -> Iterator[Chunk]:
        n = self.block.n_columns
        for a in range(0, n, per):
            b = min(a + per, n)
            cols = self.column_trial[a:b]
            keep = cols >= 0
            if not keep.any():
                continue
            raw = pandas_hdf.read_columns(self.block, a, b)  # [all voxels, b - a]
            self.bytes_read += raw.nbytes
            values = np.ascontiguousarray(raw[self.voxels.rows][:, keep].T, dtype=np.float32)
            del raw
            yield cols[keep], values

    def close(self) -> None:
        if getattr(self, "_h5", None) is not None:
            self._h5.close()
            self._h5 = None
        if self._file is not None:
            self._file.close()
            self._file = None


_SES, _RUN = re.compile(r"ses-[A-Za-z]*?(\d+)"), re.compile(r"run-(\d+)")


def open_nifti(fs, path: str):
    """A NIfTI image whose data stay on disk (nibabel's array proxy reads them volume by volume)."""
    import nibabel as nib

    try:
        fh = fs.open(path, "rb")
        stream = gzip.GzipFile(fileobj=fh) if path.endswith(".gz") else fh
        return nib.Nifti1Image.from_stream(stream), fh
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise SourceError(f"{path}: not a readable NIfTI image: {err}") from None


class VolumeStream:
    """betas_vol: one NIfTI per run, a volume per trial, matched to the metadata by (session, run, image)."""

    def __init__(self, fs, betas: str, mask_path: str, voxels: Voxels, trials: Trials, voxels_path: str):
        self.fs, self.betas, self.voxels, self.bytes_read = fs, betas, voxels, 0
        self.counts = {"volumes_unlisted": 0, "trials_without_volume": 0}
        mask, fh = open_nifti(fs, mask_path)
        try:
            data = np.asarray(mask.dataobj) > 0
            self.shape, self.affine = data.shape[:3], mask.affine
        finally:
            fh.close()
        if int(data.sum()) != voxels.n_total:
            raise SourceError(
                f"{mask_path}: the mask holds {int(data.sum()):,} voxels but {voxels_path} lists {voxels.n_total:,}"
            )
        xyz = voxels.xyz
        if (xyz < 0).any() or (xyz >= np.asarray(self.shape)).any() or not data[tuple(xyz.T)].all():
            raise SourceError(f"{voxels_path}: voxel coordinates fall outside the brain mask {mask_path}")
        self.coords = tuple(xyz.T)
        self.runs = self._runs()
        key = pd.MultiIndex.from_arrays([trials.session, trials.run, trials.image])
        self._lookup = pd.Series(np.arange(len(trials)), index=key)
        self.official = trials.official

    def _runs(self) -> list[tuple[int, int, str, str]]:
        files = sorted(f for f in self.fs.find(self.betas) if re.search(r"_betas\.nii(\.gz)?$", f))
        if not files:
            raise SourceError(f"{self.betas}: no *_betas.nii.gz volumes")
        runs = []
        for f in files:
            ses, run = _SES.search(posixpath.basename(f)), _RUN.search(posixpath.basename(f))
            if ses is None or run is None:
                raise SourceError(f"{f}: the name holds no ses-…NN and run-NN")
            runs.append((int(ses.group(1)), int(run.group(1)), f, re.sub(r"_betas\.nii(\.gz)?$", "_conditions.tsv", f)))
        return sorted(runs)

    def _conditions(self, path: str, n: int) -> np.ndarray:
        try:
            with self.fs.open(path, "rb") as f:
                df = pd.read_csv(f, sep="\t")
        except FileNotFoundError:
            raise SourceError(f"{path}: no such file (each run's volumes need their conditions)") from None
        if "image_filename" not in df:
            raise SourceError(f"{path}: no image_filename column")
        if len(df) != n:
            raise SourceError(f"{path}: lists {len(df)} conditions for {n} volumes")
        return df["image_filename"].astype(str).str.rsplit("/", n=1).str[-1].to_numpy()

    def chunks(self, per: int) -> Iterator[Chunk]:
        rows: list[int] = []
        values: list[np.ndarray] = []
        for ses, run, path, cond in self.runs:
            for row, vol in self._run(ses, run, path, cond):
                rows.append(row)
                values.append(vol)
                if len(rows) == per:
                    yield np.asarray(rows), np.stack(values)
                    rows, values = [], []
        if rows:
            yield np.asarray(rows), np.stack(values)

    def _run(self, ses: int, run: int, path: str, cond: str) -> Iterator[tuple[int, np.ndarray]]:
        img, fh = open_nifti(self.fs, path)
        try:
            if img.shape[:3] != self.shape or not np.allclose(img.affine, self.affine, atol=1e-4):
                raise SourceError(
                    f"{path}: grid {img.shape[:3]} with affine {np.round(img.affine, 3).tolist()} differs from the "
                    f"brain mask's {self.shape} {np.round(self.affine, 3).tolist()}"
                )
            n = img.shape[3] if len(img.shape) > 3 else 1
            images = self._conditions(cond, n)
            found = self._lookup.reindex(pd.MultiIndex.from_arrays([[ses] * n, [run] * n, images]))
            for k in range(n):
                row = found.iloc[k]
                if np.isnan(row) or not self.official[int(row)]:
                    self.counts["volumes_unlisted"] += 1
                    continue
                vol = np.asarray(img.dataobj[..., k] if len(img.shape) > 3 else img.dataobj)
                self.bytes_read += vol.nbytes
                yield int(row), vol[self.coords].astype(np.float32)
        finally:
            fh.close()

    def close(self) -> None:
        return None
