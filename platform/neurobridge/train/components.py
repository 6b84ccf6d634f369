"""What every training entry point shares: training-state checkpoints, the reporter, run storage, exported models.

Pretraining (Ray Train), ablation trials (Ray Tune), alignment (Ray Train) and fine-tuning (in-process) differ in
where metrics and checkpoints go, not in how: one ``Reporter`` logs metrics to MLflow from rank 0, writes the
training state into a checkpoint directory and hands it to the backend (``ray.train.report``, ``tune.report`` or a
list), and gives fault drills their ``train.step`` point.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from neurobridge.config import Settings, fault_point
from neurobridge.models.checkpoint import CheckpointError, config_diff, save_checkpoint
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.vocab import Vocabularies
from neurobridge.storage import filesystem, is_local_fs, join
from neurobridge.tracking import mlflow_run
from neurobridge.train.config import PretrainConfig

STATE_FILE = "train_state.pt"

# backend(metrics, checkpoint directory or None): where a report goes (Ray Train, Ray Tune, or a plain list)
Backend = Callable[[dict, str | None], None]


def ray_train_backend(metrics: dict, directory: str | None) -> None:
    """A report to Ray Train; NaN values (e.g. a metric of a modality the run had none of) stay out of its result."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
    ray.train.report({k: v for k, v in metrics.items() if v == v}, checkpoint=checkpoint)


def tune_backend(metrics: dict, directory: str | None) -> None:
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(directory) if directory else None
    tune.report(metrics, checkpoint=checkpoint)


class Reporter:
    """``reporter(metrics, state_or_None)``: the ``report`` callable of ``train.loop.run_steps`` (and align's fit).

    Metrics go to MLflow from rank 0 (prefixed, at ``metrics[step_key]``); a full state is written by ``write(state,
    directory)`` on rank 0 and reported as a checkpoint; other ranks report the metrics alone, as Ray Train expects.

    ``checkpoints_only``: reports without a state reach MLflow but not the backend. For Ray Train: its worker holds
    one unconsumed report at a time and its controller drains it every 2 s (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``),
    so a report every few steps blocked the training thread ~1.2 s each time (250 ms a step at ``log_every`` 5,
    two thirds of the demo model's wall time in `bench train`). Every rank skips the same reports, so Ray Train's
    per-report synchronisation still pairs up.
    """

    def __init__(
        self,
        backend: Backend,
        write: Callable[[dict, str], None] | None = None,
        *,
        logger: mlflow_run.MetricsLogger | None = None,
        rank: int = 0,
        faults: dict[str, str] | None = None,
        checkpoints_only: bool = False,
    ):
        self.backend, self.write, self.logger, self.rank, self.faults = backend, write, logger, rank, faults
        self.checkpoints_only = checkpoints_only
        self.prefix, self.step_key = "", "step"

    @classmethod
    def ray_train(
        cls,
        write: Callable[[dict, str], None] | None = None,
        *,
        logger: mlflow_run.MetricsLogger | None = None,
        rank: int = 0,
        faults: dict[str, str] | None = None,
    ) -> Reporter:
        """The reporter of a Ray Train worker (pretraining, alignment, decoding): checkpoints to Ray Train, every
        report to MLflow."""
        return cls(ray_train_backend, write, logger=logger, rank=rank, faults=faults, checkpoints_only=True)

    def logging(self, prefix: str = "", step_key: str = "step") -> Reporter:
        """MLflow keys as ``<prefix><key>`` at ``metrics[step_key]`` (alignment logs per epoch and region set)."""
        self.prefix, self.step_key = prefix, step_key
        return self

    def __call__(self, metrics: dict, state: dict | None = None) -> None:
        fault_point(self.faults, "train.step", step=int(metrics.get(self.step_key, 0)), rank=self.rank)
        if self.logger is not None:
            logged = {f"{self.prefix}{k}": v for k, v in metrics.items() if k != self.step_key or not self.prefix}
            self.logger.log(logged, int(metrics.get(self.step_key, 0)))
        if state is None and self.checkpoints_only:
            return
        if state is None or self.write is None or self.rank != 0:
            self.backend(metrics, None)
            return
        with tempfile.TemporaryDirectory() as d:
            self.write(state, d)
            self.backend(metrics, d)


def save_state(state: dict, directory: str | Path, vocabs: Vocabularies, cfg: PretrainConfig) -> Path:
    path = Path(directory) / STATE_FILE
    torch.save({**state, "vocabs": vocabs.to_dict(), "config": cfg.model_dump(mode="json")}, path)
    return path


def state_writer(vocabs: Vocabularies, cfg: PretrainConfig) -> Callable[[dict, str], None]:
    return lambda state, directory: save_state(state, directory, vocabs, cfg)


def load_state(directory: str | Path, cfg: PretrainConfig) -> dict:
    """A training state written by ``save_state``; refuses one from another model config."""
    payload = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    diffs = config_diff(payload["config"]["model"], cfg.model.model_dump(mode="json"), "model.")
    if diffs:
        raise CheckpointError("the checkpoint comes from another model config: " + "; ".join(diffs[:5]))
    return payload


def runs_storage(settings: Settings) -> tuple[str, object | None]:
    """Ray Train storage under ``<store>/runs``: a path, plus a pyarrow filesystem for object stores."""
    uri = join(settings.store, "runs")
    fs, path = filesystem(uri, settings)
    if is_local_fs(fs):
        Path(path).mkdir(parents=True, exist_ok=True)
        return path, None
    import pyarrow.fs as pafs

    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def export_model(checkpoint: str, cfg: PretrainConfig, pa_fs=None) -> tuple[str, dict]:
    """The final training state as a standalone model checkpoint (``models.checkpoint`` format): the best-val
    weights when validation kept them, else the last. Returns its path and what it holds (``step``: the step whose
    weights were kept; with validation also ``val_loss`` and ``last_step``)."""
    out = Path(tempfile.mkdtemp(prefix="nb-model-")) / "model.pt"
    if pa_fs is None:
        payload = torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)
    else:
        with pa_fs.open_input_file(f"{checkpoint}/{STATE_FILE}") as f:
            payload = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    vocabs = Vocabularies.from_dict(payload["vocabs"])
    model = MaskedNeuralModel(cfg.model, vocabs)
    extra = {
        "step": int(payload["step"]),
        "heldout_fraction": cfg.data.heldout_fraction,
        "trained_modes": cfg.model.trained_modes(cfg.mode),  # evaluation reports fp-bps only for forecasters
    }
    best = payload.get("best")
    if best is not None and cfg.validation.keep_best:
        model.load_state_dict(best["model"])
        extra |= {"step": int(best["step"]), "val_loss": float(best["val_loss"]), "last_step": int(payload["step"])}
    else:
        model.load_state_dict(payload["model"])
    save_checkpoint(str(out), model, vocabs, extra)
    return str(out), extra


def log_model(uri: str, run_id: str, model: MaskedNeuralModel, vocabs: Vocabularies, extra: dict) -> str:
    """A trained model's weights-only checkpoint into the run's ``model/`` folder (what the registry registers)."""
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "model.pt")
        save_checkpoint(path, model, vocabs, extra)
        mlflow_run.log_artifact(uri, run_id, path, "model")
    return f"runs:/{run_id}/model/model.pt"


def loss_figure(uri: str, run_id: str, panels: tuple[tuple[str, ...], ...] = (("loss", "val_loss"), ("lr",))) -> None:
    """Training curves from the run's metric history into ``plots/loss.png`` (one panel per key group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = [[(k, mlflow_run.metric_history(uri, run_id, k)) for k in keys] for keys in panels]
    if not any(h for panel in histories for _, h in panel):
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for keys, panel, ax in zip(panels, histories, axes[0], strict=True):
        for key, hist in panel:
            if hist:
                steps, values = zip(*hist, strict=True)
                ax.plot(steps, values, label=key)
        ax.set(xlabel="step", ylabel=keys[0], title=" / ".join(keys))
        if len(keys) > 1:
            ax.legend()
    fig.tight_layout()
    mlflow_run.log_figure(uri, run_id, fig, "plots/loss.png")
    plt.close(fig)


def fit_small_trainer(loop: Callable, loop_config: dict, scaling, settings: Settings, name: str, what: str):
    """Run ``loop`` on Ray Train for a fit whose result is one small checkpoint from rank 0 (an alignment
    projector, a region set's decoders), and return that checkpoint. ``scaling`` has ``num_workers``, ``use_gpu``,
    ``cpus_per_worker`` and ``max_failures``; the Ray run is ``<name>-<first 8 of loop_config's run_id>``; ``what``
    names the fit in the error when rank 0 reported nothing."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from neurobridge.config import ensure_ray

    s = scaling
    ensure_ray(settings, min_cpus=int(s.num_workers * s.cpus_per_worker) + 1)
    path, pa_fs = runs_storage(settings)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker={"CPU": s.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=f"{name}-{(loop_config.get('run_id') or 'untracked')[:8]}",
            storage_path=path,
            storage_filesystem=pa_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=s.max_failures),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"{what}: rank 0 reported no checkpoint")
    return result.checkpoint
