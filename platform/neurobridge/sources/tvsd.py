"""TVSD (THINGS Ventral Stream Spiking Dataset): macaque V1/V4/IT multi-unit activity from a DataLad dataset.

One item per monkey folder. ``THINGS_MUA_trials.mat`` (MATLAB v7.3) holds ``ALLMUA`` [electrode, trial, time]
at 1 kHz (``(time, trial, electrode)`` on disk, tens of GB), ``tb`` (ms from stimulus onset) and ``ALLMAT``
[trial, 7] = trial_idx, train_idx, test_idx, rep, count, correct, day. ``_logs/things_imgs.mat`` names the
images (THINGS paths); ``THINGS_normMUA.mat`` holds the authors' normalised per-image responses.

Rows: one per kept trial, the MUA window ``-pre_s..post_s`` around onset, binned by the mean over ``bin_ms``
samples (bin ``i`` averages the samples whose ``tb`` lies in ``[t0 + i·bin, t0 + (i+1)·bin)``), streamed in
blocks of whole trials. ``t_start`` is NaN: trials are cut epochs and the files carry no session clock (only the
recording day). Splits: the official ones (test images → test); training images → train or val by a salted hash
of the image id, so that an image never lands in two splits (the entry's ``test_fraction`` does not apply).
Side outputs: ``tvsd_responses`` (normalised responses per image, averaged and per repeat) and ``tvsd_units``
(channel → unit id, region, position, and the per-channel reliab/SNR/lats/oracle).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa

from neurobridge.catalog import CatalogEntry, IngestConfig, TvsdConfig, TvsdEntry
from neurobridge.config import Settings
from neurobridge.sources.base import BinnedSource, Item, SessionMeta, SourceError, WindowBlock, item_key, register
from neurobridge.sources.io import matv73
from neurobridge.sources.io.datalad import ensure_clone, fingerprint_files, get_files
from neurobridge.storage import is_remote
from neurobridge.store.schema import TVSD_RESPONSES_SCHEMA, TVSD_UNITS_SCHEMA
from neurobridge.store.units import unit_vocab

ALLMAT_COLUMNS = ("trial_idx", "train_idx", "test_idx", "rep", "count", "correct", "day")
METRICS = {"reliab": "reliab", "SNR": "snr", "lats": "lats", "oracle": "oracle"}


def config(entry: CatalogEntry) -> TvsdConfig:
    return entry.tvsd or TvsdConfig()


def dataset_root(entry: CatalogEntry, settings: Settings) -> Path:
    uri = entry.resolved_uri(settings)
    if is_remote(uri):
        raise SourceError(
            f"catalog entry {entry.name!r}: {uri} is not a local path; a DataLad clone needs a POSIX directory "
            "(node-local disk or a shared filesystem): give the entry an absolute local uri"
        )
    return Path(uri)


def clone_source(cfg: TvsdConfig, settings: Settings) -> str | None:
    """The datalad URL; a relative path resolves under NB_RAW like catalog URIs do."""
    url = cfg.datalad.url
    if url is None or "://" in url or url.startswith("git@") or os.path.isabs(url):
        return url
    return f"{settings.raw_root.rstrip('/')}/{url}"


def _files(cfg: TvsdConfig, folder: Path) -> list[Path]:
    files = [folder / cfg.files.mua, folder / cfg.files.images]
    return files + [folder / cfg.files.normalized] if cfg.responses else files


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    """Clone (metadata only) when needed, then list monkey folders; fingerprints are git-annex keys."""
    cfg = config(entry)
    root = dataset_root(entry, settings)
    is_ds = ensure_clone(root, clone_source(cfg, settings))
    if not root.is_dir():
        raise SourceError(f"{root}: no such directory")
    patterns = entry.selection.include or [f"monkey*/{cfg.files.mua}"]
    paths = sorted({p for pat in patterns for p in glob.glob(str(root / pat)) if os.path.lexists(p)})
    items = []
    for p in map(Path, paths):
        rel = p.relative_to(root).as_posix()
        if any(Path(rel).match(pat) for pat in entry.selection.exclude):
            continue
        folder = p.parent
        extra = {"dataset": str(root), "datalad": is_ds, "subject": folder.name}
        items.append(Item(item_key(rel), str(p), rel, fingerprint_files(_files(cfg, folder)), extra))
    return items[: entry.selection.limit] if entry.selection.limit else items


def open_item(entry: CatalogEntry, item: Item, settings: Settings) -> TVSDSource:
    """Runs in the worker: make sure this node has the clone, fetch this monkey's files only, open them."""
    cfg = config(entry)
    root = Path(item.extra["dataset"])
    folder = Path(item.uri).parent
    files = _files(cfg, folder)
    if item.extra.get("datalad"):
        ensure_clone(root, clone_source(cfg, settings))
        get_files(root, files, item.uri)
    else:
        for f in files:
            if not f.exists():
                raise SourceError(f"{item.uri}: {f.name} is missing ({f})")
    return TVSDSource(entry, cfg, item.uri, item.extra["subject"], files)


class TVSDSource(BinnedSource):
    def __init__(self, entry: CatalogEntry, cfg: TvsdConfig, uri: str, subject: str, files: list[Path]):
        self.item, self.entry, self.cfg, self.subject = uri, entry, cfg, subject
        self.files = files
        self.mua_bytes_read = 0
        self._h5 = _open(files[0], uri)
        try:
            self._check_mua()
            self._trials(files[1])
            self._regions()
        except SourceError:
            self.close()
            raise
        except (KeyError, OSError, ValueError, TypeError) as err:
            self.close()
            raise SourceError(f"{uri}: unreadable TVSD file: {type(err).__name__}: {err}") from None

    # -- layout checks -----------------------------------------------------------------------------------------

    def _check_mua(self) -> None:
        f, uri = self._h5, self.item
        for name in ("ALLMUA", "ALLMAT", "tb"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise SourceError(f"{uri}: no {name!r} variable in the file (is this THINGS_MUA_trials.mat?)")
        mua = f["ALLMUA"]
        if mua.ndim != 3:
            raise SourceError(
                f"{uri}: ALLMUA has MATLAB shape {list(matv73.matlab_shape(mua))}; expected [electrode, trial, time]"
            )
        if mua.dtype.kind != "f":
            raise SourceError(f"{uri}: ALLMUA is {mua.dtype}, expected floating-point MUA")
        self.n_samples, self.n_trials, self.n_channels = mua.shape  # MATLAB order reversed on disk
        tb = np.asarray(f["tb"][()], dtype=np.float64).ravel()
        if len(tb) != self.n_samples:
            raise SourceError(f"{uri}: tb has {len(tb)} values but ALLMUA has {self.n_samples} time samples")
        step = np.diff(tb)
        if len(tb) < 2 or not np.all(np.isfinite(tb)) or np.ptp(step) > 1e-6 * abs(step[0]) or step[0] <= 0:
            raise SourceError(f"{uri}: tb is not an increasing, evenly spaced time base (ms)")
        self.tb, self.sample_ms = tb, float(step[0])
        shape = f["ALLMAT"].shape
        if shape != (len(ALLMAT_COLUMNS), self.n_trials):
            hint = (
                " (it looks untransposed: MATLAB v7.3 stores [n_trials, 7] as (7, n_trials))"
                if shape == (self.n_trials, len(ALLMAT_COLUMNS))
                else ""
            )
            raise SourceError(
                f"{uri}: ALLMAT has on-disk shape {shape}; expected ({len(ALLMAT_COLUMNS)}, {self.n_trials}) for "
                f"MATLAB [{self.n_trials} trials, 7] = {', '.join(ALLMAT_COLUMNS)}{hint}"
            )
        self.allmat = matv73.read_matlab(f["ALLMAT"]).astype(np.float64)

    def _trials(self, images_path: Path) -> None:
        uri, m = self.item, self.allmat
        ints = m[:, 1:4]
        if not np.all(np.isfinite(ints)) or np.any(ints != np.round(ints)):
            raise SourceError(f"{uri}: ALLMAT train_idx/test_idx/rep hold non-integer values")
        train_idx, test_idx = m[:, 1].astype(np.int64), m[:, 2].astype(np.int64)
        train_paths, test_paths = _image_paths(images_path)
        bad = np.flatnonzero((train_idx > 0) == (test_idx > 0))
        if len(bad):
            i = int(bad[0])
            raise SourceError(
                f"{uri}: {len(bad)} ALLMAT rows name neither or both a training and a test image "
                f"(first: trial {i + 1}, train_idx {train_idx[i]}, test_idx {test_idx[i]})"
            )
        for name, idx, paths in (("train_idx", train_idx, train_paths), ("test_idx", test_idx, test_paths)):
            if idx.max(initial=0) > len(paths):
                raise SourceError(
                    f"{uri}: ALLMAT {name} reaches {idx.max()} but {images_path.name} lists {len(paths)} images"
                )
        is_test = test_idx > 0
        paths = np.where(
            is_test,
            test_paths[np.maximum(test_idx, 1) - 1] if len(test_paths) else "",
            train_paths[np.maximum(train_idx, 1) - 1] if len(train_paths) else "",
        )
        prefix = self.entry.ingest.window.stimulus_prefix or "things"
        self.stimulus_id = np.char.add(f"{prefix}/", paths.astype(str))
        self.train_ids = np.char.add(f"{prefix}/", train_paths.astype(str))
        self.test_ids = np.char.add(f"{prefix}/", test_paths.astype(str))
        self.split = np.where(is_test, "test", "train")  # official; ingest carves val out of train by image
        self.repeat = m[:, 3].astype(np.int32)
        keep = m[:, 5] == 1 if self.cfg.correct_only else np.ones(len(m), dtype=bool)
        self.kept = np.flatnonzero(keep)

    def _regions(self) -> None:
        ranges = self.cfg.regions.get(self.subject)
        if ranges is None:
            raise SourceError(
                f"{self.item}: no channel → region map for {self.subject!r}; add "
                f"tvsd.regions.{self.subject} to catalog entry {self.entry.name!r}"
            )
        region = np.full(self.n_channels, "", dtype=object)
        for r in ranges:
            region[r.first - 1 : min(r.last, self.n_channels)] = r.region
        top = max(r.last for r in ranges)
        if top != self.n_channels or np.any(region == ""):
            raise SourceError(
                f"{self.item}: ALLMUA has {self.n_channels} channels but the region map for "
                f"{self.subject} covers channels 1..{top}{' with gaps' if np.any(region == '') else ''}"
            )
        self.unit_ids = np.arange(1, self.n_channels + 1).astype(str)
        self.unit_regions = region.astype(str)
        self.meta = SessionMeta(self.subject, self.subject, self.entry.species, self.entry.task)
        vocab = unit_vocab(self.entry, self.meta.session, self.unit_ids, self.unit_regions)
        self._grid = np.argsort(vocab.order)  # row of the token grid → channel index
        self._vocab = vocab

    # -- rows ------------------------------------------------------------------------------------------------------

    def window_samples(self, cfg: IngestConfig) -> tuple[int, int, int]:
        """(first sample, samples per bin, bins) of the configured window on ``tb``."""
        k = cfg.bin_ms / self.sample_ms
        if abs(k - round(k)) > 1e-9 or round(k) < 1:
            raise SourceError(
                f"{self.item}: bin_ms {cfg.bin_ms} is not a multiple of the {self.sample_ms} ms "
                "sampling period of ALLMUA"
            )
        k = int(round(k))
        t0 = -cfg.window.pre_s * 1000.0
        post_ms = cfg.window.post_s * 1000.0 if cfg.window.post_s is not None else self.tb[-1] + self.sample_ms
        n_bins = int(np.floor((post_ms - t0) / cfg.bin_ms + 1e-9))
        first = int(np.searchsorted(self.tb, t0 - 1e-6 * self.sample_ms))
        if (
            n_bins < 1
            or first >= len(self.tb)
            or abs(self.tb[first] - t0) > 1e-6 * self.sample_ms
            or (first + n_bins * k > len(self.tb))
        ):
            raise SourceError(
                f"{self.item}: window {t0:g}..{post_ms:g} ms does not fit the file's time base "
                f"tb = {self.tb[0]:g}..{self.tb[-1]:g} ms"
            )
        return first, k, n_bins

    def blocks(self, cfg: IngestConfig) -> Iterator[WindowBlock]:
        first, k, n_bins = self.window_samples(cfg)
        n_s = n_bins * k
        mua = self._h5["ALLMUA"]
        per = max(1, int(self.cfg.chunk_mb * 2**20 // (n_s * self.n_channels * mua.dtype.itemsize)))
        if mua.chunks:  # whole HDF5 chunks along trials, so no chunk is decompressed twice
            per = max(mua.chunks[1], per // mua.chunks[1] * mua.chunks[1])
        kept, i = self.kept, 0
        while i < len(kept):
            a = int(kept[i])
            j = int(np.searchsorted(kept, a + per))
            idx = kept[i:j]
            b = int(idx[-1]) + 1
            raw = mua[first : first + n_s, a:b, :]  # (samples, trials, channels): contiguous runs on disk
            self.mua_bytes_read += raw.nbytes
            if b - a != len(idx):
                raw = raw[:, idx - a, :]
            sums = np.add.reduce(raw.reshape(n_bins, k, len(idx), self.n_channels), axis=1, dtype=np.float64)
            values = (sums / k).astype(np.float32).transpose(1, 2, 0)  # [trials, channels, bins]
            del raw, sums
            yield WindowBlock(
                meta=self.meta,
                unit_ids=self.unit_ids,
                unit_regions=self.unit_regions,
                names=np.char.add("trial_", np.char.zfill((idx + 1).astype(str), 6)),
                t_start=np.full(len(idx), np.nan),
                bin_s=cfg.bin_ms / 1000.0,
                values=values,
                split=self.split[idx],
                split_key=self.stimulus_id[idx],  # an image never lands in two splits
                stimulus_id=self.stimulus_id[idx],
                repeat=self.repeat[idx],
            )
            i = j

    # -- side outputs ------------------------------------------------------------------------------------------

    def side_outputs(self) -> Iterator[tuple[str, pa.Table]]:
        norm = _open(self.files[2], self.item) if self.cfg.responses else None
        try:
            yield "tvsd_units", self._units_table(norm)
            if norm is not None:
                for table in self._responses(norm):
                    yield "tvsd_responses", table
        finally:
            if norm is not None:
                norm.close()

    def _units_table(self, norm: h5py.File | None) -> pa.Table:
        g, n = self._grid, self.n_channels
        cols = {
            "dataset": [self.entry.name] * n,
            "session": [self.meta.session] * n,
            "subject": [self.subject] * n,
            "position": np.arange(n, dtype=np.int32),
            "unit_id": self._vocab.unit_ids,
            "channel": (g + 1).astype(np.int32),
            "region": self._vocab.regions,
        }
        for name, col in METRICS.items():
            if norm is None or name not in norm:
                cols[col] = pa.nulls(n, pa.list_(pa.float32()))
                continue
            arr = matv73.read_matlab(norm[name]).astype(np.float32)
            if arr.ndim == 2 and 1 in arr.shape and arr.size == n:
                arr = arr.reshape(n, 1)
            if arr.shape[0] != n:
                raise SourceError(
                    f"{self.files[2]}: {name} has MATLAB shape {list(arr.shape)}; expected [{n} channels, ...]"
                )
            per = arr.reshape(n, -1, order="F")[g]
            cols[col] = pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * per.shape[1]), pa.array(per.ravel())
            )
        return pa.table(cols, schema=TVSD_UNITS_SCHEMA)

    def _responses(self, norm: h5py.File) -> Iterator[pa.Table]:
        path, n = self.files[2], self.n_channels
        expect = {"train_MUA": (len(self.train_ids), n), "test_MUA": (len(self.test_ids), n)}
        for name, shape in expect.items():
            if name not in norm:
                raise SourceError(f"{path}: no {name!r} variable")
            if norm[name].shape != shape:
                raise SourceError(
                    f"{path}: {name} has MATLAB shape {list(matv73.matlab_shape(norm[name]))}; "
                    f"expected [{n} channels, {shape[0]} images]"
                )
        per = max(1, int(self.cfg.chunk_mb * 2**20 // (n * 4)))
        for name, ids, split in (("train_MUA", self.train_ids, "train"), ("test_MUA", self.test_ids, "test")):
            ds = norm[name]  # official splits: ingest carves val out of train by image, as it does for the rows
            for a in range(0, ds.shape[0], per):
                b = min(a + per, ds.shape[0])
                yield self._response_table(ds[a:b, :], ids[a:b], split, None)
        if "test_MUA_reps" in norm:
            ds = norm["test_MUA_reps"]
            if ds.ndim != 3 or ds.shape[1:] != (len(self.test_ids), n):
                raise SourceError(
                    f"{path}: test_MUA_reps has MATLAB shape {list(matv73.matlab_shape(ds))}; "
                    f"expected [{n} channels, {len(self.test_ids)} images, repeats]"
                )
            for r in range(ds.shape[0]):
                yield self._response_table(ds[r, :, :], self.test_ids, "test", r + 1)

    def _response_table(self, block: np.ndarray, ids: np.ndarray, split, repeat: int | None) -> pa.Table:
        m, n = block.shape[0], self.n_channels
        values = np.ascontiguousarray(block[:, self._grid], dtype=np.float32)
        cols = {
            "dataset": [self.entry.name] * m,
            "session": [self.meta.session] * m,
            "subject": [self.subject] * m,
            "stimulus_id": ids.astype(str),
            "split": np.broadcast_to(np.asarray(split, dtype=str), (m,)),
            "repeat": pa.array([repeat] * m, type=pa.int32()),
            "response": pa.ListArray.from_arrays(
                pa.array(np.arange(m + 1, dtype=np.int32) * n), pa.array(values.ravel())
            ),
        }
        return pa.table(cols, schema=TVSD_RESPONSES_SCHEMA)

    def close(self) -> None:
        if getattr(self, "_h5", None) is not None:
            self._h5.close()
            self._h5 = None


def _open(path: Path, item: str) -> h5py.File:
    try:
        return h5py.File(path, "r", rdcc_nbytes=64 << 20)
    except FileNotFoundError:
        raise SourceError(f"{item}: {path.name} not found") from None
    except OSError as err:
        raise SourceError(
            f"{item}: {path.name} cannot be opened as MATLAB v7.3/HDF5 (truncated or corrupt file?): {err}"
        ) from None


def _image_paths(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """THINGS paths of the training and test images (``things_imgs.mat``: struct arrays of char arrays)."""
    with _open(path, str(path)) as f:
        out = []
        for name in ("train_imgs", "test_imgs"):
            if name not in f or "things_path" not in f[name]:
                raise SourceError(f"{path}: no {name}.things_path (expected struct arrays of THINGS paths)")
            try:
                out.append(matv73.read_char_refs(f, f[name]["things_path"]))
            except ValueError as err:
                raise SourceError(f"{path}: {name}.things_path: {err}") from None
    return out[0], out[1]


READER = register(TvsdEntry, discover, open_item)
