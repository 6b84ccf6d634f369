"""Named arrays of one file, whatever the container: MATLAB v5 and v7.3, NPY, NPZ, HDF5, from any fsspec URI.

Binned datasets ship as a handful of arrays (counts, time, behaviour) in one of these containers. Readers see one
interface: ``shape(name)`` and ``span(name, axis, start, stop)`` in the *logical* axis order (MATLAB's for .mat
files, whatever was written for the others), so a 2-D counts matrix is sliced along its bin axis without loading
the whole file where the container allows it: HDF5 and v7.3 by dataset slices, local ``.npy`` through a memory
map, remote ``.npy`` by byte range along its first axis. MATLAB v5 and NPZ members cannot be read in parts; their
arrays are loaded one variable at a time, only those asked for.
"""

from __future__ import annotations

import posixpath
from typing import Protocol

import numpy as np

from neurobridge.sources.base import SourceError, decode_strings
from neurobridge.sources.io import matv73
from neurobridge.sources.io.npy import NpyRange

SUFFIXES = (".mat", ".npy", ".npz", ".h5", ".hdf5")
MAT73_MARK = b"MATLAB 7.3"


class ArrayFile(Protocol):
    uri: str

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def span(self, name: str, axis: int, start: int, stop: int) -> np.ndarray: ...

    def close(self) -> None: ...


def read_all(f: ArrayFile, name: str) -> np.ndarray:
    """A (small) array whole, in logical order."""
    shape = f.shape(name)
    return f.span(name, 0, 0, shape[0]) if shape else f.span(name, 0, 0, 0)


def read_strings(f: ArrayFile, name: str) -> np.ndarray:
    """A vector of labels (split names, regions, unit ids): MATLAB cell arrays of char (v5: nested object arrays;
    v7.3: object references), char matrices, byte or unicode arrays, or numbers → one string per element."""
    if isinstance(f, _Hdf5) and f.matlab:
        import h5py

        ds = f._ds(name)
        if h5py.check_dtype(ref=ds.dtype) is not None:
            return matv73.read_char_refs(f._f, ds)
    arr = read_all(f, name)
    if arr.dtype == object:
        flat = [np.asarray(v).ravel() for v in arr.ravel(order="F")]
        return np.array([str(v[0]) if v.size else "" for v in flat])
    if arr.dtype.kind == "U" and arr.ndim == 2 and arr.shape[1] > 1 and arr.dtype.itemsize == 4:
        return np.array(["".join(row).rstrip() for row in arr])  # a MATLAB char matrix: one label per row
    return decode_strings(arr.ravel())


class _Loaded:
    """Arrays loaded whole, one variable at a time (MATLAB v5 through scipy.io, NPZ members)."""

    def __init__(self, uri: str, listing: list[str], load, on_close):
        self.uri, self._names, self._load, self._on_close, self._cache = uri, listing, load, on_close, {}

    def names(self) -> list[str]:
        return list(self._names)

    def _get(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise SourceError(f"{self.uri}: no array {name!r} (the file has {', '.join(self._names) or 'none'})")
        if name not in self._cache:
            self._cache[name] = np.asarray(self._load(name))
        return self._cache[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def span(self, name: str, axis: int, start: int, stop: int) -> np.ndarray:
        arr = self._get(name)
        return arr if arr.ndim == 0 else np.take(arr, np.arange(start, stop), axis=axis)

    def close(self) -> None:
        self._cache.clear()
        self._on_close()


class _Hdf5:
    """HDF5 datasets by slice; MATLAB v7.3 files are HDF5 with every array's dimensions reversed on disk."""

    def __init__(self, uri: str, handle, matlab: bool):
        import h5py

        self.uri, self._fh, self.matlab = uri, handle, matlab
        self._f = h5py.File(handle, "r")

    def names(self) -> list[str]:
        import h5py

        out: list[str] = []
        self._f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Dataset) else None)
        return [n for n in out if not n.startswith("#refs#")]

    def _ds(self, name: str):
        import h5py

        obj = self._f.get(name)
        if not isinstance(obj, h5py.Dataset):
            raise SourceError(f"{self.uri}: no array {name!r} (the file has {', '.join(self.names()) or 'none'})")
        return obj

    def shape(self, name: str) -> tuple[int, ...]:
        ds = self._ds(name)
        return matv73.matlab_shape(ds) if self.matlab else tuple(ds.shape)

    def span(self, name: str, axis: int, start: int, stop: int) -> np.ndarray:
        ds = self._ds(name)
        if ds.ndim == 0:
            return np.asarray(ds[()])
        disk_axis = ds.ndim - 1 - axis if self.matlab else axis
        index = tuple(slice(start, stop) if i == disk_axis else slice(None) for i in range(ds.ndim))
        part = np.asarray(ds[index])
        return part.T if self.matlab else part

    def close(self) -> None:
        self._f.close()
        if self._fh is not None:
            self._fh.close()


class _Npy:
    """One ``.npy`` file holds one array, named by the file's stem; read by range along its first axis."""

    def __init__(self, uri: str, fs, path: str):
        self.uri = uri
        self.name = posixpath.splitext(posixpath.basename(path))[0]
        self._r = NpyRange(fs, path, uri)

    def names(self) -> list[str]:
        return [self.name]

    def shape(self, name: str) -> tuple[int, ...]:
        self._check(name)
        return tuple(self._r.shape)

    def _check(self, name: str) -> None:
        if name != self.name:
            raise SourceError(f"{self.uri}: no array {name!r} (a .npy file holds one array, named {self.name!r})")

    def span(self, name: str, axis: int, start: int, stop: int) -> np.ndarray:
        self._check(name)
        if axis == 0:
            return np.asarray(self._r.read(start, stop))
        if self._r.mapped is not None:  # a memory map: a strided slice reads only what it touches
            return np.array(np.take(self._r.mapped, np.arange(start, stop), axis=axis))
        whole = np.asarray(self._r.read(0, len(self._r)))
        return np.take(whole, np.arange(start, stop), axis=axis)

    def close(self) -> None:
        self._r.close()


def _open_mat(uri: str, fs, path: str) -> ArrayFile:
    handle = fs.open(path, "rb")
    head = handle.read(128)
    handle.seek(0)
    if MAT73_MARK in head:
        return _Hdf5(uri, handle, matlab=True)
    import scipy.io as sio

    try:
        listing = [name for name, _, _ in sio.whosmat(handle)]
    except (ValueError, TypeError, NotImplementedError) as err:
        handle.close()
        raise SourceError(f"{uri}: not a readable MATLAB file: {err}") from None

    def load(name: str) -> np.ndarray:
        handle.seek(0)
        return sio.loadmat(handle, variable_names=[name], squeeze_me=False)[name]

    return _Loaded(uri, listing, load, handle.close)


def _open_npz(uri: str, fs, path: str) -> ArrayFile:
    handle = fs.open(path, "rb")
    try:
        z = np.load(handle, allow_pickle=False)
    except (ValueError, OSError) as err:
        handle.close()
        raise SourceError(f"{uri}: not a readable .npz archive: {err}") from None

    def close() -> None:
        z.close()
        handle.close()

    return _Loaded(uri, list(z.files), lambda name: z[name], close)


def open_arrays(fs, path: str, uri: str) -> ArrayFile:
    """The file at ``path`` as named arrays, by suffix (``.mat`` sniffed for v7.3); errors name the file."""
    suffix = posixpath.splitext(path)[1].lower()
    try:
        if suffix == ".mat":
            return _open_mat(uri, fs, path)
        if suffix == ".npz":
            return _open_npz(uri, fs, path)
        if suffix == ".npy":
            return _Npy(uri, fs, path)
        if suffix in (".h5", ".hdf5"):
            return _Hdf5(uri, fs.open(path, "rb"), matlab=False)
    except FileNotFoundError:
        raise SourceError(f"{uri}: file not found") from None
    except OSError as err:
        raise SourceError(f"{uri}: not a readable {suffix} file: {err}") from None
    raise SourceError(f"{uri}: unknown array file suffix {suffix!r} (one of {', '.join(SUFFIXES)})")
