"""pandas ``to_hdf`` frames (the default ``fixed`` format) read with h5py: shape, labels and column ranges.

pandas stores a frame as one HDF5 group: ``axis0`` (column labels), ``axis1`` (row labels) and, per dtype block,
``block<i>_items`` (the block's column labels) and ``block<i>_values``, written transposed: on disk ``[rows,
block columns]``, contiguous. A column range is then one strided hyperslab, read without touching the rest.

Labels of mixed type (``voxel_id`` beside integer trial columns) are stored as a pickled object array. Input is
never unpickled here: the integers and strings of such a label array are taken from the pickle's opcode stream
(``pickletools.genops`` only decodes opcodes, it builds no object), and when that stream holds anything else the
labels are reported as unknown, so the caller falls back to column order.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass, field

import h5py
import numpy as np

_INT_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG"}
_STR_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_PUT_OPS = {"BINPUT", "LONG_BINPUT", "PUT"}
_GET_OPS = {"BINGET", "LONG_BINGET", "GET"}
_GLUE = {"MARK", "FRAME"}
_UNKNOWN = object()


class FrameError(ValueError):
    """Not a pandas fixed-format frame, or one that does not hold what the caller needs."""


def pickled_labels(raw: bytes) -> list | None:
    """The integers/strings of a pickled 1-D object array, from its opcodes (no object is built); None when the
    stream holds anything else (then the labels are unknown, never guessed). A label the pickler already wrote
    (a repeat, or a string equal to one in numpy's dtype header such as ``'|'``) comes as a memo reference: it is
    resolved through the memo the opcodes build, as long as the memoised value was itself a plain int or str."""
    try:
        ops = list(pickletools.genops(raw))
    except (ValueError, EOFError):
        return None
    starts = [i for i, (op, _, _) in enumerate(ops) if op.name == "EMPTY_LIST"]
    if not starts:
        return None
    memo: dict[int, object] = {}
    last: object = _UNKNOWN  # the value on top of the stack, when an opcode pushed a plain label
    out: list = []
    open_items = False  # items read since the last APPENDS: the list must close before anything else comes
    for i, (op, arg, _) in enumerate(ops):
        name = op.name
        if name == "MEMOIZE":
            memo[len(memo)] = last
            continue
        if name in _PUT_OPS:
            memo[arg] = last
            continue
        value = (
            arg if name in _INT_OPS or name in _STR_OPS else memo.get(arg, _UNKNOWN) if name in _GET_OPS else _UNKNOWN
        )
        last = value
        if i <= starts[-1]:
            continue
        if value is not _UNKNOWN:
            out.append(value)
            open_items = True
        elif name in ("APPENDS", "APPEND"):
            open_items = False
        elif name in _GET_OPS:
            return None  # a reference to something that was not a plain label
        elif name not in _GLUE:
            return None if open_items else out
    return None if open_items else out


def labels(ds: h5py.Dataset) -> tuple[np.ndarray | None, str]:
    """(labels, how they were read) of an ``axis*`` or ``block*_items`` dataset."""
    kind = ds.attrs.get("kind", b"")
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "object" or ds.dtype == object:
        parsed = pickled_labels(bytes(np.asarray(ds[0]).tobytes())) if ds.shape and ds.shape[0] else None
        return (None, "unknown") if parsed is None else (np.asarray(parsed), "pickle-opcodes")
    values = ds[()]
    if values.dtype.kind == "S":
        return values.astype(str), "stored"
    return np.asarray(values), "stored"


@dataclass
class Block:
    items: np.ndarray | None  # column labels (None: unknown)
    how: str
    values: h5py.Dataset
    transposed: bool  # True (pandas' way): on disk [rows, columns]

    @property
    def n_columns(self) -> int:
        return int(self.values.shape[1] if self.transposed else self.values.shape[0])


@dataclass
class FixedFrame:
    """One pandas frame: its blocks, row labels and row count."""

    key: str
    n_rows: int
    index: np.ndarray | None
    blocks: list[Block] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray | None:
        """A single named column (e.g. ``voxel_id``) when one block holds it with readable labels."""
        for b in self.blocks:
            if b.items is not None and name in b.items.astype(str).tolist():
                j = b.items.astype(str).tolist().index(name)
                return b.values[:, j] if b.transposed else b.values[j, :]
        return None

    def widest_float_block(self) -> Block:
        floats = [b for b in self.blocks if b.values.dtype.kind == "f"]
        if not floats:
            raise FrameError(f"frame {self.key!r} has no floating-point columns")
        return max(floats, key=lambda b: b.n_columns)


def open_frame(f: h5py.File, key: str | None) -> FixedFrame:
    """The frame stored under ``key`` (None: the file's only top-level group)."""
    if key is None:
        groups = [k for k in f if isinstance(f[k], h5py.Group)]
        if len(groups) != 1:
            raise FrameError(f"expected one pandas frame at the top level, found groups {groups}; set table_key")
        key = groups[0]
    if key not in f or not isinstance(f[key], h5py.Group):
        raise FrameError(f"no group {key!r} (top level holds {sorted(f)})")
    g = f[key]
    kind = g.attrs.get("pandas_type", b"")
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "frame_table":
        raise FrameError(f"{key!r} was written with format='table'; this reader streams the fixed format (the default)")
    if kind != "frame" or "nblocks" not in g.attrs:
        raise FrameError(f"{key!r} is not a pandas frame (pandas_type {kind or 'missing'!r})")
    index = labels(g["axis1"])[0] if "axis1" in g else None
    blocks = []
    for i in range(int(g.attrs["nblocks"])):
        values = g[f"block{i}_values"]
        if values.ndim != 2:
            raise FrameError(f"{key}/block{i}_values has {values.ndim} dimensions, expected 2")
        items, how = labels(g[f"block{i}_items"])
        blocks.append(Block(items, how, values, bool(values.attrs.get("transposed", True))))
    n_rows = {b.values.shape[0] if b.transposed else b.values.shape[1] for b in blocks}
    if len(n_rows) != 1:
        raise FrameError(f"{key!r}: blocks disagree on the number of rows ({sorted(n_rows)})")
    return FixedFrame(key, n_rows.pop(), index, blocks)


def read_columns(block: Block, start: int, stop: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Columns ``start:stop`` of a block as ``[rows, columns]`` (``rows``: sorted row indices, None: all)."""
    if block.transposed:
        out = block.values[:, start:stop]
        return out if rows is None else out[rows]
    out = block.values[start:stop, :].T
    return out if rows is None else out[rows]
