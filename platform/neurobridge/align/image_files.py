"""The images an embedding job reads: files under any fsspec URI, their stimulus ids, and what was left out.

Only names are listed here (no image is opened). Stimulus ids are ``<id-prefix>/<path relative to the root>``
(optionally without the extension), or come from a JSON/CSV mapping; two files with one id are refused.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath

from neurobridge.align.config import EmbedConfig
from neurobridge.config import Settings
from neurobridge.storage import filesystem


class EmbedError(RuntimeError):
    """The embedding job cannot run or produced too little (the message says why and names files)."""


def stimulus_ids(rel: list[str], cfg: EmbedConfig, mapping: dict[str, str] | None) -> tuple[list, list[str]]:
    """Stimulus id per relative path (None when a mapping does not list it) and the unmapped paths."""
    out, unmapped = [], []
    for r in rel:
        if mapping is not None:
            sid = mapping.get(r)
            if sid is None:
                unmapped.append(r)
            out.append(sid)
            continue
        sid = posixpath.splitext(r)[0] if cfg.strip_extension else r
        out.append(f"{cfg.id_prefix.rstrip('/')}/{sid}" if cfg.id_prefix else sid)
    return out, unmapped


def read_mapping(uri: str, settings: Settings) -> dict[str, str]:
    """A JSON object {relative path: stimulus id} or a CSV with columns path,stimulus_id."""
    fs, path = filesystem(uri, settings)
    if not fs.exists(path):
        raise EmbedError(f"mapping {uri} does not exist")
    text = fs.cat_file(path).decode("utf-8")
    if path.lower().endswith(".json"):
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise EmbedError(f"mapping {uri}: expected a JSON object of relative path → stimulus id")
        return {str(k): v for k, v in data.items()}
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"path", "stimulus_id"} <= set(rows[0]):
        raise EmbedError(f"mapping {uri}: expected CSV columns path,stimulus_id")
    return {r["path"]: r["stimulus_id"] for r in rows}


def list_images(cfg: EmbedConfig, settings: Settings) -> tuple[list[dict], dict]:
    """Image files under ``cfg.images`` (listing metadata only), their stimulus ids, and what was left out."""
    fs, root = filesystem(cfg.images, settings)
    root = root.rstrip("/")
    if not fs.exists(root):
        raise EmbedError(f"images root {cfg.images} does not exist")
    found = sorted(fs.find(root, withdirs=False))
    rel_all = [p[len(root) + 1 :] if p.startswith(root + "/") else posixpath.basename(p) for p in found]
    ext = tuple(cfg.extensions)
    keep = [
        i
        for i, r in enumerate(rel_all)
        if r.lower().endswith(ext) and not any(part.startswith(".") for part in r.split("/"))
    ]
    rel = [rel_all[i] for i in keep]
    mapping = read_mapping(cfg.mapping, settings) if cfg.mapping else None
    ids, unmapped = stimulus_ids(rel, cfg, mapping)
    rows = [{"path": found[i], "rel": r, "stimulus_id": s} for i, r, s in zip(keep, rel, ids, strict=True) if s]
    seen: dict[str, str] = {}
    for row in rows:
        other = seen.setdefault(row["stimulus_id"], row["rel"])
        if other != row["rel"]:
            raise EmbedError(f"{other} and {row['rel']} both map to stimulus id {row['stimulus_id']!r}")
    left_out = {"ignored": len(rel_all) - len(rel), "unmapped": unmapped}
    if mapping is not None:
        left_out["mapping_without_file"] = len(set(mapping) - set(rel))
    return rows, left_out
