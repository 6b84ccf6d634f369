"""MATLAB v7.3 (HDF5) layout: reversed dimensions, UTF-16 char arrays, struct arrays of object references.

MATLAB writes column-major arrays, so HDF5 sees every array with its dimensions reversed: a MATLAB
``[electrode, trial, time]`` array is ``(time, trial, electrode)`` on disk. Readers index the disk layout
directly (no transposed copies of big arrays); small arrays are turned back into MATLAB order with ``.T``.
The writers here exist for the simulator, so that tests read files laid out as MATLAB lays them out.
"""

from __future__ import annotations

import h5py
import numpy as np

HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
USERBLOCK = 512


def matlab_class(obj) -> str:
    value = obj.attrs.get("MATLAB_class", b"")
    return value.decode() if isinstance(value, bytes) else str(value)


def matlab_shape(ds: h5py.Dataset) -> tuple[int, ...]:
    return tuple(reversed(ds.shape))


def read_matlab(ds: h5py.Dataset) -> np.ndarray:
    """A small array, whole, in MATLAB dimension order."""
    return np.asarray(ds[()]).T


def decode_chars(arrays: list[np.ndarray]) -> np.ndarray:
    """MATLAB char row vectors (uint16 UTF-16 code units) → a unicode array, decoded in one vectorised step.

    The code units are widened into a zero-padded ``uint32 [n, width]`` matrix and viewed as ``<U{width}``
    (NumPy strings are UCS-4), so no per-string Python decoding happens. Surrogate pairs (characters outside
    the BMP) cannot be widened this way and are refused.
    """
    if not arrays:
        return np.array([], dtype=str)
    flat = [np.asarray(a, dtype=np.uint16).ravel(order="F") for a in arrays]
    lengths = np.fromiter((len(a) for a in flat), dtype=np.int64, count=len(flat))
    width = max(int(lengths.max()), 1)
    units = np.concatenate(flat) if lengths.sum() else np.zeros(0, np.uint16)
    if np.any((units >= 0xD800) & (units <= 0xDFFF)):
        raise ValueError("char array holds UTF-16 surrogate pairs (characters outside the BMP)")
    wide = np.zeros((len(flat), width), dtype=np.uint32)
    wide[np.arange(width)[None, :] < lengths[:, None]] = units
    return wide.view(f"<U{width}").ravel()


def read_char_refs(f: h5py.File, ds: h5py.Dataset) -> np.ndarray:
    """A struct-array field (a dataset of object references to char arrays) → one string per element.

    h5py dereferences one object at a time: that loop (one small read per image) is the only per-element
    Python step; the decoding itself is vectorised in :func:`decode_chars`.
    """
    if h5py.check_dtype(ref=ds.dtype) is None:
        raise ValueError(f"{ds.name} is not a field of object references (dtype {ds.dtype})")
    refs = np.asarray(ds[()]).ravel(order="F")  # MATLAB element order
    arrays = []
    for ref in refs:  # low-level reads (half the cost of f[ref][()]); the dtype tells char from the empty marker
        dsid = h5py.h5r.dereference(ref, f.id)
        if not isinstance(dsid, h5py.h5d.DatasetID):
            raise ValueError(f"{ds.name} refers to a group, not a char array")
        data = np.empty(dsid.shape, dtype=dsid.dtype)
        dsid.read(h5py.h5s.ALL, h5py.h5s.ALL, data)
        if data.dtype == np.uint16:
            arrays.append(data)
        elif data.dtype == np.uint64 and data.size == 2 and 0 in data:
            arrays.append(np.zeros(0, np.uint16))
        else:
            raise ValueError(f"{ds.name} refers to a {data.dtype} array of shape {data.shape}, not a char array")
    return decode_chars(arrays)


# -- writers (simulator) -----------------------------------------------------------------------------------------


def create(path) -> h5py.File:
    """A new v7.3 file: HDF5 with the 512-byte MATLAB user block (its header is stamped by :func:`stamp`)."""
    return h5py.File(path, "w", userblock_size=USERBLOCK, track_order=True)


def stamp(path) -> None:
    """Write MATLAB's text header and version bytes into the user block after the HDF5 file is closed."""
    with open(path, "r+b") as f:
        f.write(HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


def write_matlab(parent: h5py.Group, name: str, value: np.ndarray, cls: str, **kwargs) -> h5py.Dataset:
    """Store ``value`` (MATLAB order) as MATLAB does: dimensions reversed, class attribute set."""
    value = np.asarray(value)
    if value.ndim == 1:
        value = value[None, :]  # MATLAB has no 1-D arrays: a row vector
    ds = parent.create_dataset(name, data=value.T, **kwargs)
    ds.attrs["MATLAB_class"] = np.bytes_(cls)
    return ds


def write_char_struct(f: h5py.File, name: str, fields: dict[str, list[str]]) -> None:
    """A 1×n struct array whose fields are strings: each field a dataset of references into ``#refs#``."""
    refs_group = f.require_group("#refs#")
    group = f.create_group(name)
    group.attrs["MATLAB_class"] = np.bytes_("struct")
    for field, values in fields.items():
        refs = np.empty((len(values), 1), dtype=h5py.ref_dtype)  # MATLAB [1, n] reversed
        for i, text in enumerate(values):
            units = np.frombuffer(text.encode("utf-16-le"), dtype="<u2")
            ds = refs_group.create_dataset(f"{name}_{field}_{i}", data=units[:, None])  # [1, len] reversed
            ds.attrs["MATLAB_class"] = np.bytes_("char")
            ds.attrs["MATLAB_int_decode"] = np.int32(2)
            refs[i, 0] = ds.ref
        ds = group.create_dataset(field, data=refs)
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
    group.attrs["MATLAB_fields"] = np.array(
        [np.frombuffer(k.encode(), dtype="S1") for k in fields], dtype=h5py.vlen_dtype(np.dtype("S1"))
    )
