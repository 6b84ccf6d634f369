"""Decoding on Ray Train: one ``TorchTrainer`` per region set whose workers fit every decoder of the set.

As in alignment (``align/train.py``), the examples are small, so the driver builds them once and hands them to the
workers in ``train_loop_config``; rank 0 logs each decoder's epochs to MLflow (``<set>.<task>.<decoder>.train.*``)
and reports the scores and weights as the checkpoint under ``<store>/runs``; ``max_failures`` restarts a dead
worker. The same code runs one CPU worker here and N workers on a cluster (DDP: each rank trains on its share of
every epoch's batches); only ``scaling`` changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from neurobridge.config import Settings
from neurobridge.decode.config import DecodeConfig
from neurobridge.decode.run_set import DecoderResult, SetInputs

RESULTS_FILE = "decode_results.json"
WEIGHTS_FILE = "decode_weights.pt"


def write_results(state: dict, directory: str) -> None:
    """Scores (JSON) and weights (a plain tensor dict, loadable with ``weights_only=True``) into a checkpoint."""
    results: list[DecoderResult] = state["results"]
    (Path(directory) / RESULTS_FILE).write_text(json.dumps([r.summary() for r in results], default=float))
    weights = {f"{r.task}/{r.decoder}/{k}": v for r in results if r.state for k, v in r.state.items()}
    torch.save(weights, Path(directory) / WEIGHTS_FILE)


def read_results(directory: str) -> list[DecoderResult]:
    summaries = json.loads((Path(directory) / RESULTS_FILE).read_text())
    weights = torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    out = []
    for s in summaries:
        r = DecoderResult(**s)
        prefix = f"{r.task}/{r.decoder}/"
        state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        r.state = state or None
        out.append(r)
    return out


def decode_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from neurobridge.align.projector import TrainWorker
    from neurobridge.decode.run_set import fit_region_set
    from neurobridge.tracking import mlflow_run
    from neurobridge.train.components import Reporter

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = DecodeConfig.model_validate(config["cfg"])
    name = config["inputs"].name
    logger = (
        mlflow_run.MetricsLogger(config["mlflow_uri"], config["run_id"]) if rank == 0 and config["run_id"] else None
    )

    def report_for(task: str, dec: str):
        return Reporter.ray_train(logger=logger, rank=rank).logging(f"{name}.{task}.{dec}.train.", step_key="epoch")

    def wrap(model):
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})

    worker = TrainWorker(rank=rank, world=world, wrap=wrap if world > 1 else None)
    results = fit_region_set(config["inputs"], cfg, ray.train.torch.get_device(), worker, report_for)
    Reporter.ray_train(write_results, rank=rank)({"final": 1}, {"results": results})


def fit_on_ray(inp: SetInputs, cfg: DecodeConfig, settings: Settings, run_id: str | None) -> list[DecoderResult]:
    """One region set's decoders in a ``TorchTrainer``; the results rebuilt from rank 0's checkpoint."""
    from neurobridge.train.components import fit_small_trainer

    loop_config = {
        "inputs": inp,
        "cfg": cfg.model_dump(mode="json"),
        "mlflow_uri": settings.mlflow_uri,
        "run_id": run_id,
    }
    checkpoint = fit_small_trainer(
        decode_loop_per_worker,
        loop_config,
        cfg.scaling,
        settings,
        f"{cfg.name}-{inp.name}",
        f"decode trainer {inp.name}",
    )
    with checkpoint.as_directory() as d:
        return read_results(d)
