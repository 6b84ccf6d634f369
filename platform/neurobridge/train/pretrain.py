"""`neurobridge pretrain`: masked pretraining on Ray Train, fed by Ray Data from the token store, tracked in MLflow.

The driver resolves the data (a mixture or datasets, mixed √N by default), builds vocabularies from the dataset
cards, opens the MLflow run, and hands a ``TorchTrainer`` the loop below. The same code runs 2 CPU workers on a
laptop or N GPUs on a cluster: only ``scaling`` changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from neurobridge.config import Settings, ensure_ray, get_settings
from neurobridge.models.vocab import Vocabularies, unit_key
from neurobridge.storage import StoreError
from neurobridge.store.read import Mixing, Source, one_bin_width, planned_rows, ray_dataset, sources, unit_columns
from neurobridge.store.rows import ROW_COLUMNS
from neurobridge.store.splits import HeldoutSplit, heldout_flags
from neurobridge.tracking import lineage, mlflow_run
from neurobridge.train.batches import CollateWindows
from neurobridge.train.components import (
    Reporter,
    export_model,
    load_state,
    loss_figure,
    runs_storage,
    state_writer,
)
from neurobridge.train.config import PretrainConfig
from neurobridge.train.epochs import ShardBatches


@dataclass
class PretrainResult:
    run_id: str
    checkpoint: str | None  # directory URI of the final Ray Train checkpoint
    metrics: dict
    storage: str
    model: dict | None = None  # what the exported model holds: step (the one kept), val_loss, last_step

    def summary(self) -> str:
        """One line on what the run kept: the selected step (best val loss) or the last one."""
        m = self.model or {}
        if "val_loss" in m:
            return f"model: step {m['step']} of {m['last_step']} (lowest val loss {m['val_loss']:.4f})"
        step = m.get("step", self.metrics.get("step"))
        return f"model: step {step} (the last; no validation selected another)"


def vocabularies(srcs: list[Source], exclude_sessions=(), settings: Settings | None = None) -> Vocabularies:
    """Context vocabularies from the dataset cards and units side tables (no row scan); held-out sessions are left
    out, so fine-tuning adds them (and their units) as new keys exactly as for a session recorded after pretraining."""
    v = Vocabularies()
    skip = set(exclude_sessions)
    for s in srcs:
        if settings is not None:
            units = unit_columns(settings, s, None)
            v.unit.add([unit_key(sess, u) for sess, ids in units.items() if sess not in skip for u in ids])
        voc = s.ref.card.vocabularies
        v.session.add([x for x in voc.sessions if x not in skip])
        v.subject.add(voc.subjects)
        v.task.add(voc.tasks)
        v.region.add(list(voc.regions))
        v.dataset.add([s.name])
    return v


def epoch_rows(cfg: PretrainConfig, srcs: list[Source]) -> int | None:
    """Rows per epoch: as configured, else all rows, but at least ``min_epoch_steps`` batches on every worker.

    Each epoch is a new streaming execution of the read (seconds to start), so an 80-trial dataset such as the
    MC_Maze excerpt would otherwise spend most of its time waiting for data between 5-step epochs.
    """
    if cfg.data.epoch_rows is not None:
        return cfg.data.epoch_rows
    need = cfg.data.min_epoch_steps * cfg.optim.batch_size * cfg.scaling.num_workers
    return need if sum(planned_rows(srcs, "train", cfg.data.train_fraction).values()) < need else None


def epoch_mb(cfg: PretrainConfig, srcs: list[Source]) -> float:
    """Upper estimate of one mixed epoch in memory: its cells at 4 bytes (uint16 counts, float32 MUA), rows repeated
    or dropped by the mixing, plus the row lists' overhead."""
    kept = planned_rows(srcs, "train", cfg.data.train_fraction)
    rows = sum(kept.values()) or 1
    cells = sum(s.ref.card.counts.tokens * kept[s.name] / max(s.rows(), 1) for s in srcs)
    scale = (epoch_rows(cfg, srcs) or rows) / rows
    return cells * 4 * scale * 1.2 / 2**20


def train_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import ray.train.torch
    import torch

    from neurobridge.models.ndt import MaskedNeuralModel
    from neurobridge.train.loop import Placement, run_steps, val_loss

    cfg = PretrainConfig.model_validate(config["cfg"])
    vocabs = Vocabularies.from_dict(config["vocabs"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # the worker's CPUs are its compute: one thread per CPU it holds (Ray sets 1 by default)
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = MaskedNeuralModel(cfg.model, vocabs)
    state = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_state(d, cfg)
    model.to(device)
    ddp = ray.train.torch.prepare_model(model) if world > 1 else None
    shard = ray.train.get_dataset_shard("train")
    logger = mlflow_run.MetricsLogger(config["mlflow_uri"], config["run_id"]) if rank == 0 else None
    collate_fn = CollateWindows.for_pretraining(cfg, vocabs, HeldoutSplit.from_dict(config["heldout"]))

    batches = ShardBatches(shard, collate_fn, cfg.optim.batch_size, cfg.seed, cached=config["cached"])
    report = Reporter.ray_train(state_writer(vocabs, cfg), logger=logger, rank=rank, faults=config.get("faults"))

    validate = None
    if rank == 0 and cfg.validation.every is not None:
        fixed = _val_batches(ray.train.get_dataset_shard("val"), cfg, collate_fn)

        def validate(m) -> float:
            return val_loss(m, fixed, cfg.mode, cfg.seed, device)

    place = Placement(device, rank, world, ddp)
    with mlflow_run.system_metrics(config["mlflow_uri"], config["run_id"] if rank == 0 else None):
        run_steps(cfg, model, batches, report=report, place=place, state=state, validate=validate)


def _val_batches(shard, cfg: PretrainConfig, collate_fn: CollateWindows) -> list:
    """The first ``max_windows`` val windows as fixed collated batches, read once (val sets are small)."""
    import pyarrow as pa

    tables, n = [], 0
    for table in shard.iter_batches(batch_size=cfg.optim.batch_size, batch_format="pyarrow"):
        tables.append(table.slice(0, cfg.validation.max_windows - n))
        n += tables[-1].num_rows
        if n >= cfg.validation.max_windows:
            break
    if not n:
        raise RuntimeError("validation is on but the val split yielded no windows")
    rows = pa.concat_tables(tables)
    size = cfg.optim.batch_size
    return [collate_fn(rows.slice(i, size)) for i in range(0, rows.num_rows, size)]


@dataclass
class Resolved:
    """What a pretraining config means for the data it names, before anything is read: shared by the Ray run
    (``prepare``), ``bench train`` and in-process Tune trials, so all of them train the same model on the same mix."""

    cfg: PretrainConfig  # with the model's kernels converted from ms to the data's bins
    srcs: list[Source]
    vocabs: Vocabularies
    heldout: HeldoutSplit
    mixing: Mixing  # rows per epoch at least ``min_epoch_steps`` batches on every worker


def resolve(cfg: PretrainConfig, settings: Settings) -> Resolved:
    """The sources, the config at their bin width, vocabularies, the held-out split and the epoch's mixing."""
    srcs = sources(settings, cfg.data.datasets, cfg.data.mixture, cfg.data.allow_partial)
    cfg = cfg.model_copy(update={"model": cfg.model.at_bin_width(one_bin_width(srcs))})  # kernels in ms → bins
    vocabs = vocabularies(srcs, cfg.data.holdout_sessions, settings)
    heldout = HeldoutSplit(heldout_flags(settings, srcs), cfg.data.heldout_fraction)
    held = frozenset(cfg.data.holdout_sessions)
    unknown = sorted(set(cfg.data.train_fraction) - {s.name for s in srcs})
    if unknown:
        raise StoreError(f"data.train_fraction names {unknown}, not among the datasets {[s.name for s in srcs]}")
    mixing = Mixing(cfg.data.mixing, epoch_rows(cfg, srcs), cfg.seed, held, dict(cfg.data.train_fraction))
    return Resolved(cfg, srcs, vocabs, heldout, mixing)


@dataclass
class TrainData(Resolved):
    """``Resolved`` with the mixed train rows opened as a Ray Dataset (``prepare``)."""

    train: object = None  # materialised when ``cached``
    cached: bool = False  # the epoch fits ``data.cache_mb``: read once, workers permute their rows each epoch


def prepare(cfg: PretrainConfig, settings: Settings, progress: bool = False) -> TrainData:
    """``resolve``, then start (or join) Ray and open the mixed train dataset, materialising it when the epoch fits
    in memory."""
    import ray.data

    r = resolve(cfg, settings)
    s = r.cfg.scaling
    ensure_ray(settings, min_cpus=int(s.num_workers * s.cpus_per_worker) + 2)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # with seeded shuffles: the same data order on every (re)run
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    train = ray_dataset(settings, r.srcs, "train", r.mixing, ROW_COLUMNS)
    cached = epoch_mb(r.cfg, r.srcs) <= r.cfg.data.cache_mb
    if cached:
        train = train.materialize()  # one read; workers keep their rows and permute them each epoch
    return TrainData(r.cfg, r.srcs, r.vocabs, r.heldout, r.mixing, train, cached)


def pretrain(
    cfg: PretrainConfig, settings: Settings | None = None, resume_from: str | None = None, progress: bool = True
) -> PretrainResult:
    """Train on Ray Train; ``progress``: Ray Data's progress bars (off for logs and pipes, where each redraw is a
    line)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    settings = settings or get_settings()
    data = prepare(cfg, settings, progress)
    cfg, srcs, vocabs, heldout, train = data.cfg, data.srcs, data.vocabs, data.heldout, data.train
    held, s = frozenset(cfg.data.holdout_sessions), cfg.scaling
    datasets = {"train": train}
    if cfg.validation.every is not None:
        try:  # every val row once, unmixed; rank 0 scores the first max_windows of them
            datasets["val"] = ray_dataset(
                settings, srcs, "val", Mixing("proportional", None, cfg.seed, held), ROW_COLUMNS
            )
        except StoreError as err:
            raise StoreError(f"validation.every is set but there is nothing to validate on: {err}") from None
    versions = {f"dataset.{s.name}": s.ref.version for s in srcs}
    tags = {"mixture": cfg.data.mixture or "", "kind": "pretrain", **versions}
    run_id = mlflow_run.start_run(settings.mlflow_uri, cfg.experiment, cfg.name, cfg.model_dump(mode="json"), tags)
    lineage.log_dataset_inputs(settings.mlflow_uri, run_id, [s.ref for s in srcs])
    path, pa_fs = runs_storage(settings)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "vocabs": vocabs.to_dict(),
            "heldout": heldout.to_dict(),
            "mlflow_uri": settings.mlflow_uri,
            "run_id": run_id,
            "faults": settings.faults(),
            "cached": data.cached,
        },
        scaling_config=ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker={"CPU": s.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=f"{cfg.name}-{run_id[:8]}" if resume_from is None else resume_from,
            storage_path=path,
            storage_filesystem=pa_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    ok = False
    try:
        result = trainer.fit()
        ok = result.error is None
        if result.error is not None:
            raise result.error
        checkpoint = result.checkpoint.path if result.checkpoint is not None else None
        kept = _finish(settings, run_id, cfg, checkpoint, pa_fs)
        return PretrainResult(run_id, checkpoint, dict(result.metrics or {}), path, kept)
    finally:
        mlflow_run.end_run(settings.mlflow_uri, run_id, ok)


def _finish(settings: Settings, run_id: str, cfg: PretrainConfig, checkpoint, pa_fs) -> dict | None:
    """Loss curve figure and the final model (weights-only checkpoint + vocabularies) into the MLflow run, as its
    ``model/`` folder and as an MLflow logged model; returns what the model holds (the step kept)."""
    loss_figure(settings.mlflow_uri, run_id)
    if checkpoint is None:
        return None
    file, kept = export_model(checkpoint, cfg, pa_fs)
    mlflow_run.log_artifact(settings.mlflow_uri, run_id, file, "model")
    params = {**mlflow_run.flatten(cfg.model.model_dump(mode="json")), **kept}
    mlflow_run.log_params(settings.mlflow_uri, run_id, {"model_kept": kept})
    lineage.log_logged_model(
        settings.mlflow_uri, run_id, lineage.ModelInfo("encoder", "pretrain", params, int(kept["step"]))
    )
    return kept
