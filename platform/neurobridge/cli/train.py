"""`neurobridge pretrain | finetune | evaluate`: training and evaluation commands (registered by cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from neurobridge.config import parse_overrides as _parse_overrides
from neurobridge.workflows.tables import print_alignment

console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def parse_overrides(items: list[str] | None) -> dict:
    """``key.sub=value`` pairs; values parse as YAML (numbers, lists, null)."""
    try:
        return _parse_overrides(items)
    except ValueError as e:
        _fail(str(e))


def pretrain(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: built-in defaults)"),
    overrides: list[str] = typer.Option(None, "--set", help="override a config key, e.g. --set optim.max_steps=200"),
    progress: bool = typer.Option(
        None, help="Ray Data progress bars (default: on a terminal only; in a log each redraw would be a line)"
    ),
):
    """Masked pretraining on Ray Train over a mixture of token-store datasets; tracked in MLflow."""
    import sys

    import ray

    ours = not ray.is_initialized()  # a Ray this command starts is shut down by it (below)

    from neurobridge.config import ConfigError
    from neurobridge.storage import StoreError
    from neurobridge.tracking.mlflow_run import TrackingError
    from neurobridge.train.config import load_config
    from neurobridge.train.loop import NonFiniteLoss
    from neurobridge.train.pretrain import pretrain as run

    try:
        cfg = load_config(config, parse_overrides(overrides))
        result = run(cfg, progress=sys.stderr.isatty() if progress is None else progress)
    except (ConfigError, StoreError, TrackingError, NonFiniteLoss) as err:
        _fail(str(err))
    m = result.metrics
    console.print()  # never glued onto the last progress line
    console.print(f"[bold]pretrained[/] {cfg.name}: step {m.get('step')}, loss {m.get('loss', float('nan')):.4f}")
    console.print(result.summary())
    console.print(f"MLflow run   : {result.run_id}  (model: runs:/{result.run_id})")
    console.print(f"checkpoint   : {result.checkpoint}")
    if ours:  # disconnect now, not from an atexit hook racing the Train controller's teardown (gRPC noise)
        ray.shutdown()


def align(
    config: Path = typer.Option(..., "--config", "-c", help="YAML alignment config (jobs/configs/align_demo.yaml)"),
    overrides: list[str] = typer.Option(None, "--set", help="override a config key, e.g. --set projector.epochs=20"),
):
    """Neural → image alignment on Ray Train: one projector per region set, retrieval beside chance, MLflow."""
    from neurobridge.align.config import AlignConfig
    from neurobridge.align.examples import AlignDataError
    from neurobridge.align.experiment import run_alignment
    from neurobridge.config import ConfigError, load_yaml
    from neurobridge.storage import StoreError
    from neurobridge.tracking.mlflow_run import TrackingError

    try:
        cfg = load_yaml(AlignConfig, config, parse_overrides(overrides))
        result = run_alignment(cfg, _settings(), echo=console.print)
    except (ConfigError, AlignDataError, StoreError, TrackingError) as err:
        _fail(str(err))
    print_alignment(result)


def finetune(
    model: str = typer.Option(None, help="model.pt or runs:/<run id>; omit with --scratch"),
    dataset: str = typer.Option(..., help="dataset ref holding the session"),
    session: str = typer.Option(..., help="the session to fine-tune to (new to the model or held out of pretraining)"),
    trials: int = typer.Option(20, help="training windows (k-shot); 0: all"),
    steps: int = typer.Option(300, help="optimiser steps"),
    lr: float = typer.Option(1e-3, help="learning rate (AdamW)"),
    mode: str = typer.Option("all", help="masking mode (heldout: NLB co-smoothing)"),
    freeze_backbone: bool = typer.Option(False, help="train only context embeddings and output heads"),
    train_decoder: bool = typer.Option(False, help="with --freeze-backbone: the decoder trains too"),
    unfreeze_after: int = typer.Option(None, help="with --freeze-backbone: every parameter trains from this step"),
    unit_weight_decay: float = typer.Option(0.0, help="decay of all per-unit rows toward the shared read-out"),
    backbone_lr_scale: float = typer.Option(
        1.0, help="the shared backbone's learning rate as a share of --lr (the session's rows and heads keep --lr)"
    ),
    output_smoothing_ms: float = typer.Option(None, help="Gaussian s.d. (ms) of the model's output smoothing"),
    val_every: int = typer.Option(None, help="keep the weights of the best pass over the session's val windows"),
    val_patience: int = typer.Option(None, help="with --val-every: stop after this many passes without a new best"),
    batch_size: int = typer.Option(16, help="windows per step"),
    scratch: bool = typer.Option(False, help="train a fresh model instead (the comparison)"),
    model_config: Path = typer.Option(
        None, help="with --scratch: the architecture (a pretraining config YAML: its `model`; or a model YAML)"
    ),
    smoothing_ms: list[float] = typer.Option(
        None, help="with --cv: also score smoothing at these kernels (ms), the best picked with hindsight"
    ),
    cv: int = typer.Option(None, help="K-fold cross-validation over all the session's windows instead: --out is JSON"),
    cv_repeats: int = typer.Option(1, help="with --cv: repeat it with other folds and seeds (scores averaged)"),
    out: Path = typer.Option(..., help="where to write the fine-tuned model.pt (with --cv: the results JSON)"),
    seed: int = typer.Option(0, help="seed of the k-shot draw, the folds and the initial weights"),
):
    """Fine-tune a pretrained model to a new session (vocabularies extended), or train one from scratch."""
    from pydantic import ValidationError

    from neurobridge.config import describe_validation_error
    from neurobridge.evaluate.run import resolve_model_file
    from neurobridge.storage import StoreError
    from neurobridge.train.finetune import FinetuneConfig, save
    from neurobridge.train.finetune import finetune as run

    if (model is None) != scratch:
        _fail("give either --model (fine-tune) or --scratch (train from scratch)")
    options = dict(
        dataset=dataset,
        session=session,
        trials=trials or None,
        steps=steps,
        lr=lr,
        mode=mode,
        freeze_backbone=freeze_backbone,
        train_decoder=train_decoder,
        unfreeze_after=unfreeze_after,
        unit_weight_decay=unit_weight_decay,
        backbone_lr_scale=backbone_lr_scale,
        val_every=val_every,
        val_patience=val_patience,
        batch_size=batch_size,
        output_smoothing_ms=output_smoothing_ms,
        seed=seed,
    )
    try:  # a contradiction between options is an error message, not a traceback
        cfg = FinetuneConfig(**options)
    except ValidationError as err:
        _fail(describe_validation_error(err, FinetuneConfig, "neurobridge finetune"))
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = _settings()
    try:
        file = resolve_model_file(model, settings) if model else None
        arch = _model_config(model_config) if model_config else None
        if cv is not None:
            from neurobridge.evaluate.crossval import CrossvalOptions, crossval_finetune

            opts = CrossvalOptions(folds=cv, repeats=cv_repeats, scratch_model=arch, smoothing_ms=smoothing_ms or ())
            res = crossval_finetune(cfg, file, settings, opts, progress=console.log)
            out.write_text(json.dumps(res, indent=1, default=float))
            _print_cv(res, out)
            return
        result = run(cfg, file, settings, scratch_model=arch)
    except (StoreError, ValueError) as err:
        _fail(str(err))
    save(result, str(out), cfg)
    last = result.last
    picked = ""
    if "selected_step" in last:  # what val chose, and whether patience or the budget ended the run
        picked = (
            f", step {last['selected_step']} picked on val (loss {last['best_val_loss']:.4f}) of {last['step']} run"
        )
    console.print(
        f"fine-tuned on {len(result.windows)} windows of {session}: loss {last.get('loss'):.4f}{picked} → {out}"
    )


def _model_config(path: Path):
    """A ModelConfig from YAML: a pretraining config's ``model`` section (so the trained-alone arm uses exactly
    the pretrained architecture) or a bare model mapping."""
    import yaml

    from neurobridge.models.config import ModelConfig

    data = yaml.safe_load(Path(path).read_text()) or {}
    return ModelConfig.model_validate(data.get("model", data) if isinstance(data, dict) else data)


def _print_cv(res: dict, out: Path) -> None:
    d = res["minus_smoothing"]
    times = f"{res['repeats']} x " if res["repeats"] > 1 else ""
    console.print(
        f"{times}{res['folds']}-fold CV over {res['windows']} windows: co-bps {res['co_bps']:.4f} vs smoothing "
        f"{res['co_bps_smoothing']:.4f} ({d['bps']:+.4f}, 95 % {d['ci_low']:+.4f} … {d['ci_high']:+.4f}) → {out}"
    )
    if "readout_minus_untrained" in res:
        r, c = res["readout_minus_smoothing"], res["readout_minus_untrained"]
        console.print(
            f"GLM read-out of the latents: {res['co_bps_readout']:.4f} ({r['bps']:+.4f} vs smoothing); of an "
            f"untrained encoder's: {res['co_bps_readout_untrained']:.4f}; trained − untrained {c['bps']:+.4f} "
            f"(95 % {c['ci_low']:+.4f} … {c['ci_high']:+.4f})"
        )
    if "minus_best_smoothing" in res:
        b = res["minus_best_smoothing"]
        console.print(f"against the best smoothing kernel in hindsight ({b['sigma_ms']:g} ms): {b['bps']:+.4f}")


def _settings():
    from neurobridge.config import get_settings

    return get_settings()


def bench_train(
    config: Path = typer.Option(None, "--config", "-c", help="YAML pretraining config (default: built-in defaults)"),
    overrides: list[str] = typer.Option(None, "--set", help="override a config key"),
    steps: int = typer.Option(200, help="training steps per measured run (the first fifth is warm-up)"),
    data_batches: int = typer.Option(
        100, help="batches drawn in the data-path measurement (the plain loop cycles them)"
    ),
    rounds: int = typer.Option(
        3, min=1, help="Ray Train runs, each between two plain loops; the overhead quoted is their median"
    ),
):
    """Tokens/s through Ray Train vs a plain PyTorch loop (same model, same data), data-path headroom, peak RSS."""
    from neurobridge.bench.train import bench_train as run
    from neurobridge.config import ConfigError
    from neurobridge.train.config import load_config

    try:
        cfg = load_config(
            config, {"optim.max_steps": steps, "log_every": 5, "checkpoint_every": steps, **parse_overrides(overrides)}
        )
    except ConfigError as err:
        _fail(str(err))
    out = run(cfg, data_batches=data_batches, echo=console.print, rounds=rounds)
    console.print_json(json.dumps(out))


def bench_model(
    size: str = typer.Option("small", help="small | base | large | all"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    batch: int = typer.Option(32, help="windows per step (the demo's: 32)"),
    units: int = typer.Option(96, help="units per window (the demo's: 96)"),
    bins: int = typer.Option(50, help="bins per window (the demo's: 50)"),
    steps: int = typer.Option(20, help="timed steps per size"),
    precision: str = typer.Option(
        "auto", help="fp32 | bf16 | auto (GPU: bf16 where it has it; CPU: fp32, and bf16 too on AMX/AVX512-BF16)"
    ),
):
    """Model-only training-step tokens/s and MFU against the same-run dense-matmul peak, per model size."""
    import torch

    from neurobridge.bench.model import SIZES, Shape, device_name, precisions, run

    if size not in (*SIZES, "all"):
        _fail(f"--size {size!r}: one of {[*SIZES, 'all']}")
    if precision not in ("auto", "fp32", "bf16"):
        _fail(f"--precision {precision!r}: one of auto, fp32, bf16")
    dev = torch.device(device)
    table = Table(
        "size",
        "precision",
        "tokens/s",
        "TFLOP/s",
        "matmul peak",
        "MFU",
        "attention FLOPs",
        "attention alone",
        "MFU ceiling",
        "matmuls alone",
        "overhead",
        "MFU w/o overhead",
        title=f"bench model ({device_name(dev)})",
        caption="attention / matmuls alone: the step's SDPA / matmul calls replayed by themselves, as a share of the "
        "step's time and their rate against the peak; MFU ceiling: the MFU if everything but attention ran at the "
        "matmul peak; overhead: the step's time in neither (copies, norms, gathers, element-wise ops, optimizer); "
        "MFU w/o overhead: the MFU if that took no time",
    )
    results = []
    for s, prec in ((s, p) for s in (SIZES if size == "all" else [size]) for p in precisions(dev, precision)):
        r = run(s, device, Shape(batch, units, bins), steps, prec)
        results.append(r)
        rates = (f"{r['tokens_per_s']:,.0f}", f"{r['tflops_per_s']:.4f}", f"{r['matmul_peak_tflops_per_s']:.4f}")
        peak, step = r["matmul_peak_tflops_per_s"], r["step_s"]
        attention = f"{r['attention_s_alone'] / step:.0%} of the step, at {r['attention_tflops_per_s'] / peak:.0%}"
        mm = f"{r['matmul_s_alone'] / step:.0%} of the step, at {r['matmul_tflops_per_s'] / peak:.0%}"
        table.add_row(
            s,
            r["precision"],
            *rates,
            f"{r['mfu']:.0%}",
            f"{r['attention_flops_share']:.0%}",
            attention,
            f"{r['mfu_ceiling']:.0%}",
            mm,
            f"{r['overhead_s'] / step:.0%} of the step",
            f"{r['mfu_without_overhead']:.0%}",
        )
    console.print(table)
    console.print_json(json.dumps(results))
