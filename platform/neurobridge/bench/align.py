"""Alignment benchmark, with same-run references (``neurobridge bench align``).

Alignment on simulated V1/V4/IT recordings (gains rising to IT): retrieval per region set with chance beside it,
the closed-form ridge baseline on the same split, and projector training throughput in tokens/s; optionally a
small pretrained encoder against the untrained one, and the plain fit against the same fit on Ray Train.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class AlignBenchConfig:
    """What the alignment benchmark simulates and trains."""

    n_images: int = 500  # simulated images
    repeats: int = 5  # presentations per image
    n_test: int = 100  # test stimuli (the candidates for retrieval); half as many validate
    epochs: int = 60  # projector epochs
    pretrain_steps: int = 0  # > 0: also pretrain a small encoder this many steps (pretrained vs untrained)
    ray_train: bool = False  # also fit the 'all' set on Ray Train: tokens/s against the plain fit


def bench_align(bench: AlignBenchConfig | None = None, workdir: str | None = None, echo=print) -> dict:
    """Simulate V1/V4/IT (gains rising to IT), ingest, align each region set; ridge beside the projector."""
    bench = bench or AlignBenchConfig()
    work = Path(workdir or Path(tempfile.gettempdir()) / "neurobridge-bench-align")
    cfg, settings, emb = _simulated_alignment(bench, work)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs and a small encoder: one thread is fastest and steadiest on shared CPUs
    try:
        out = _align_sets(cfg, settings, emb, work, bench.pretrain_steps, echo)
        if bench.ray_train:
            out["ray_train"] = _ray_vs_plain(cfg, settings, out.pop("_data"), out["all"]["tokens_per_s"], echo)
        out.pop("_data", None)
        return out
    finally:
        torch.set_num_threads(threads)


def _simulated_alignment(bench: AlignBenchConfig, work: Path):
    """Simulated visual sessions (cached under ``work``) ingested into a store there, their known image
    embeddings, and the alignment config over every region set: (config, settings, embeddings)."""
    from neurobridge.align.config import AlignConfig
    from neurobridge.align.embeddings import simulation_embeddings
    from neurobridge.catalog import CatalogEntry
    from neurobridge.config import get_settings
    from neurobridge.ingest.pipeline import ingest
    from neurobridge.sim import VISUAL_WINDOW, SimConfig, simulate

    n_images, repeats, n_test = bench.n_images, bench.repeats, bench.n_test
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
    name = f"bench_vis_{n_images}x{repeats}"
    ingest(
        CatalogEntry.of(name=name, kind="nwb", uri=str(sim / "visual"), ingest={"bin_ms": 20, "window": VISUAL_WINDOW}),
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
            "projector": {"epochs": bench.epochs},
            "scaling": {"backend": "local"},
            "region_sets": {"all": None, "V1": ["V1"], "V4": ["V4"], "IT": ["IT"]},
        }
    )
    return cfg, settings, emb


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
