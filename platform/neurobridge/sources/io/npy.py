""".npy arrays read by range: memory-mapped on local disks, byte ranges through fsspec elsewhere (S3), after
parsing the header, so a large array streams without being read whole. Object arrays are refused
(``allow_pickle=False`` everywhere: input is never unpickled).
"""

from __future__ import annotations

import numpy as np

from neurobridge.sources.base import SourceError
from neurobridge.storage import is_local_fs


class NpyRange:
    """A ``.npy`` array read by ranges: memory-mapped locally, byte ranges through fsspec otherwise."""

    def __init__(self, fs, path: str, label: str):
        self.label = label
        try:
            if is_local_fs(fs):
                self._f = None
                self._arr = np.load(path, mmap_mode="r", allow_pickle=False)
                self.dtype, self.shape = self._arr.dtype, self._arr.shape
            else:
                self._arr = None
                self._f = fs.open(path, "rb", block_size=8 << 20, cache_type="readahead")
                version = np.lib.format.read_magic(self._f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                self.shape, fortran, self.dtype = read_header(self._f)
                if fortran and len(self.shape) > 1:
                    raise SourceError(f"{label}: Fortran-ordered arrays are not supported")
                self._offset = self._f.tell()
        except FileNotFoundError:
            raise SourceError(f"{label}: file not found") from None
        except ValueError as err:
            raise SourceError(f"{label}: not a readable .npy array (object arrays are refused): {err}") from None
        if self.dtype.hasobject:
            raise SourceError(f"{label}: stores Python objects; refusing to unpickle input")

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    @property
    def mapped(self) -> np.ndarray | None:
        """The memory map of a local file (slices of it read only what they touch); None for remote files."""
        return self._arr

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, len(self))
        start = min(start, stop)
        if self._arr is not None:
            return np.array(self._arr[start:stop])
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._f.seek(self._offset + start * row)
        buf = self._f.read((stop - start) * row)
        if len(buf) != (stop - start) * row:
            raise SourceError(f"{self.label}: truncated .npy file (expected {stop - start} more rows)")
        return np.frombuffer(buf, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def load_npy(fs, path: str, label: str) -> np.ndarray:
    """A whole (small) ``.npy`` array; ``label`` names it in errors."""
    arr = NpyRange(fs, path, label)
    try:
        return arr.read(0, len(arr))
    finally:
        arr.close()
