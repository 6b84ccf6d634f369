"""Catalog files → typed entries: one YAML file per source (or a list under ``entries:``).

Validation errors name the file, the entry, the field and a fix, because the people editing these files are
neuroscientists, not pydantic users. Errors of one file never hide the entries of another.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from neurobridge.catalog.entry import CatalogEntry, CatalogError, unknown_kind
from neurobridge.config import describe_validation_error


def parse_entry(item: dict, label: str, source: str) -> CatalogEntry:
    """One entry mapping → its kind's model; raises CatalogError with the file, entry, field and fix."""
    kind = item.get("kind")
    if kind is None:
        raise CatalogError(f"{label}: field 'kind' is required; add it")
    if kind not in CatalogEntry.KINDS:
        raise CatalogError(f"{label}: field 'kind': {unknown_kind(kind)}")
    model = CatalogEntry.KINDS[kind]
    try:
        return model(**item, source_file=source)
    except ValidationError as err:
        raise CatalogError(describe_validation_error(err, model, label)) from None


def parse_entries(data: object, source: str) -> list[CatalogEntry]:
    if isinstance(data, dict) and "entries" in data:
        raw = data["entries"]
    elif isinstance(data, list):
        raw = data
    else:
        raw = [data]
    if not isinstance(raw, list) or not raw:
        raise CatalogError(f"{source}: expected an entry mapping or a non-empty list under 'entries:'")
    entries, errors = [], []
    for i, item in enumerate(raw):
        label = f"{source}: entry {item.get('name', i) if isinstance(item, dict) else i}"
        if not isinstance(item, dict):
            errors.append(f"{label}: expected a mapping of fields, got {type(item).__name__}")
            continue
        try:
            entries.append(parse_entry(item, label, source))
        except CatalogError as err:
            errors.append(str(err))
    if errors:
        raise CatalogError("\n".join(errors))
    return entries


def load_file(path: str | Path) -> list[CatalogEntry]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"{path}: no such catalog file") from None
    except yaml.YAMLError as err:
        raise CatalogError(f"{path}: not valid YAML: {err}") from None
    return parse_entries(data, str(path))


def catalog_dir() -> Path:
    return Path(os.environ.get("NB_CATALOG", "catalog"))


def _scan(directory: Path) -> tuple[dict[str, list[CatalogEntry]], list[str]]:
    """Every valid file's entries by name (a name in two files lists both) and each invalid file's errors."""
    if not directory.is_dir():
        raise CatalogError(f"{directory}: catalog directory not found (set NB_CATALOG or run from the repo root)")
    entries: dict[str, list[CatalogEntry]] = {}
    errors = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            for entry in load_file(path):
                entries.setdefault(entry.name, []).append(entry)
        except CatalogError as err:
            errors.append(str(err))
    return entries, errors


def _twice(name: str, found: list[CatalogEntry]) -> str:
    return f"{found[1].source_file}: entry name {name!r} also in {found[0].source_file}"


def load_catalog(directory: str | Path | None = None) -> dict[str, CatalogEntry]:
    """All entries of a catalog directory by name; every file's errors are reported together."""
    found, errors = _scan(Path(directory) if directory else catalog_dir())
    errors += [_twice(name, e) for name, e in found.items() if len(e) > 1]
    if errors:
        raise CatalogError("\n".join(errors))
    return {name: e[0] for name, e in found.items()}


def resolve(ref: str, directory: str | Path | None = None) -> list[CatalogEntry]:
    """Entries named by ``ref``: a YAML path, a catalog file stem (``demo``), or an entry name."""
    if ref.endswith((".yaml", ".yml")) or os.sep in ref:
        return load_file(ref)
    directory = Path(directory) if directory else catalog_dir()
    file = directory / f"{ref}.yaml"
    if file.exists():
        return load_file(file)
    found, errors = _scan(directory)  # an invalid file elsewhere in the folder does not hide this entry
    if len(found.get(ref, [])) > 1:
        raise CatalogError(_twice(ref, found[ref]))
    if ref in found:
        return found[ref]
    names = sorted(found) + sorted(p.stem for p in directory.glob("*.yaml"))
    hint = difflib.get_close_matches(ref, names, n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    unread = "\n(it may be in a file that could not be read:)\n" + "\n".join(errors) if errors else ""
    raise CatalogError(f"no catalog file or entry named {ref!r} in {directory}{extra}{unread}")
