"""DataLad datasets as ingest sources: clone once (metadata only), fetch only the files an item reads.

Where this runs: the driver clones the dataset in ``discover`` (git metadata: seconds, no content) so that it
can list items and fingerprint them from git-annex keys. Each Ray worker then calls :func:`ensure_clone` again
(a no-op when the path is already a clone, e.g. the same node or a shared filesystem; a clone of its own on a
node whose disk does not hold one) and ``datalad get``s exactly its item's files, so the heavy content goes
straight to the node that reads it and monkeys download in parallel. A file lock serialises clones of one path.
DataLad needs a POSIX path: the clone target must be local (node-local disk or a shared filesystem).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from neurobridge.sources.base import SourceError


def is_dataset(path: Path) -> bool:
    return (path / ".git").exists()


def ensure_clone(target: Path, source: str | None) -> bool:
    """Clone ``source`` into ``target`` unless it is already a dataset; returns whether ``target`` is one.

    An existing folder that is not a git repository is used as it is (plain files, e.g. a manual download).
    """
    if is_dataset(target):
        return True
    if target.exists() and any(target.iterdir()):
        return False
    if source is None:
        raise SourceError(f"{target}: no such dataset, and the entry names no datalad url to clone it from")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.nb-clone.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # concurrent workers on one node: one clones, the others wait
        try:
            if not is_dataset(target):
                import datalad.api as dl

                try:
                    dl.clone(source=source, path=str(target), result_renderer="disabled")
                except Exception as err:  # datalad raises IncompleteResultsError and friends
                    raise SourceError(f"{target}: datalad clone of {source} failed: {err}") from None
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def annex_key(path: Path) -> str | None:
    """The git-annex key of an annexed file, from its symlink target (no content read, content may be absent)."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    parts = Path(target).parts
    return parts[-1] if ".git" in parts and "annex" in parts and "objects" in parts else None


def file_fingerprint(path: Path) -> str:
    """Annex key (a content hash) when annexed; size and mtime for plain files; ``missing`` otherwise."""
    key = annex_key(path)
    if key:
        return key
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def fingerprint_files(paths: list[Path]) -> str:
    blob = "|".join(f"{p.name}={file_fingerprint(p)}" for p in paths)
    return "annex:" + hashlib.sha256(blob.encode()).hexdigest()[:20]


def get_files(dataset: Path, files: list[Path], item: str) -> None:
    """``datalad get`` exactly ``files``; a file that is still absent afterwards is an error naming it."""
    missing_entry = [f for f in files if not os.path.lexists(f)]
    if missing_entry:
        raise SourceError(f"{item}: {missing_entry[0].name} is not in the dataset ({missing_entry[0]})")
    need = [f for f in files if not f.exists()]  # an annexed file without content is a dangling symlink
    if not need:
        return
    import datalad.api as dl

    results = dl.get(path=[str(f) for f in need], dataset=str(dataset), result_renderer="disabled", on_failure="ignore")
    for f in need:
        if not f.exists():
            why = next((r.get("message") for r in results if r.get("path") == str(f) and r.get("message")), None)
            raise SourceError(f"{item}: datalad get {f.relative_to(dataset)} failed: {why or 'content not available'}")
