"""`neurobridge embed-images`: images under any fsspec URI → CLIP image embeddings in the store (Ray Data).

The driver only lists file names. Ray Data streams them through two stages of tasks: CPU tasks read the bytes
(concurrently for object stores), decode with PIL and preprocess with the model's image processor; model tasks
(on a GPU when the cluster has one) embed fixed-size batches. Each worker process loads the processor or model
once and keeps it (Ray reuses task workers), which is what an actor pool would give, and a second job in the same
session starts warm. The driver consumes the stream and writes Parquet
parts as it goes, so memory does not grow with the number of images. Images that fail to decode are named,
skipped and counted in the card, which is written last and lists the parts.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurobridge import __version__
from neurobridge.align.config import EmbedConfig
from neurobridge.align.embeddings import CARD, EMBEDDINGS_SCHEMA, table_dir
from neurobridge.config import Settings, get_settings
from neurobridge.console import CountBar
from neurobridge.storage import filesystem, open_atomic, read_json, remove_stale_parts, write_json_atomic

MODEL_CLASS = "CLIPVisionModelWithProjection"
MAX_LISTED = 200  # failures / unmapped files named in the card (all are counted)


class EmbedError(RuntimeError):
    """The embedding job cannot run or produced too little (the message says why and names files)."""


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


# ---------------------------------------------------------------------------------------------------- listing


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


# ---------------------------------------------------------------------------------------------------- model


def _is_uri(ref: str) -> bool:
    return "://" in ref and not ref.startswith("file://")


def local_model_dir(ref: str, settings: Settings) -> str:
    """A local directory for ``ref``: itself, a copy of an fsspec folder (s3://…) cached per machine by URI, or
    the hub id unchanged (transformers caches those)."""
    if not _is_uri(ref):
        return ref
    import hashlib
    import os
    import shutil

    local = os.path.join(tempfile.gettempdir(), "nb-models", hashlib.sha256(ref.encode()).hexdigest()[:16])
    if not os.path.exists(os.path.join(local, "config.json")):
        fs, path = filesystem(ref, settings)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="partial-", dir=os.path.dirname(local))
        fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
        try:
            os.rename(tmp, local)  # atomic: a concurrent worker either sees nothing or the whole copy
        except OSError:  # another worker finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return local


def model_info(cfg: EmbedConfig, settings: Settings) -> dict:
    """Model facts for the card, checked on the driver so a wrong path fails before any worker starts."""
    from transformers import AutoConfig

    ref = cfg.model
    try:
        if _is_uri(ref):
            fs, path = filesystem(ref, settings)
            conf = read_json(fs, posixpath.join(path.rstrip("/"), "config.json"))
            mconf = AutoConfig.for_model(**conf)
        else:  # a local directory, else a hub id (downloads config.json only)
            mconf = AutoConfig.from_pretrained(ref)
    except Exception as err:  # OSError, HFValidationError, JSON errors, offline hub: all mean "cannot load"
        raise EmbedError(
            f"model {ref!r} is neither a directory holding a CLIP config.json nor a reachable hub id: {err}"
        ) from None
    vision = getattr(mconf, "vision_config", mconf)
    dim = getattr(mconf, "projection_dim", None)
    if dim is None or not hasattr(vision, "image_size"):
        raise EmbedError(f"model {ref!r} is a {type(mconf).__name__}, not a CLIP (vision) model with a projection")
    return {
        "id": ref,
        "class": MODEL_CLASS,
        "model_type": mconf.model_type,
        "projection_dim": int(dim),
        "image_size": int(vision.image_size),
        "commit": getattr(mconf, "_commit_hash", None),
    }


def load_processor(ref: str, image_size: int):
    """The processor saved with the model, else CLIP's standard preprocessing at the model's image size."""
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        return transformers.AutoImageProcessor.from_pretrained(ref)
    except (OSError, ValueError):
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def decode_image(data: bytes):
    """PIL decode of one file's bytes to RGB; raises on truncated or non-image content."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


def decode_error(err: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):  # its text holds a BytesIO address: say what it means instead
        return "decode failed: not an image in a format PIL recognises"
    return f"decode failed: {type(err).__name__}: {err}"


_CACHE: dict[str, tuple[str, object]] = {}


def _cached(stage: str, key: str, make):
    """One loaded object per stage and worker process (the latest key only): Ray reuses task workers, so a model
    or processor is loaded once per process, not once per batch, and a later job in the same session starts warm."""
    hit = _CACHE.get(stage)
    if hit is None or hit[0] != key:
        _CACHE[stage] = (key, make())
    return _CACHE[stage][1]


class _Decoder:
    """CPU stage: read bytes, decode, preprocess. Failed images keep their row with an error and zero pixels."""

    def __init__(self, cfg_json: str, settings_json: str, image_size: int):
        from PIL import Image

        self.cfg = EmbedConfig.model_validate_json(cfg_json)
        self.settings = Settings.model_validate_json(settings_json)
        self.fs, _ = filesystem(self.cfg.images, self.settings)
        ref = self.cfg.processor or local_model_dir(self.cfg.model, self.settings)
        if self.cfg.processor and _is_uri(self.cfg.processor):
            ref = local_model_dir(self.cfg.processor, self.settings)
        self.processor = load_processor(ref, image_size)
        probe = self.processor(images=[Image.new("RGB", (8, 8))], return_tensors="np")["pixel_values"]
        self.shape = probe.shape[1:]

    def __call__(self, batch: dict) -> dict:
        paths = [str(p) for p in batch["path"]]
        try:
            blobs = self.fs.cat(paths, on_error="return")
        except Exception as err:  # a whole-batch failure (e.g. connection refused): name it per file
            blobs = {p: err for p in paths}
        images, errors = [], []
        for p in paths:
            data = blobs.get(p) if isinstance(blobs, dict) else blobs
            if isinstance(data, BaseException):
                images.append(None)
                errors.append(f"read failed: {type(data).__name__}: {data}")
                continue
            try:
                images.append(decode_image(data))
                errors.append("")
            except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError…)
                images.append(None)
                errors.append(decode_error(err))
        pixels = np.zeros((len(paths), *self.shape), dtype=np.float32)
        ok = [i for i, im in enumerate(images) if im is not None]
        if ok:
            pixels[ok] = self.processor(images=[images[i] for i in ok], return_tensors="np")["pixel_values"]
        return {
            "stimulus_id": batch["stimulus_id"],
            "rel": batch["rel"],
            "pixel_values": pixels,
            "error": np.array(errors, dtype=object),
        }


class _Embedder:
    """Model stage: CLIP image embeddings of the decoded rows, on a GPU when this worker has one."""

    def __init__(self, cfg_json: str, settings_json: str):
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.cfg = EmbedConfig.model_validate_json(cfg_json)
        settings = Settings.model_validate_json(settings_json)
        use_cuda = self.cfg.device != "cpu" and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        ref = local_model_dir(self.cfg.model, settings)
        self.model = transformers.CLIPVisionModelWithProjection.from_pretrained(ref).to(self.device).eval()
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.cfg.precision]

    def __call__(self, batch: dict) -> dict:
        import torch

        errors = np.asarray(batch["error"], dtype=object)
        ok = np.flatnonzero(errors == "")
        dim = self.model.config.projection_dim
        out = np.zeros((len(errors), dim), dtype=np.float32)
        if len(ok):
            x = torch.from_numpy(np.ascontiguousarray(batch["pixel_values"][ok])).to(self.device)
            autocast = self.dtype is not None and self.device.type == "cuda"
            with torch.inference_mode(), torch.autocast(self.device.type, self.dtype or torch.float32, autocast):
                emb = self.model(pixel_values=x).image_embeds.float()
            if self.cfg.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out[ok] = emb.cpu().numpy()
            bad = ok[~np.isfinite(out[ok]).all(axis=1)]
            errors[bad] = "embedding is not finite"
        return {"stimulus_id": batch["stimulus_id"], "rel": batch["rel"], "embedding": out, "error": errors}


def decode_batch(batch: dict, cfg_json: str, settings_json: str, image_size: int) -> dict:
    c = EmbedConfig.model_validate_json(cfg_json)
    key = f"{c.images}|{c.model}|{c.processor}|{image_size}|{settings_json}"
    return _cached("decode", key, lambda: _Decoder(cfg_json, settings_json, image_size))(batch)


def embed_batch(batch: dict, cfg_json: str, settings_json: str) -> dict:
    c = EmbedConfig.model_validate_json(cfg_json)
    key = f"{c.model}|{c.device}|{c.precision}|{c.normalize}|{settings_json}"
    return _cached("embed", key, lambda: _Embedder(cfg_json, settings_json))(batch)


# ---------------------------------------------------------------------------------------------------- job


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


def embed_images(cfg: EmbedConfig, settings: Settings | None = None, progress: bool = True) -> EmbedReport:
    """Run the job; returns the report (the card is also at ``<store>/embeddings/<name>/_embeddings.json``)."""
    import ray.data

    from neurobridge.config import ensure_ray

    settings = settings or get_settings()
    t0 = time.perf_counter()
    info = model_info(cfg, settings)
    rows, left_out = list_images(cfg, settings)
    if not rows:
        raise EmbedError(f"no image files ({', '.join(cfg.extensions)}) under {cfg.images}")
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
        fn_kwargs={**args, "image_size": info["image_size"]},
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

    base = table_dir(settings, cfg.name)
    fs, base_path = filesystem(base, settings)
    run = uuid.uuid4().hex[:8]
    files: list[str] = []
    failed: list[dict] = []
    buffer: list[dict] = []
    buffered = embedded = n_failed = 0
    stopped = False
    t_first = t_last = None
    first_rows = 0

    def flush() -> None:
        nonlocal buffer, buffered
        if buffered:
            name = f"part-{run}-{len(files):05d}.parquet"
            _write_part(fs, base_path, name, buffer, cfg.model)
            files.append(name)
        buffer, buffered = [], 0

    bar = CountBar(progress, len(rows), "embedding images", failed=0)
    try:
        with bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                err = np.asarray(batch["error"], dtype=object)
                ok = err == ""
                n_failed += int((~ok).sum())
                for i in np.flatnonzero(~ok)[: max(0, MAX_LISTED - len(failed))]:
                    failed.append({"path": str(batch["rel"][i]), "error": str(err[i])})
                if n_failed > cfg.max_failed_fraction * len(rows):  # stop now: the job cannot succeed
                    stopped = True
                    break
                if ok.any():
                    buffer.append({k: np.asarray(batch[k])[ok] for k in ("stimulus_id", "rel", "embedding")})
                    buffered += int(ok.sum())
                    embedded += int(ok.sum())
                if buffered >= cfg.rows_per_part:
                    flush()
                bar.advance(len(err), failed=n_failed)
                t_last = time.perf_counter()
                if t_first is None:
                    t_first, first_rows = t_last, len(err)
            flush()
        listed = len(rows)
        if embedded == 0 or n_failed > cfg.max_failed_fraction * listed:
            names = "; ".join(f"{f['path']}: {f['error']}" for f in failed[:5])
            raise EmbedError(
                f"{n_failed} of {listed} images under {cfg.images} failed (max_failed_fraction "
                f"{cfg.max_failed_fraction}{'; stopped early' if stopped else ''}); first: {names}"
            )
    except BaseException:
        for name in files:  # this run's parts are invisible without a card; remove them anyway
            fs.rm(posixpath.join(base_path, name))
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
        "files": files,
        "counts": {
            "listed": listed,
            "embedded": embedded,
            "failed": n_failed,
            "unmapped": len(left_out["unmapped"]),
            "ignored": left_out["ignored"],
            **(
                {"mapping_without_file": left_out["mapping_without_file"]} if "mapping_without_file" in left_out else {}
            ),
        },
        "failed": failed[:MAX_LISTED],
        "unmapped": left_out["unmapped"][:MAX_LISTED],
        "seconds": round(seconds, 3),
        "images_per_s": round(embedded / seconds, 3),
        # after the first batch arrived (workers started, model loaded): the rate a long job runs at
        "steady_images_per_s": round((listed - first_rows) / (t_last - t_first), 3)
        if t_first is not None and t_last > t_first
        else None,
        "device": "gpu" if gpu else "cpu",
    }
    write_json_atomic(fs, posixpath.join(base_path, CARD), card)
    remove_stale_parts(fs, base_path, set(files))
    return EmbedReport(cfg.name, base, card, seconds, failed)
