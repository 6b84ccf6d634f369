"""Alignment training on Ray Train: a ``TorchTrainer`` whose workers run ``fit_projector`` (DDP when several).

Alignment examples are small (pooled features, or a few thousand raw windows of a few hundred cells), so the
driver reads and splits them once and hands them to the workers through ``train_loop_config`` (Ray's object
store) instead of a Ray Data pipeline; each rank trains on its share of every epoch's batches (``rank::world``).
Rank 0 logs each epoch to MLflow and reports the best weights as the run's checkpoint under ``<store>/runs``; a
failed worker restarts the fit from the start (``FailureConfig``: alignment fits take seconds to minutes). The
same code runs one CPU worker here and N GPU workers on a cluster: only ``scaling`` changes.
"""

from __future__ import annotations

import json
from pathlib import Path

from neurobridge.align.config import AlignConfig, EncoderSpec, ProjectorConfig
from neurobridge.align.examples import AlignmentSplit
from neurobridge.align.projector import FitResult
from neurobridge.config import Settings

MODEL_FILE = "model.pt"
FIT_FILE = "fit.json"


def make_model(config: dict, device):
    """The module to train: None (fit_projector builds a plain projector) or an encoder + projector."""
    enc = config.get("encoder")
    if enc is None:
        return None
    from neurobridge.align.encoder_train import build_encoder_projector

    return build_encoder_projector(
        config["train"],
        enc["specs"],
        enc["out_dim"],
        EncoderSpec(**enc["spec"]),
        ProjectorConfig(**config["projector"]),
        enc["checkpoint"],
        device,
    )


def save_model(model, path: str) -> None:
    from neurobridge.align.encoder_train import EncoderProjector, save_encoder_projector
    from neurobridge.align.projector import save_projector

    (save_encoder_projector if isinstance(model, EncoderProjector) else save_projector)(model, path)


def align_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from neurobridge.align.projector import TrainWorker, fit_projector
    from neurobridge.tracking import mlflow_run
    from neurobridge.train.components import Reporter

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cfg = ProjectorConfig(**config["projector"])
    name = config["name"]
    logger = (
        mlflow_run.MetricsLogger(config["mlflow_uri"], config["run_id"]) if rank == 0 and config["run_id"] else None
    )

    report = Reporter.ray_train(write_fit, logger=logger, rank=rank).logging(f"{name}.train.", step_key="epoch")

    def wrap(model):
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})

    fit = fit_projector(
        config["train"],
        config["val"],
        cfg,
        device=device,
        model=make_model(config, device),
        worker=TrainWorker(rank=rank, world=world, report=report, wrap=wrap if world > 1 else None),
    )
    summary = {
        "history": fit.history,
        "best_epoch": fit.best_epoch,
        "best_val_top1": fit.best_val_top1,
        "seconds": fit.seconds,
        "steps": fit.steps,
        "world": world,
        # every rank trains on 1/world of the examples in the same time: the job's rate is world × rank 0's
        "examples_per_s": fit.examples_per_s * world,
        "tokens_per_s": fit.tokens_per_s * world,
    }
    final = {"final": 1, "tokens_per_s": summary["tokens_per_s"], "best_epoch": fit.best_epoch}
    Reporter.ray_train(write_fit, rank=rank)(final, {"model": fit.model.cpu(), "summary": summary})


def write_fit(state: dict, directory: str) -> None:
    """A fitted alignment model and its fit summary into a checkpoint directory (rank 0)."""
    save_model(state["model"], str(Path(directory) / MODEL_FILE))
    (Path(directory) / FIT_FILE).write_text(json.dumps(state["summary"], default=float))


def fit_on_ray(
    train: AlignmentSplit,
    val: AlignmentSplit | None,
    cfg: AlignConfig,
    settings: Settings,
    name: str,
    run_id: str | None,
    encoder: dict | None = None,
) -> tuple[FitResult, str | None]:
    """Fit one region set's projector with a ``TorchTrainer``; (the fit rebuilt from rank 0's checkpoint, its URI).

    ``encoder``: ``{"spec", "specs", "out_dim", "checkpoint": bytes}`` when an encoder is trained with it."""
    from neurobridge.align.encoder_train import load_aligned_model
    from neurobridge.train.components import fit_small_trainer

    loop_config = {
        "train": train,
        "val": val,
        "projector": cfg.projector.model_dump(mode="json"),
        "encoder": encoder,
        "name": name,
        "mlflow_uri": settings.mlflow_uri,
        "run_id": run_id,
    }
    checkpoint = fit_small_trainer(
        align_loop_per_worker, loop_config, cfg.scaling, settings, f"{cfg.name}-{name}", f"alignment trainer {name}"
    )
    with checkpoint.as_directory() as d:
        model = load_aligned_model(str(Path(d) / MODEL_FILE))
        summary = json.loads((Path(d) / FIT_FILE).read_text())
    fit = FitResult(
        model,
        summary["history"],
        summary["best_epoch"],
        summary["best_val_top1"],
        summary["seconds"],
        summary["examples_per_s"],
        summary["tokens_per_s"],
        summary["steps"],
    )
    return fit, checkpoint.path
