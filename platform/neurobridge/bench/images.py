"""Image-embedding benchmark, with same-run references (``neurobridge bench embed-images``).

The Ray Data job's throughput (images/s) against a plain single-process loop (decode, preprocess, embed) over the
same files with the same model; and the peak memory of the whole job (driver, Ray daemons and workers, summed
proportional set sizes) for N and ``growth``×N images, which must stay nearly flat. The alignment benchmark is
``bench/align.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ARCHS = {
    # a randomly initialised model with ViT-B/32's shape costs what the real one costs to run
    "b32": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 32,
        "projection_dim": 512,
    },
    "tiny": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 16,
    },
}


def make_model(path: Path, arch: str) -> Path:
    """A random CLIP vision tower of the given shape, saved with its processor (no download)."""
    import torch
    import transformers

    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    a = ARCHS[arch]
    transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**a)).save_pretrained(path)
    size = a["image_size"]
    transformers.CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(path)
    return path


def make_images(folder: Path, n: int, px: int = 256) -> Path:
    """``n`` JPEGs in a THINGS-like layout (<concept>/<concept>_NN.jpg), smooth like photographs (cached)."""
    from PIL import Image

    from neurobridge.sim import render_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"c{i // 10:04d}" / f"c{i // 10:04d}_{i % 10:02d}.jpg"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(render_image(rng.standard_normal(16), size=px)).save(path, quality=90)
    return folder


def reference_loop(images: Path, model_dir: Path, batch_size: int, limit: int) -> float:
    """images/s of one process doing what the job does, without Ray: the same-run reference."""
    import torch
    import transformers

    from neurobridge.align.clip_stages import decode_image, load_processor

    transformers.logging.set_verbosity_error()
    model = transformers.CLIPVisionModelWithProjection.from_pretrained(model_dir).eval()
    proc = load_processor(str(model_dir), model.config.image_size)
    files = sorted(images.rglob("*.jpg"))[:limit]
    t0 = time.perf_counter()
    for i in range(0, len(files), batch_size):
        batch = [decode_image(f.read_bytes()) for f in files[i : i + batch_size]]
        with torch.inference_mode():
            model(**proc(images=batch, return_tensors="pt")).image_embeds.numpy()
    return len(files) / (time.perf_counter() - t0)


def _tree_memory(pid: int) -> tuple[int, int]:
    """(sum of proportional set sizes, largest single RSS) over a process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total, largest = 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
            largest = max(largest, info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total, largest


JOB = """
import json, sys, time, ray
from neurobridge.align.config import EmbedConfig
from neurobridge.align.embed_images import embed_images
from neurobridge.config import get_settings
ray.init(address="local", num_cpus=int(sys.argv[4]), include_dashboard=False, logging_level="ERROR")
cfg = EmbedConfig(name="bench", images=sys.argv[1], model=sys.argv[2], batch_size=int(sys.argv[5]),
                  decode_workers=int(sys.argv[6]), decode_cpus=0.5, embed_cpus=1.0)
report = embed_images(cfg, get_settings(store=sys.argv[3]), progress=False)
print(json.dumps({"seconds": report.seconds, "card": report.card}))
"""


def run_job(images: Path, model_dir: Path, store: Path, cpus: int, batch: int, decoders: int) -> dict:
    """The job in a fresh process with its own local Ray; the whole process tree's memory sampled meanwhile."""
    proc = subprocess.Popen(
        [sys.executable, "-c", JOB, str(images), str(model_dir), str(store), str(cpus), str(batch), str(decoders)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    peak = {"pss": 0, "rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            pss, rss = _tree_memory(proc.pid)
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            stop.wait(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"embedding job failed:\n{err[-4000:]}")
    rec = json.loads(out.strip().splitlines()[-1])
    return {**rec, "peak_pss": peak["pss"], "peak_rss": peak["rss"]}


def bench_embed_images(
    n_images: int = 256,
    growth: int = 4,
    arch: str = "b32",
    batch_size: int = 32,
    workdir: str | None = None,
    cpus: int | None = None,
    echo=print,
) -> dict:
    work = Path(workdir or Path(tempfile.gettempdir()) / "neurobridge-bench-images")
    cpus = cpus or max(os.cpu_count() or 1, 1)
    model_dir = make_model(work / f"clip_{arch}", arch)
    small = make_images(work / f"images_{n_images}", n_images)
    big = make_images(work / f"images_{n_images * growth}", n_images * growth) if growth > 1 else None
    echo(f"model: random CLIP vision tower shaped like {arch} ({ARCHS[arch]['image_size']} px); {cpus} CPUs")
    ref = reference_loop(small, model_dir, batch_size, n_images)
    echo(f"reference_images_per_s: {ref:.1f} images/s (one process, no Ray: decode + preprocess + embed)")
    figures: dict = {"reference_images_per_s": ref}
    decoders = max(1, cpus - 1)
    runs = [("n", small, n_images)] + ([("big", big, n_images * growth)] if big else [])
    for key, folder, n in runs:
        r = run_job(folder, model_dir, work / f"store_{key}", cpus, batch_size, decoders)
        c = r["card"]
        figures[f"{key}_images"] = n
        figures[f"{key}_images_per_s"] = c["images_per_s"]
        figures[f"{key}_steady_images_per_s"] = c["steady_images_per_s"]
        figures[f"{key}_peak_pss_mb"] = r["peak_pss"] / 2**20
        figures[f"{key}_peak_process_rss_mb"] = r["peak_rss"] / 2**20
        steady = c["steady_images_per_s"] or float("nan")
        echo(
            f"job_{n}_images: {c['images_per_s']:.1f} images/s end to end ({steady:.1f} after "
            f"the first batch), peak memory of the whole job {r['peak_pss'] / 2**20:,.0f} MB (largest process "
            f"{r['peak_rss'] / 2**20:,.0f} MB)"
        )
    last = runs[-1][0]  # the longest run: start-up weighs least there
    figures["job_vs_reference"] = (figures[f"{last}_steady_images_per_s"] or float("nan")) / ref
    echo(
        f"job_vs_reference: {figures['job_vs_reference']:.2f}x (steady-state images/s of the "
        f"{figures[f'{last}_images']}-image run over the plain loop)"
    )
    if big:
        figures["memory_growth"] = figures["big_peak_pss_mb"] / figures["n_peak_pss_mb"]
        echo(f"memory_growth_for_{growth}x_images: {figures['memory_growth']:.2f}x")
    return figures
