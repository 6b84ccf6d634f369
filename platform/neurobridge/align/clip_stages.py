"""The two stages of the embedding job's Ray Data plan and the CLIP model they load.

CPU tasks read the bytes (concurrently for object stores), decode with PIL and preprocess with the model's image
processor (``decode_batch``); model tasks, on a GPU when the cluster has one, embed fixed-size batches
(``embed_batch``). Each worker process loads the processor or model once and keeps it (Ray reuses task workers),
which is what an actor pool would give, and a second job in the same session starts warm. ``model_info`` checks
the model on the driver, so a wrong path fails before any worker starts.
"""

from __future__ import annotations

import io
import posixpath
import tempfile

import numpy as np

from neurobridge.align.config import EmbedConfig
from neurobridge.align.image_files import EmbedError
from neurobridge.config import Settings
from neurobridge.storage import filesystem, read_json

MODEL_CLASS = "CLIPVisionModelWithProjection"


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
