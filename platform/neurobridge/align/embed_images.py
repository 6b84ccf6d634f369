"""`neurobridge embed-images`: images under any fsspec URI → CLIP image embeddings in the store (Ray Data).

The driver only lists file names (``align/image_files.py``). Ray Data streams them through two stages of tasks
(``align/clip_stages.py``): CPU tasks read the bytes (concurrently for object stores), decode with PIL and
preprocess with the model's image processor; model tasks (on a GPU when the cluster has one) embed fixed-size
batches. Each worker process loads the processor or model once and keeps it (Ray reuses task workers), which is
what an actor pool would give, and a second job in the same session starts warm. The driver consumes the stream
and writes Parquet parts as it goes, so memory does not grow with the number of images. Images that fail to
decode are named, skipped and counted in the card, which is written last and lists the parts.
"""

from __future__ import annotations

import posixpath
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurobridge import __version__
from neurobridge.align.clip_stages import decode_batch, embed_batch, model_info
from neurobridge.align.config import EmbedConfig
from neurobridge.align.embeddings import CARD, EMBEDDINGS_SCHEMA, table_dir
from neurobridge.align.image_files import EmbedError, list_images
from neurobridge.config import Settings, get_settings
from neurobridge.console import CountBar
from neurobridge.storage import filesystem, open_atomic, remove_stale_parts, write_json_atomic

MAX_LISTED = 200  # failures / unmapped files named in the card (all are counted)


@dataclass
class EmbedReport:
    name: str
    path: str
    card: dict
    seconds: float
    failed: list[dict] = field(default_factory=list)  # the first MAX_LISTED failures (all are counted in the card)

    @property
    def images_per_s(self) -> float:
        return self.card["counts"]["embedded"] / self.seconds if self.seconds > 0 else float("nan")


def embed_images(cfg: EmbedConfig, settings: Settings | None = None, progress: bool = True) -> EmbedReport:
    """Run the job; returns the report (the card is also at ``<store>/embeddings/<name>/_embeddings.json``)."""
    settings = settings or get_settings()
    t0 = time.perf_counter()
    info = model_info(cfg, settings)
    rows, left_out = list_images(cfg, settings)
    if not rows:
        raise EmbedError(f"no image files ({', '.join(cfg.extensions)}) under {cfg.images}")
    ds, gpu = _embedding_stream(cfg, settings, rows, info["image_size"])
    base = table_dir(settings, cfg.name)
    fs, base_path = filesystem(base, settings)
    parts = _PartWriter(fs, base_path, cfg.model, cfg.rows_per_part)
    try:
        tally = _consume(ds, cfg, parts, len(rows), progress)
        tally.check(cfg)
    except BaseException:
        parts.remove()  # this run's parts are invisible without a card; remove them anyway
        raise
    seconds = time.perf_counter() - t0
    card = {
        "name": cfg.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": __version__,
        "images": cfg.images,
        "model": info,
        "processor": cfg.processor or cfg.model,
        "dim": info["projection_dim"],
        "normalized": cfg.normalize,
        "config": cfg.model_dump(mode="json"),
        "files": parts.files,
        "counts": tally.counts(left_out),
        "failed": tally.failed[:MAX_LISTED],
        "unmapped": left_out["unmapped"][:MAX_LISTED],
        "seconds": round(seconds, 3),
        "images_per_s": round(tally.embedded / seconds, 3),
        # after the first batch arrived (workers started, model loaded): the rate a long job runs at
        "steady_images_per_s": tally.steady_rate(),
        "device": "gpu" if gpu else "cpu",
    }
    write_json_atomic(fs, posixpath.join(base_path, CARD), card)
    remove_stale_parts(fs, base_path, set(parts.files))
    return EmbedReport(cfg.name, base, card, seconds, tally.failed)


def _embedding_stream(cfg: EmbedConfig, settings: Settings, rows: list[dict], image_size: int):
    """The Ray Data plan over the listed files (decode on CPUs, then embed, on a GPU when there is one) and whether
    it uses a GPU; nothing runs until the driver iterates it."""
    import ray.data

    from neurobridge.config import ensure_ray

    ensure_ray(settings)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows its own bar (images, failures)
    ctx.print_on_execution_start = False
    gpu = _use_gpu(cfg)
    args = {"cfg_json": cfg.model_dump_json(), "settings_json": settings.model_dump_json()}
    blocks = max(1, min(-(-len(rows) // cfg.batch_size), 64 * cfg.decode_workers))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        decode_batch,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        num_cpus=cfg.decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=min(cfg.decode_workers, blocks)),
        fn_kwargs={**args, "image_size": image_size},
    )
    ds = ds.map_batches(
        embed_batch,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        num_cpus=cfg.embed_cpus,
        num_gpus=1 if gpu else 0,
        compute=ray.data.TaskPoolStrategy(size=min(cfg.embed_workers, blocks)),
        fn_kwargs=args,
    )
    return ds, gpu


def _use_gpu(cfg: EmbedConfig) -> bool:
    import ray

    if cfg.device == "cpu":
        return False
    has = ray.cluster_resources().get("GPU", 0) > 0
    if cfg.device == "cuda" and not has:
        raise EmbedError("device is 'cuda' but the Ray cluster has no GPU")
    return has


def _write_part(fs, base: str, name: str, rows: list[dict], model: str) -> None:
    ids = [s for r in rows for s in r["stimulus_id"]]
    table = pa.table(
        {
            "stimulus_id": pa.array(ids, pa.string()),
            "path": pa.array([s for r in rows for s in r["rel"]], pa.string()),
            "embedding": pa.ListArray.from_arrays(
                pa.array(np.arange(len(ids) + 1, dtype=np.int32) * rows[0]["embedding"].shape[1]),
                pa.array(np.concatenate([r["embedding"] for r in rows]).ravel(), pa.float32()),
            ),
            "model": pa.array([model] * len(ids), pa.string()),
        },
        schema=EMBEDDINGS_SCHEMA,
    )
    with open_atomic(fs, posixpath.join(base, name)) as f:
        pq.write_table(table, f)


class _PartWriter:
    """Embedded rows buffered and written as Parquet parts of at least ``rows_per_part`` rows, named by this run."""

    def __init__(self, fs, base_path: str, model: str, rows_per_part: int):
        self.fs, self.base_path, self.model, self.rows_per_part = fs, base_path, model, rows_per_part
        self.run = uuid.uuid4().hex[:8]
        self.files: list[str] = []
        self.buffer: list[dict] = []
        self.buffered = 0

    def add(self, rows: dict, n: int) -> None:
        self.buffer.append(rows)
        self.buffered += n
        if self.buffered >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if self.buffered:
            name = f"part-{self.run}-{len(self.files):05d}.parquet"
            _write_part(self.fs, self.base_path, name, self.buffer, self.model)
            self.files.append(name)
        self.buffer, self.buffered = [], 0

    def remove(self) -> None:
        for name in self.files:
            self.fs.rm(posixpath.join(self.base_path, name))


@dataclass
class _Tally:
    """What the driver counted while consuming the stream: images listed, embedded and failed (the first
    MAX_LISTED failures named), whether it stopped early, and when the first and last batches arrived."""

    listed: int
    embedded: int = 0
    n_failed: int = 0
    failed: list[dict] = field(default_factory=list)
    stopped: bool = False
    t_first: float | None = None
    t_last: float | None = None
    first_rows: int = 0

    def count_failures(self, batch: dict) -> np.ndarray:
        """The batch's rows that embedded; failures counted and the first ones named."""
        err = np.asarray(batch["error"], dtype=object)
        ok = err == ""
        self.n_failed += int((~ok).sum())
        for i in np.flatnonzero(~ok)[: max(0, MAX_LISTED - len(self.failed))]:
            self.failed.append({"path": str(batch["rel"][i]), "error": str(err[i])})
        return ok

    def too_many_failed(self, cfg: EmbedConfig) -> bool:
        return self.n_failed > cfg.max_failed_fraction * self.listed

    def arrived(self, n: int) -> None:
        self.t_last = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.first_rows = self.t_last, n

    def check(self, cfg: EmbedConfig) -> None:
        """Refuse a job that embedded nothing or lost more than ``max_failed_fraction`` of its images."""
        if self.embedded == 0 or self.too_many_failed(cfg):
            names = "; ".join(f"{f['path']}: {f['error']}" for f in self.failed[:5])
            raise EmbedError(
                f"{self.n_failed} of {self.listed} images under {cfg.images} failed (max_failed_fraction "
                f"{cfg.max_failed_fraction}{'; stopped early' if self.stopped else ''}); first: {names}"
            )

    def counts(self, left_out: dict) -> dict:
        return {
            "listed": self.listed,
            "embedded": self.embedded,
            "failed": self.n_failed,
            "unmapped": len(left_out["unmapped"]),
            "ignored": left_out["ignored"],
            **(
                {"mapping_without_file": left_out["mapping_without_file"]} if "mapping_without_file" in left_out else {}
            ),
        }

    def steady_rate(self) -> float | None:
        """Images/s after the first batch arrived (workers started, model loaded)."""
        if self.t_first is None or not self.t_last > self.t_first:
            return None
        return round((self.listed - self.first_rows) / (self.t_last - self.t_first), 3)


def _consume(ds, cfg: EmbedConfig, parts: _PartWriter, listed: int, progress: bool) -> _Tally:
    """Drive the stream: count failures, buffer embedded rows into parts, stop as soon as the job cannot succeed."""
    tally = _Tally(listed)
    with CountBar(progress, listed, "embedding images", failed=0) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ok = tally.count_failures(batch)
            if tally.too_many_failed(cfg):  # stop now: the job cannot succeed
                tally.stopped = True
                break
            if ok.any():
                parts.add({k: np.asarray(batch[k])[ok] for k in ("stimulus_id", "rel", "embedding")}, int(ok.sum()))
                tally.embedded += int(ok.sum())
            bar.advance(len(ok), failed=tally.n_failed)
            tally.arrived(len(ok))
        parts.flush()
    return tally
