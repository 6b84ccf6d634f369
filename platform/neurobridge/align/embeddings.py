"""Image embedding tables: ``<store>/embeddings/<name>/`` (Parquet parts + ``_embeddings.json``) or known arrays.

Like the token store, a table exists for readers only once its card is written, and readers take the card's file
list, never a directory listing, so a run in progress or a stale part from an earlier run is never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurobridge.config import Settings, get_settings
from neurobridge.storage import StoreError, filesystem, join, read_json, safe_name

CARD = "_embeddings.json"
EMBEDDINGS_SCHEMA = pa.schema(
    [
        ("stimulus_id", pa.string()),
        ("path", pa.string()),  # relative to the images root named in the card
        ("embedding", pa.list_(pa.float32())),
        ("model", pa.string()),
    ]
)


class EmbeddingError(ValueError):
    """An embedding table that cannot be used (missing, inconsistent dimensions, duplicate ids)."""


@dataclass
class EmbeddingTable:
    ids: np.ndarray  # [n] str
    vectors: np.ndarray  # [n, dim] float32
    paths: np.ndarray | None = None  # [n] image paths relative to `root`, when known
    root: str | None = None  # images root (URI), for figures
    model: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ids = np.asarray(self.ids).astype(str)
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.ids):
            raise EmbeddingError(f"embeddings have shape {self.vectors.shape} for {len(self.ids)} stimulus ids")
        uniq, counts = np.unique(self.ids, return_counts=True)
        if (counts > 1).any():
            raise EmbeddingError(f"duplicate stimulus ids in the embedding table: {uniq[counts > 1][:5].tolist()}")
        self._index = {s: i for i, s in enumerate(self.ids)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def lookup(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(row index or -1 per id, found mask)."""
        idx = np.array([self._index.get(s, -1) for s in np.asarray(ids).astype(str)], dtype=np.int64)
        return idx, idx >= 0

    def image_uri(self, stimulus_id: str) -> str | None:
        if self.paths is None or self.root is None:
            return None
        i = self._index.get(stimulus_id)
        return None if i is None else join(self.root, str(self.paths[i]))


def table_dir(settings: Settings, name: str) -> str:
    return join(settings.store, "embeddings", safe_name(name))


def read_card(settings: Settings, name: str) -> dict:
    base = table_dir(settings, name)
    fs, path = filesystem(join(base, CARD), settings)
    if not fs.exists(path):
        raise EmbeddingError(f"no embedding table {name!r} at {base} (run `neurobridge embed-images` first)")
    return read_json(fs, path)


def read_embeddings(settings: Settings | None, name: str) -> EmbeddingTable:
    """The table written by ``embed-images`` under ``name``; every part must share the card's dimension."""
    settings = settings or get_settings()
    card = read_card(settings, name)
    base = table_dir(settings, name)
    dim = int(card["dim"])
    ids, paths, vecs = [], [], []
    for rel in card["files"]:
        fs, path = filesystem(join(base, rel), settings)
        with fs.open(path, "rb") as f:
            t = pq.read_table(f)
        col = t.column("embedding").combine_chunks()
        lengths = np.diff(col.offsets.to_numpy())
        if len(lengths) and (lengths != dim).any():
            bad = int(np.flatnonzero(lengths != dim)[0])
            raise EmbeddingError(
                f"{join(base, rel)}: row {bad} ({t.column('stimulus_id')[bad]}) has an embedding of dimension "
                f"{int(lengths[bad])}, but the table's card says {dim}"
            )
        vecs.append(col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim))
        ids.append(t.column("stimulus_id").to_numpy(zero_copy_only=False))
        paths.append(t.column("path").to_numpy(zero_copy_only=False))
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
    return EmbeddingTable(
        np.concatenate(ids) if ids else np.zeros(0, str),
        vectors,
        np.concatenate(paths) if paths else None,
        card.get("images"),
        card.get("model", {}).get("id"),
        card,
    )


def from_arrays(
    npy: str,
    ids: str | list[str],
    settings: Settings | None = None,
    id_prefix: str | None = None,
    images: str | None = None,
    paths: list[str] | None = None,
) -> EmbeddingTable:
    """Known embeddings (the simulator's ``embeddings.npy``) with their ids (a list or a JSON list file)."""
    settings = settings or get_settings()
    fs, path = filesystem(npy, settings)
    with fs.open(path, "rb") as f:
        vectors = np.load(f, allow_pickle=False)
    if isinstance(ids, str):
        ifs, ipath = filesystem(ids, settings)
        ids = json.loads(ifs.cat_file(ipath))
    if not isinstance(ids, list) or not all(isinstance(s, str) for s in ids):
        raise EmbeddingError(f"stimulus ids for {npy} must be a list of strings")
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise EmbeddingError(f"{npy}: array of shape {vectors.shape} for {len(ids)} stimulus ids")
    full = [f"{id_prefix}/{s}" if id_prefix else s for s in ids]
    return EmbeddingTable(np.array(full), vectors, None if paths is None else np.array(paths), images, npy)


def simulation_embeddings(sim_root: str, settings: Settings | None = None, prefix: str = "sim_ns") -> EmbeddingTable:
    """The simulator's known image embeddings, keyed as ingest names them (``sim_ns/frame_000``)."""
    settings = settings or get_settings()
    fs, path = filesystem(join(sim_root, "simulation.json"), settings)
    index = read_json(fs, path)
    images = index.get("images")
    if not images:
        raise EmbeddingError(f"{sim_root}: the simulation has no visual images")
    frames = images.get("frames")
    paths = [posix_name(frames.format(i)) for i in range(images["n_images"])] if frames else None
    return from_arrays(
        join(sim_root, images["embeddings"]),
        images["stimulus_ids"],
        settings,
        prefix,
        images=join(sim_root, "visual/images") if frames else None,
        paths=paths,
    )


def posix_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def resolve_source(src, settings: Settings) -> EmbeddingTable:
    """An ``EmbeddingSource`` config → table."""
    if src.name is not None:
        return read_embeddings(settings, src.name)
    if src.simulation is not None:
        root = (
            src.simulation
            if "://" in src.simulation or src.simulation.startswith("/")
            else join(settings.raw_root, src.simulation)
        )
        return simulation_embeddings(root, settings)
    return from_arrays(src.npy, src.ids, settings, src.id_prefix)


__all__ = [
    "CARD",
    "EMBEDDINGS_SCHEMA",
    "EmbeddingError",
    "EmbeddingTable",
    "StoreError",
    "from_arrays",
    "read_card",
    "read_embeddings",
    "resolve_source",
    "simulation_embeddings",
    "table_dir",
]
