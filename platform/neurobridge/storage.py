"""fsspec resolution and commit helpers shared by the simulator, ingest and readers.

Object stores have no atomic rename, so completeness is never inferred from the presence of data files: a
version is complete only once its card (``_dataset.json``) exists, and the card is the last object written.
Single objects are written whole (a local temp file renamed into place, or one S3 PUT).
"""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from neurobridge.config import Settings, get_settings


class StoreError(ValueError):
    """A store path or object that cannot be used."""


def filesystem(uri: str, settings: Settings | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)`` for any URI, with the project's S3 endpoint applied."""
    settings = settings or get_settings()
    fs, path = url_to_fs(uri, **settings.storage_options(uri))
    return fs, path


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    """Join store path components, refusing any that would escape ``base``."""
    for part in parts:
        norm = posixpath.normpath(part) if part else part
        if not part or part.startswith("/") or norm == ".." or norm.startswith("../") or "\\" in part:
            raise StoreError(f"path component {part!r} escapes the store root {base!r}")
    return posixpath.join(base.rstrip("/"), *parts)


def safe_name(name: str) -> str:
    """A name that is a single, harmless path component."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or name.startswith("."):
        raise StoreError(f"{name!r} is not a valid store name (no '/', '..' or leading '.')")
    return name


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write one object so that readers see either nothing or all of it."""
    with open_atomic(fs, path) as f:
        f.write(data)


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, obj: Any, sort_keys: bool = True) -> None:
    """JSON written whole; keys sorted unless the writer's order means something (the card puts ``status`` first)."""
    write_bytes_atomic(fs, path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str).encode())


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in {"file", "local"}


class open_atomic:  # noqa: N801 - used as a context manager like open()
    """Write a large object (e.g. a Parquet part) so that a crash never leaves a complete-looking file.

    Local: a temp name renamed on success. Object stores: the upload completes only on a clean close and is
    aborted (``discard``) on error, so a half-written object never appears.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self.fs, self.path = fs, path
        self.local = is_local_fs(fs)
        self.target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if self.local else path

    def __enter__(self):
        if self.local:
            self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        self.f = self.fs.open(self.target, "wb")
        return self.f

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.f.close()
            if self.local:
                self.fs.mv(self.target, self.path)
            return False
        discard = getattr(self.f, "discard", None)
        if discard is not None and not self.local:
            discard()
        else:
            self.f.close()
            if self.local and self.fs.exists(self.target):
                self.fs.rm(self.target)
        return False


def remove_stale_parts(fs, base_path: str, keep: set[str]) -> None:
    """``part-*`` files of earlier runs (not in ``keep``, the new card's list) are deleted once that card is in
    place, so a reader never sees a card whose parts are missing."""
    fs.invalidate_cache(base_path)
    for p in fs.ls(base_path, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("part-") and name not in keep:
            fs.rm(p)
