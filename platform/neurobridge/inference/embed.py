"""`neurobridge embed`: a registered encoder over a dataset's windows → one pooled latent per window, in the store.

The driver pins the ``models:/`` URI to one version (an alias moved mid-job never mixes versions), then Ray Data
streams the dataset's Parquet rows through ``workers`` tasks at a time; each worker process loads the registered
pyfunc once and keeps it (Ray reuses task workers, as an actor pool would; a second job starts warm), weights read
with ``weights_only=True``, and embeds fixed-size batches in order, so a rerun writes the same numbers. The
driver writes Parquet parts as batches arrive and the card ``_embeddings.json`` last, listing the parts: a table
exists for readers only once its card does, as in the token store.
"""

from __future__ import annotations

import posixpath
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from neurobridge import __version__
from neurobridge.config import Settings, get_settings
from neurobridge.console import CountBar
from neurobridge.storage import (
    StoreError,
    filesystem,
    join,
    open_atomic,
    remove_stale_parts,
    safe_name,
    write_json_atomic,
)
from neurobridge.store.rows import CONTEXT_COLUMNS, GRID_COLUMNS

CARD = "_embeddings.json"
SPLITS = ("train", "val", "test")
READ_COLUMNS = [*CONTEXT_COLUMNS, "t_start", *GRID_COLUMNS]
SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("dataset", pa.string()),
        ("session", pa.string()),
        ("t_start", pa.float64()),
        ("embedding", pa.list_(pa.float32())),
        ("model_uri", pa.string()),
        ("model_version", pa.string()),
    ]
)


class EmbedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="models:/<name>@<alias> or models:/<name>/<version>")
    dataset: str = Field(description="dataset ref in the token store: name or name@version")
    split: str | None = Field(None, description="train | val | test; None: every window")
    name: str | None = Field(
        None,
        description="output table <store>/embeddings_neural/<name>/; default from the model version, dataset and split",
    )
    batch_size: int = Field(64, ge=1, description="windows per encoder call")
    workers: int = Field(1, ge=1, description="embedding tasks in flight, each process holding one copy of the model")
    rows_per_part: int = Field(20_000, ge=1)


@dataclass
class EmbedResult:
    path: str
    card: dict

    @property
    def windows_per_s(self) -> float:
        return self.card["windows_per_s"]


def table_dir(settings: Settings, name: str) -> str:
    return join(settings.store, "embeddings_neural", safe_name(name))


_LOADED: dict[str, object] = {}  # per worker process: Ray reuses task workers, so a model loads once per process


def _encoder(source: str, mlflow_uri: str):
    if source not in _LOADED:
        import tempfile

        import mlflow.artifacts
        import mlflow.pyfunc

        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, tracking_uri=mlflow_uri, dst_path=tempfile.mkdtemp(prefix="nb-embed-")
        )
        encoder = mlflow.pyfunc.load_model(local).unwrap_python_model().encoder
        _LOADED.clear()  # one model per process
        _LOADED[source] = (encoder, frozenset(encoder.vocabs.session.to_list()))
    return _LOADED[source]


def embed_batch(batch: pa.Table, source: str, mlflow_uri: str, model_uri: str, version: str) -> pa.Table:
    """Ray Data task: Arrow windows → their embeddings (the registered model, loaded once per worker process)."""
    from neurobridge.store.rows import table_rows

    encoder, known = _encoder(source, mlflow_uri)
    t0 = time.perf_counter()
    rows = table_rows(batch)
    emb = encoder.embed_rows(rows).astype(np.float32)
    per_row = (time.perf_counter() - t0) / max(len(rows), 1)
    n, d = emb.shape
    sessions = [r["session"] for r in rows]
    return pa.table(
        {
            "sample_id": batch.column("sample_id"),
            "dataset": batch.column("dataset"),
            "session": pa.array(sessions, pa.string()),
            "t_start": batch.column("t_start").cast(pa.float64()),
            "embedding": pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * d), pa.array(emb.ravel())
            ),
            "model_uri": pa.array([model_uri] * n, pa.string()),
            "model_version": pa.array([version] * n, pa.string()),
            "seen_session": pa.array([s in known for s in sessions], pa.bool_()),  # known before this job
            "encode_s": pa.array([per_row] * n, pa.float64()),  # for the card's encoder rate; not written
        }
    )


def embed(cfg: EmbedConfig, settings: Settings | None = None, progress: bool = True) -> EmbedResult:
    settings = settings or get_settings()
    if cfg.split is not None and cfg.split not in SPLITS:
        raise StoreError(f"split {cfg.split!r} is not one of {SPLITS}")
    t0 = time.perf_counter()
    info = _pretrain_encoder(cfg, settings)
    src, total = _source(cfg, settings)
    name = cfg.name or f"{info.name}-v{info.version}-{src.name}-{cfg.split or 'all'}"
    ds = _embedding_stream(cfg, settings, src, info)
    base = table_dir(settings, name)
    fs, base_path = filesystem(base, settings)
    parts = _PartWriter(fs, base_path, cfg.rows_per_part)
    try:
        _consume(ds, parts, total, progress)
    except BaseException:
        parts.remove()  # invisible without a card; removed anyway
        raise
    seconds = time.perf_counter() - t0
    card = {
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": __version__,
        "model": {
            "requested": cfg.model,
            "uri": info.uri,
            "name": info.name,
            "version": info.version,
            "run_id": info.run_id,
            "lineage": info.lineage(),
        },
        "dataset": {"name": src.name, "version": src.ref.version},
        "split": cfg.split,
        "dim": parts.dim,
        "pooling": "mean of the encoder's token latents over the window (nothing masked)",
        "files": parts.files,
        "counts": {
            "windows": parts.n_rows,
            "sessions": len(parts.sessions),
            "new_sessions": sorted(s for s, seen in parts.sessions.items() if not seen),
        },
        "config": cfg.model_dump(mode="json"),
        "seconds": round(seconds, 3),
        "windows_per_s": round(parts.n_rows / seconds, 2),  # end to end: Ray start, model load, read, write
        # windows per second of encoder time in one worker (collate + forward): the rate a long job runs at per worker
        "encoder_windows_per_s": round(parts.n_rows / parts.encode_s, 2) if parts.encode_s > 0 else None,
    }
    write_json_atomic(fs, posixpath.join(base_path, CARD), card)
    remove_stale_parts(fs, base_path, set(parts.files))
    return EmbedResult(base, card)


def _pretrain_encoder(cfg: EmbedConfig, settings: Settings):
    """The registered version ``cfg.model`` resolves to now (pinned for the whole job); refused unless it is a
    pretrain encoder. Fails here on a missing alias or a tracking server that is down."""
    from neurobridge.tracking.registry import resolve

    info = resolve(cfg.model, settings)
    if info.tags.get("kind", "pretrain") != "pretrain":
        from neurobridge.tracking.registry import RegistryError

        raise RegistryError(
            f"{cfg.model} is a registered {info.tags['kind']!r} model; embedding windows needs a pretrain encoder "
            "(an align model maps response vectors: load it with `registry load`)"
        )
    return info


def _source(cfg: EmbedConfig, settings: Settings):
    """The dataset version to embed and its windows in the requested split; refused when there are none."""
    from neurobridge.store.read import sources

    src = sources(settings, [cfg.dataset])[0]
    total = src.rows(cfg.split)
    if total == 0:
        raise StoreError(f"{src.name}@{src.ref.version} has no {cfg.split or ''} windows".replace("  ", " "))
    return src, total


def _embedding_stream(cfg: EmbedConfig, settings: Settings, src, info):
    """The Ray Data plan: the dataset's Parquet rows (one split or all), embedded by ``workers`` tasks in a fixed
    order; nothing runs until the driver iterates it."""
    import ray.data

    from neurobridge.config import ensure_ray

    ensure_ray(settings)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # fixed batches in a fixed order: a rerun writes the same numbers
    ctx.enable_progress_bars = False  # the driver shows one bar in windows
    ctx.print_on_execution_start = False
    fs_in, _ = filesystem(src.files[0], settings)
    ds = ray.data.read_parquet([filesystem(u, settings)[1] for u in src.files], filesystem=fs_in, columns=READ_COLUMNS)
    if cfg.split is not None:
        ds = ds.filter(expr=f"split == '{cfg.split}'")
    return ds.map_batches(
        embed_batch,
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=cfg.workers),
        fn_kwargs={
            "source": info.source,
            "mlflow_uri": settings.mlflow_uri,
            "model_uri": info.uri,
            "version": info.version,
        },
    )


class _PartWriter:
    """Embedded windows buffered and written as Parquet parts of at least ``rows_per_part`` rows (named by this
    run), and what the card reports of them: rows, dimension, sessions (and whether the model knew each before this
    job), and the encoder's own seconds."""

    def __init__(self, fs, base_path: str, rows_per_part: int):
        self.fs, self.base_path, self.rows_per_part = fs, base_path, rows_per_part
        self.run = uuid.uuid4().hex[:8]
        self.files: list[str] = []
        self.buffer: list[pa.Table] = []
        self.n_rows = 0
        self.sessions: dict[str, bool] = {}
        self.dim: int | None = None
        self.encode_s = 0.0

    def add(self, batch: pa.Table) -> None:
        sessions, seen = batch.column("session").to_pylist(), batch.column("seen_session").to_pylist()
        for s, known in zip(sessions, seen, strict=True):
            self.sessions.setdefault(s, known)
        self.dim = len(batch.column("embedding")[0])
        self.encode_s += float(np.sum(batch.column("encode_s").to_numpy()))
        self.buffer.append(batch.drop_columns(["seen_session", "encode_s"]))
        self.n_rows += batch.num_rows
        if sum(t.num_rows for t in self.buffer) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            fname = f"part-{self.run}-{len(self.files):05d}.parquet"
            with open_atomic(self.fs, posixpath.join(self.base_path, fname)) as f:
                pq.write_table(pa.concat_tables(self.buffer).cast(SCHEMA), f)
            self.files.append(fname)
            self.buffer.clear()

    def remove(self) -> None:
        for fname in self.files:
            self.fs.rm(posixpath.join(self.base_path, fname))


def _consume(ds, parts: _PartWriter, total: int, progress: bool) -> None:
    """Drive the stream, writing parts as batches arrive."""
    with CountBar(progress, total, "embedding windows") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if batch.num_rows == 0:
                continue
            parts.add(batch)
            bar.advance(batch.num_rows)
        parts.flush()


def read_embeddings(settings: Settings, name: str) -> tuple[pa.Table, dict]:
    """The table and its card; the card's file list decides what is read (never a listing)."""
    from neurobridge.storage import read_json

    fs, base_path = filesystem(table_dir(settings, name), settings)
    if not fs.exists(posixpath.join(base_path, CARD)):
        raise StoreError(f"no embeddings table {name!r} (no {CARD} under {table_dir(settings, name)})")
    card = read_json(fs, posixpath.join(base_path, CARD))
    parts = []
    for fname in card["files"]:
        with fs.open(posixpath.join(base_path, fname), "rb") as f:
            parts.append(pq.read_table(f))
    return (pa.concat_tables(parts) if parts else SCHEMA.empty_table()), card
