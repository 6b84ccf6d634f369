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
<<<<<<< HEAD


def bench_align(
    n_images: int = 500,
    repeats: int = 5,
    n_test: int = 100,
    workdir: str | None = None,
    epochs: int = 60,
    pretrain_steps: int = 0,
    ray_train: bool = False,
    echo=print,
) -> dict:
    """Simulate V1/V4/IT (gains rising to IT), ingest, align each region set; ridge beside the projector."""
    from neurobridge.align.config import AlignConfig
    from neurobridge.align.embeddings import simulation_embeddings
    from neurobridge.catalog import CatalogEntry
    from neurobridge.config import get_settings
    from neurobridge.ingest.pipeline import ingest
    from neurobridge.sim import SimConfig, simulate

    work = Path(workdir or Path(tempfile.gettempdir()) / "neurobridge-bench-align")
    sim = work / f"sim_{n_images}x{repeats}"
    if not (sim / "simulation.json").exists():
        regions = {"visual_regions": ["V1", "V4", "IT"], "visual_latency_ms": [40.0, 60.0, 80.0]}
        cfg = SimConfig(
            nwb_subjects=0,
            alf_subjects=0,
            visual_sessions=1,
            n_images=n_images,
            image_repeats=repeats,
            write_truth=False,
            **regions,
        )
        simulate(str(sim), cfg, progress=False)
    settings = get_settings(store=str(work / "store"), raw_root=str(work))
    window = {
        "mode": "intervals",
        "intervals": "natural_scenes_presentations",
        "align": "start_time",
        "pre_s": 0.0,
        "post_s": 0.25,
        "stimulus_column": "frame",
        "stimulus_prefix": "sim_ns",
    }
    name = f"bench_vis_{n_images}x{repeats}"
    ingest(
        CatalogEntry.of(name=name, kind="nwb", uri=str(sim / "visual"), ingest={"bin_ms": 20, "window": window}),
        settings,
        progress=False,
    )
    emb = simulation_embeddings(str(sim), settings)
    cfg = AlignConfig.model_validate(
        {
            "data": {
                "datasets": [name],
                "embeddings": {"npy": str(sim / "visual/images/embeddings.npy"), "ids": emb.ids.tolist()},
                "windows": {"V1": [40, 190], "V4": [60, 210], "IT": [80, 230]},
                "split": {"rule": "hash", "n_test": n_test, "n_val": max(1, n_test // 2)},
            },
            "projector": {"epochs": epochs},
            "scaling": {"backend": "local"},
            "region_sets": {"all": None, "V1": ["V1"], "V4": ["V4"], "IT": ["IT"]},
        }
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs and a small encoder: one thread is fastest and steadiest on shared CPUs
    try:
        out = _align_sets(cfg, settings, emb, work, pretrain_steps, echo)
        if ray_train:
            out["ray_train"] = _ray_vs_plain(cfg, settings, out.pop("_data"), out["all"]["tokens_per_s"], echo)
        out.pop("_data", None)
        return out
    finally:
        torch.set_num_threads(threads)


def _align_sets(cfg, settings, emb, work: Path, pretrain_steps: int, echo) -> dict:
    from neurobridge.align.experiment import run_alignment
    from neurobridge.evaluate.metrics import fit_ridge

    result = run_alignment(cfg, settings, embeddings=emb, track=False, figures=False)
    figures = {}
    echo(f"{'regions':8} {'top-1':>7} {'top-5':>7} {'chance1':>8} {'brain1':>7} {'ridge1':>7} {'tokens/s':>12}")
    for set_name, r in result.results.items():
        m = r.test["mean"]
        data = result.data.select_regions(r.regions)
        train = {b.session: b for b in data.train.blocks}
        ridge = []
        for tb in data.test.blocks:
            fit = fit_ridge(train[tb.session].x, train[tb.session].y, alpha=10.0)
            z = fit.predict(tb.x)
            z /= np.linalg.norm(z, axis=1, keepdims=True)
            e = tb.y / np.linalg.norm(tb.y, axis=1, keepdims=True)
            ridge.append(float(np.mean((z @ e.T).argmax(1) == np.arange(len(tb)))))
        figures[set_name] = {
            "top1": m["image_top1"],
            "top5": m["image_top5"],
            "chance1": m["image_chance1"],
            "brain_top1": m["brain_top1"],
            "ridge_top1": float(np.mean(ridge)),
            "tokens_per_s": r.fit.tokens_per_s,
            "n": m["n_candidates"],
        }
        f = figures[set_name]
        echo(
            f"{set_name:8} {f['top1']:7.3f} {f['top5']:7.3f} {f['chance1']:8.3f} {f['brain_top1']:7.3f} "
            f"{f['ridge_top1']:7.3f} {f['tokens_per_s']:12,.0f}"
        )
    echo(f"(top-k among {figures['all']['n']:.0f} test stimuli; ridge: closed-form linear map on the same split)")
    if pretrain_steps:
        figures["encoders"] = compare_encoders(cfg, settings, emb, result.data, work, pretrain_steps, echo)
    figures["_data"] = result.data
    return figures


def _ray_vs_plain(cfg, settings, data, plain_tokens_per_s: float, echo) -> dict:
    """The 'all' set again through a 1-worker ``TorchTrainer`` (same data, same loop, one CPU thread): the
    training rate inside Ray Train against the plain fit of this run, and the trainer's wall time with start-up."""
    import time

    from neurobridge.align.train import fit_on_ray

    ray_cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"backend": "ray"}), "name": "bench"})
    t0 = time.perf_counter()
    fit, _ = fit_on_ray(data.train, data.val, ray_cfg, settings, "all", None)
    wall = time.perf_counter() - t0
    out = {
        "tokens_per_s": fit.tokens_per_s,
        "plain_tokens_per_s": plain_tokens_per_s,
        "ratio": fit.tokens_per_s / plain_tokens_per_s,
        "train_seconds": fit.seconds,
        "wall_seconds": wall,
    }
    echo(
        f"Ray Train (1 worker) {fit.tokens_per_s:,.0f} tokens/s vs plain {plain_tokens_per_s:,.0f} "
        f"(ratio {out['ratio']:.2f}); training {fit.seconds:.1f} s inside {wall:.1f} s of trainer wall time"
    )
    return out


def pretrain_small(settings, dataset: str, train_stimuli: set[str], path: Path, steps: int, echo=print) -> Path:
    """A small masked model pretrained in-process (the plain loop of ``train.loop``) on the training stimuli's
    presentations only, so no test response is seen before evaluation."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.models.config import ModelConfig
    from neurobridge.models.ndt import MaskedNeuralModel
    from neurobridge.models.vocab import Vocabularies
    from neurobridge.store.read import iter_local, sources
    from neurobridge.store.rows import ROW_COLUMNS, table_rows
    from neurobridge.train.batches import CollateWindows
    from neurobridge.train.config import OptimConfig, PretrainConfig
    from neurobridge.train.loop import run_steps

    src = sources(settings, [dataset])[0]
    parts = [b for b in iter_local(settings, src, None, ROW_COLUMNS)]
    table = pa.Table.from_batches(parts)
    table = table.filter(pc.is_in(table.column("stimulus_id"), pa.array(sorted(train_stimuli))))
    vocabs = Vocabularies.from_rows(table_rows(table.slice(0, 64)))
    cfg = PretrainConfig(
        model=ModelConfig(neurons_per_token=4, d_model=64, depth=2, heads=4),
        optim=OptimConfig(max_steps=steps, batch_size=64, warmup_steps=min(50, steps // 5)),
        checkpoint_every=steps,
        log_every=max(1, steps // 5),
    )
    torch.manual_seed(0)
    model = MaskedNeuralModel(cfg.model, vocabs)

    collate = CollateWindows(vocabs, cfg.model.neurons_per_token)  # run_steps takes collated batches

    def batches(epoch: int):
        order = np.random.default_rng(epoch).permutation(table.num_rows)
        for i in range(0, len(order) - 63, 64):
            yield collate(table.take(pa.array(order[i : i + 64])))

    losses = []
    t0 = time.perf_counter()
    run_steps(cfg, model, batches, report=lambda m, _: losses.append(m["loss"]))
    echo(f"pretrained {steps} steps in {time.perf_counter() - t0:.0f} s: loss {losses[0]:.3f} → {losses[-1]:.3f}")
    save_checkpoint(str(path), model.eval(), vocabs, {"step": steps})
    return path


def compare_encoders(cfg, settings, emb, data, work: Path, steps: int, echo=print) -> dict:
    """The same alignment with the binned responses, a frozen pretrained encoder and the untrained encoder."""
    from neurobridge.align.experiment import run_alignment

    ckpt = pretrain_small(settings, cfg.data.datasets[0], data.train.stimuli, work / "pretrained.pt", steps, echo)
    out = {}
    echo(f"{'input':28} {'regions':8} {'top-1':>7} {'top-5':>7} {'chance1':>8} {'brain1':>7}")
    for label, encoder in (
        ("binned responses", None),
        ("pretrained encoder (frozen)", {"checkpoint": str(ckpt), "init": "pretrained"}),
        ("untrained encoder (frozen)", {"checkpoint": str(ckpt), "init": "random"}),
        ("pretrained, last layer tuned", {"checkpoint": str(ckpt), "train": "last_layers"}),
        ("scratch, trained end to end", {"checkpoint": str(ckpt), "train": "scratch"}),
    ):
        dumped = cfg.model_dump()
        tuned = encoder is not None and "train" in encoder  # the encoder runs in every step: fewer epochs
        projector = {
            **dumped["projector"],
            **({"epochs": min(12, cfg.projector.epochs), "patience": None} if tuned else {}),
        }
        c = type(cfg).model_validate(
            {
                **dumped,
                "data": {**dumped["data"], "encoder": encoder},
                "projector": projector,
                "region_sets": {"all": None, "IT": ["IT"]},
            }
        )
        res = run_alignment(c, settings, embeddings=emb, track=False, figures=False)
        for name, r in res.results.items():
            m = r.test["mean"]
            out[f"{label}/{name}"] = {
                "top1": m["image_top1"],
                "top5": m["image_top5"],
                "brain_top1": m["brain_top1"],
                "tokens_per_s": r.fit.tokens_per_s,
            }
            echo(
                f"{label:28} {name:8} {m['image_top1']:7.3f} {m['image_top5']:7.3f} {m['image_chance1']:8.3f} "
                f"{m['brain_top1']:7.3f}"
            )
    return out
=======
>>>>>>> cx
