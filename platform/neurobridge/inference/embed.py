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

CARD = "_embeddings.json"
SPLITS = ("train", "val", "test")
READ_COLUMNS = [
    "dataset",
    "session",
    "subject",
    "task",
    "sample_id",
    "split",
    "t_start",
    "n_units",
    "n_bins",
    "counts",
    "mua",
    "unit_ids",
    "unit_regions",
]
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
    import ray.data

    from neurobridge.config import ensure_ray
    from neurobridge.store.read import sources
    from neurobridge.tracking.registry import resolve

    settings = settings or get_settings()
    if cfg.split is not None and cfg.split not in SPLITS:
        raise StoreError(f"split {cfg.split!r} is not one of {SPLITS}")
    t0 = time.perf_counter()
    info = resolve(cfg.model, settings)  # fails here on a missing alias or a tracking server that is down
    if info.tags.get("kind", "pretrain") != "pretrain":
        from neurobridge.tracking.registry import RegistryError

        raise RegistryError(
            f"{cfg.model} is a registered {info.tags['kind']!r} model; embedding windows needs a pretrain encoder "
            "(an align model maps response vectors: load it with `registry load`)"
        )
    src = sources(settings, [cfg.dataset])[0]
    total = src.rows(cfg.split)
    if total == 0:
        raise StoreError(f"{src.name}@{src.ref.version} has no {cfg.split or ''} windows".replace("  ", " "))
    name = cfg.name or f"{info.name}-v{info.version}-{src.name}-{cfg.split or 'all'}"
    ensure_ray(settings)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # fixed batches in a fixed order: a rerun writes the same numbers
    ctx.enable_progress_bars = False  # the driver shows one bar in windows
    ctx.print_on_execution_start = False
    fs_in, _ = filesystem(src.files[0], settings)
    ds = ray.data.read_parquet([filesystem(u, settings)[1] for u in src.files], filesystem=fs_in, columns=READ_COLUMNS)
    if cfg.split is not None:
        ds = ds.filter(expr=f"split == '{cfg.split}'")
    ds = ds.map_batches(
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

    base = table_dir(settings, name)
    fs, base_path = filesystem(base, settings)
    run = uuid.uuid4().hex[:8]
    files: list[str] = []
    buffer: list[pa.Table] = []
    n_rows = 0
    sessions: dict[str, bool] = {}
    dim = None
    encode_s = 0.0

    def flush() -> None:
        if buffer:
            fname = f"part-{run}-{len(files):05d}.parquet"
            with open_atomic(fs, posixpath.join(base_path, fname)) as f:
                pq.write_table(pa.concat_tables(buffer).cast(SCHEMA), f)
            files.append(fname)
            buffer.clear()

    bar = CountBar(progress, total, "embedding windows")
    try:
        with bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if batch.num_rows == 0:
                    continue
                for s, seen in zip(
                    batch.column("session").to_pylist(), batch.column("seen_session").to_pylist(), strict=True
                ):
                    sessions.setdefault(s, seen)
                dim = len(batch.column("embedding")[0])
                encode_s += float(np.sum(batch.column("encode_s").to_numpy()))
                buffer.append(batch.drop_columns(["seen_session", "encode_s"]))
                n_rows += batch.num_rows
                if sum(t.num_rows for t in buffer) >= cfg.rows_per_part:
                    flush()
                bar.advance(batch.num_rows)
            flush()
    except BaseException:
        for fname in files:  # invisible without a card; removed anyway
            fs.rm(posixpath.join(base_path, fname))
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
        "dim": dim,
        "pooling": "mean of the encoder's token latents over the window (nothing masked)",
        "files": files,
        "counts": {
            "windows": n_rows,
            "sessions": len(sessions),
            "new_sessions": sorted(s for s, seen in sessions.items() if not seen),
        },
        "config": cfg.model_dump(mode="json"),
        "seconds": round(seconds, 3),
        "windows_per_s": round(n_rows / seconds, 2),  # end to end: Ray start, model load, read, write
        # windows per second of encoder time in one worker (collate + forward): the rate a long job runs at per worker
        "encoder_windows_per_s": round(n_rows / encode_s, 2) if encode_s > 0 else None,
    }
    write_json_atomic(fs, posixpath.join(base_path, CARD), card)
    remove_stale_parts(fs, base_path, set(files))
    return EmbedResult(base, card)


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
