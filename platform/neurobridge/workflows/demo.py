"""The end-to-end demo on the embedded default: simulate → ingest (Ray Data) → inspect, with a figure → pretrain
(Ray Train) → evaluate → align the visual sessions to their images (responses, then pretrained vs scratch encoder)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from neurobridge.catalog import resolve
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest_many
from neurobridge.storage import filesystem, is_remote
from neurobridge.store.mixtures import write_mixture
from neurobridge.store.versions import resolve_dataset
from neurobridge.workflows import inspect as inspection

DEMO_RATE_HZ = (1.0, 8.0)
DEMO_BIN_MS = 20.0  # the pretraining mixture's bin width
DEMO_HOLDOUT = "monkey01_s01"  # a simulated reaching session kept out of pretraining (a fine-tuning target)
# Alignment needs enough images to test among 100 unseen ones: 300 images × 4 presentations (a 10-minute session)
DEMO_IMAGES, DEMO_REPEATS, DEMO_ALIGN_TEST = 300, 4, 100


def run_demo(
    minutes: float = 2.0,
    seed: int = 0,
    console: Console | None = None,
    catalog: str = "demo",
    pretrain_steps: int = 150,
    align: bool = True,
) -> int:
    from neurobridge.sim import SimConfig, simulate

    console = console or Console()
    settings = get_settings()
    t0 = time.perf_counter()
    sim_root = f"{settings.raw_root}/sim"
    fs, path = filesystem(f"{sim_root}/simulation.json", settings)
    # cortical-like baseline rates (1-8 Hz): sparse enough that spike smoothing falls well short of the oracle
    cfg = SimConfig(
        seed=seed,
        minutes=minutes,
        tvsd=True,
        pile=True,
        rate_hz=DEMO_RATE_HZ,
        n_images=DEMO_IMAGES,
        image_repeats=DEMO_REPEATS,
    )
    if fs.exists(path) and _same_config(fs, path, cfg):
        console.print(f"[dim]simulation already at {sim_root} (same seed and size): reusing it[/]")
    else:
        console.rule("1. simulate")
        simulate(sim_root, cfg)
    console.rule("2. ingest (Ray Data)")
    failed = 0
    reports = []
    entries = []
    for entry in resolve(catalog):
        if entry.kind == "tvsd" and is_remote(settings.raw_root):
            console.print(f"[yellow]{entry.name}: skipped (a DataLad clone needs a local NB_RAW)[/]")
            continue
        entries.append(entry)
    for entry, report in zip(entries, ingest_many(entries, settings, progress=True), strict=True):
        if isinstance(report, Exception):
            console.print(f"[red]{entry.name}: {report}[/]")
            failed += 1
            continue
        reports.append(report)
        failed += len(report.failed)
        c = report.card.counts
        console.print(
            f"[bold]{entry.name}[/] @ {report.version}: {c.items_ok}/{c.items} items, {c.rows:,} windows, "
            f"{c.tokens:,} tokens, {c.spikes:,} spikes ({report.seconds:.1f} s)"
        )
    if reports:
        _write_demo_mixture(console, settings, catalog, reports)
    console.rule("3. inspect")
    reports_dir = Path(settings.store).parent / "reports" if "://" not in settings.store else Path("reports")
    reports_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for report in reports:
        ref = resolve_dataset(settings, f"{report.dataset}@{report.version}")
        sessions = inspection.session_summaries(ref, settings)
        pct = inspection.rate_percentiles(sessions)
        console.print(
            f"{ref.dataset}: {len(sessions)} sessions, {sum(s.units for s in sessions)} units, "
            + (
                f"median MUA {pct.get('p50', 0):.2f}"
                if sessions and sessions[0].kind == "mua"
                else f"median rate {pct.get('p50', 0):.1f} Hz"
            )
            + f", splits {ref.card.splits}"
        )
        figures.append(inspection.plot(ref, settings, str(reports_dir / f"{ref.dataset}.png"), sessions))
    model_run = None
    if pretrain_steps and reports:
        model_run = _pretrain_and_evaluate(console, settings, catalog, pretrain_steps, f"{sim_root}/truth")
    if align and any(r.dataset == "sim_visual" for r in reports):
        _align(console, settings, sim_root, model_run)
    console.rule("done")
    console.print(f"finished in {time.perf_counter() - t0:.0f} s")
    console.print(f"raw recordings : {sim_root}")
    console.print(f"token store    : {settings.store}/tokens/")
    console.print(f"figures        : {', '.join(figures)}")
    console.print("next           : neurobridge inspect sim_nwb --plot sim_nwb.png")
    console.print(f"read with polars: pl.read_parquet('{settings.store}/tokens/sim_nwb/<version>/part-*.parquet')")
    return 1 if failed else 0


def _pretrain_and_evaluate(console: Console, settings, mixture: str, steps: int, truth: str) -> str:
    """Stages 4-5: masked pretraining on Ray Train over the whole mixture, then co-bps against the baselines."""
    from neurobridge.evaluate.run import EvalData, evaluate
    from neurobridge.train.config import load_config
    from neurobridge.train.pretrain import pretrain
    from neurobridge.workflows.tables import print_report

    console.rule(f"4. pretrain (Ray Train, {steps} steps, mixture {mixture!r}, MLflow)")
    cfg = load_config(
        None,
        {
            "name": "demo",
            "data.mixture": mixture,
            "data.holdout_sessions": [DEMO_HOLDOUT],
            "optim.max_steps": steps,
            "checkpoint_every": max(steps // 3, 1),
        },
    )
    result = pretrain(cfg, settings)
    console.print(f"run {result.run_id}: step {result.metrics.get('step')}, loss {result.metrics.get('loss'):.3f}")
    console.rule("5. evaluate (held-out units of test windows; baselines on the same cells)")
    remote = "://" in settings.raw_root
    data = EvalData(["sim_nwb", "sim_alf"], exclude_sessions=[DEMO_HOLDOUT], truth_dir=None if remote else truth)
    report = evaluate(f"runs:/{result.run_id}", data, settings=settings)
    print_report(report)
    if steps < 1000:
        console.print(
            f"{steps} steps of mixed-mode pretraining are a smoke run of the pipeline, not a trained model: "
            "the co-smoothing task needs ~1000 steps (`python jobs/targets.py` pretrains 1200 and reaches "
            "0.82 × oracle on a held-out session after fine-tuning; see docs/results.md)."
        )
    console.print(
        f"MLflow: mlflow ui --backend-store-uri {settings.mlflow_uri}  (runs {result.run_id}, {report.run_id})"
    )
    return result.run_id


def _align(console: Console, settings, sim_root: str, model_run: str | None) -> None:
    """Stage 6: visual sessions → image embeddings, every region and each alone, retrieval beside chance; then
    the stage-4 encoder (last layer tuned) beside the same architecture from scratch."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is fastest and leaves the other core to Ray
    try:
        _align_stage(console, settings, sim_root, model_run)
    finally:
        torch.set_num_threads(threads)


def _align_stage(console: Console, settings, sim_root: str, model_run: str | None) -> None:
    from neurobridge.align.embeddings import simulation_embeddings
    from neurobridge.evaluate.run import resolve_model_file
    from neurobridge.workflows.demo_align import DemoAlignOptions, compare_encoders, demo_config, run_align_demo

    console.rule(f"6. align (sim_visual → image embeddings, {DEMO_ALIGN_TEST} unseen test images, MLflow)")
    t0 = time.perf_counter()
    run_align_demo(settings, sim_root, DemoAlignOptions(n_test=DEMO_ALIGN_TEST), console)
    console.print(f"[dim]{time.perf_counter() - t0:.0f} s[/]")
    if model_run is None:
        return
    t0 = time.perf_counter()
    known = simulation_embeddings(sim_root, settings)
    source = {"simulation": "sim"}  # under NB_RAW, as jobs/configs/align_demo.yaml names it
    base = demo_config(settings, "sim_visual", source, DEMO_ALIGN_TEST)
    compare_encoders(settings, resolve_model_file(f"runs:/{model_run}", settings), base, console, embeddings=known)
    console.print(f"[dim]{time.perf_counter() - t0:.0f} s[/]")
    console.print("on Ray Train: neurobridge align --config jobs/configs/align_demo.yaml")


def _write_demo_mixture(console: Console, settings, name: str, reports: list) -> None:
    """The pretraining mixture: the datasets at the demo's bin width (a model has one bin size); the others (TVSD's
    10 ms MUA) are ingested for alignment and left out of it, said here."""
    same = [r for r in reports if r.card.bin_ms == DEMO_BIN_MS]
    mix = write_mixture(settings, name, same)
    console.print(f"mixture {name!r}: " + ", ".join(d.ref for d in mix.datasets))
    for r in reports:
        if r not in same:
            console.print(f"[dim]{r.dataset}: {r.card.bin_ms:g} ms bins, not in the {DEMO_BIN_MS:g} ms mixture[/]")


def _same_config(fs, path: str, cfg) -> bool:
    import json

    try:
        with fs.open(path, "rb") as f:
            saved = json.loads(f.read()).get("config", {})
    except (OSError, ValueError):
        return False
    return saved == cfg.model_dump(mode="json")
