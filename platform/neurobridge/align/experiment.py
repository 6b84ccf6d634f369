"""One alignment experiment: data → one projector per region set → retrieval, reconstruction baseline and
figures, tracked in MLflow. ``scaling.backend`` picks who calls ``fit_projector``: a Ray Train ``TorchTrainer``
(``align.train``, the default) or this process; everything else is the same.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurobridge.align.config import AlignConfig
from neurobridge.align.dataset import build_alignment_data
from neurobridge.align.embeddings import EmbeddingTable
from neurobridge.align.examples import AlignmentData
from neurobridge.align.projector import FitResult, fit_projector, project
from neurobridge.align.retrieval import evaluate_split, nearest_train_reconstruction, retrieval_figure, top_k
from neurobridge.align.train import save_model
from neurobridge.config import Settings, get_settings


@dataclass
class RegionResult:
    name: str
    regions: list[str] | None
    fit: FitResult
    test: dict
    val: dict
    recon: dict
    figures: dict = field(default_factory=dict)  # name → matplotlib figure


@dataclass
class AlignResult:
    data: AlignmentData
    results: dict[str, RegionResult]
    run_id: str | None = None

    def summary(self) -> dict[str, dict]:
        """set → headline numbers (test top-1/top-5 with chance, brain retrieval, tokens/s)."""
        out = {}
        for name, r in self.results.items():
            m = r.test["mean"]
            out[name] = {k: m[k] for k in m if k.startswith(("image_", "brain_", "n_candidates"))}
            out[name].update(
                {
                    "tokens_per_s": r.fit.tokens_per_s,
                    "examples_per_s": r.fit.examples_per_s,
                    "best_epoch": r.fit.best_epoch,
                    **r.recon,
                }
            )
        return out


def train_embeddings(data: AlignmentData) -> tuple[np.ndarray, np.ndarray]:
    """(ids, embeddings) of the images seen in training: the candidates of the reconstruction baseline."""
    ids = np.array(sorted(data.train.stimuli))
    rows, _ = data.embeddings.lookup(ids)
    return ids, data.embeddings.vectors[rows]


def evaluate_region_set(
    name: str,
    data: AlignmentData,
    fit: FitResult,
    cfg: AlignConfig,
    settings: Settings | None = None,
    figures: bool = True,
) -> RegionResult:
    kw = {"subsets": tuple(cfg.subset_candidates), "draws": cfg.subset_draws, "seed": cfg.projector.seed}
    test = evaluate_split(fit.model, data.test, **kw)
    val = evaluate_split(fit.model, data.val, **kw) if len(data.val) else {"mean": {}, "sessions": {}}
    train_ids, e_train = train_embeddings(data)
    recon: dict = {}
    figs = {}
    zs = project(fit.model, data.test)
    for b, z in zip(data.test.blocks, zs, strict=True):
        m, _ = nearest_train_reconstruction(z, b.y, e_train)
        for k, v in m.items():
            recon.setdefault(k, []).append(v)
    recon = {k: float(np.mean(v)) for k, v in recon.items()}
    if figures and data.test.blocks:
        b, z = data.test.blocks[0], zs[0]
        n = min(cfg.figure_queries, len(b))
        idx, _ = top_k(z[:n], b.y, k=5)
        figs["retrieval"] = retrieval_figure(
            b.stimulus_id[:n].tolist(),
            [b.stimulus_id[r].tolist() for r in idx],
            data.embeddings,
            f"{name}: top-5 among {len(b)} test images ({b.session})",
            settings,
        )
        near, _ = top_k(z[:n], e_train, k=3)
        figs["reconstruction"] = retrieval_figure(
            b.stimulus_id[:n].tolist(),
            [train_ids[r].tolist() for r in near],
            data.embeddings,
            f"{name}: retrieval-based reconstruction (nearest of {len(train_ids)} training images)",
            settings,
        )
    return RegionResult(name, data.regions, fit, test, val, recon, figs)


def run_alignment(
    cfg: AlignConfig,
    settings: Settings | None = None,
    embeddings: EmbeddingTable | None = None,
    track: bool = True,
    figures: bool = True,
    echo=None,
) -> AlignResult:
    """Read the store once, then fit and evaluate one projector per region set."""
    settings = settings or get_settings()
    data = build_alignment_data(cfg.data, settings, embeddings)
    run_id = _start_run(cfg, settings) if track else None
    ok = False
    checkpoint = _encoder_checkpoint(cfg, settings)
    from neurobridge.tracking import mlflow_run

    try:
        with mlflow_run.system_metrics(settings.mlflow_uri, run_id, node="driver"):
            results = _fit_sets(cfg, settings, data, run_id, checkpoint, figures, echo)
        if run_id is not None:
            _log_model_card(settings, run_id, cfg, data, results)
        ok = True
        return AlignResult(data, results, run_id)
    finally:
        if run_id is not None:
            mlflow_run.end_run(settings.mlflow_uri, run_id, ok)


def _start_run(cfg: AlignConfig, settings: Settings) -> str:
    """The align run, with the token-store versions it reads as MLflow dataset inputs."""
    from neurobridge.store.read import sources
    from neurobridge.tracking import lineage, mlflow_run

    srcs = sources(settings, cfg.data.datasets, allow_partial=cfg.data.allow_partial)
    tags = {"kind": "align", **{f"dataset.{s.name}": s.ref.version for s in srcs}}
    run_id = mlflow_run.start_run(settings.mlflow_uri, cfg.experiment, cfg.name, cfg.model_dump(mode="json"), tags)
    lineage.log_dataset_inputs(settings.mlflow_uri, run_id, [s.ref for s in srcs])
    return run_id


def _fit_sets(cfg, settings, data, run_id, checkpoint, figures, echo) -> dict[str, RegionResult]:
    """Fit and evaluate one projector per region set, logging each into the run as it finishes."""
    results: dict[str, RegionResult] = {}
    for name, regions in cfg.region_sets.items():
        sub = data.select_regions(regions)
        fit = fit_region_set(name, sub, cfg, settings, run_id, checkpoint)
        res = evaluate_region_set(name, sub, fit, cfg, settings, figures)
        results[name] = res
        if echo is not None:
            m = res.test["mean"]
            echo(
                f"{name}: test top-1 {m['image_top1']:.3f} (chance {m['image_chance1']:.3f}), top-5 "
                f"{m['image_top5']:.3f} (chance {m['image_chance5']:.3f}) among {m['n_candidates']:.0f}; "
                f"brain top-1 {m['brain_top1']:.3f}; {fit.tokens_per_s:,.0f} tokens/s"
            )
        if run_id is not None:
            _log(settings, run_id, name, res, history=cfg.scaling.backend == "local")
    return results


def _encoder_checkpoint(cfg: AlignConfig, settings: Settings) -> bytes | None:
    """The encoder checkpoint's bytes when the encoder trains with the projector (shipped to the workers)."""
    spec = cfg.data.encoder
    if spec is None or not spec.trainable:
        return None
    from neurobridge.storage import filesystem

    fs, path = filesystem(spec.checkpoint, settings)
    return fs.cat_file(path)


def fit_region_set(
    name: str,
    sub: AlignmentData,
    cfg: AlignConfig,
    settings: Settings,
    run_id: str | None = None,
    checkpoint: bytes | None = None,
) -> FitResult:
    """One region set's fit, on Ray Train or in this process (same loop, same data)."""
    from neurobridge.align.train import fit_on_ray, make_model

    encoder = None
    if checkpoint is not None:
        from neurobridge.align.encoder_train import session_specs

        encoder = {
            "spec": cfg.data.encoder.model_dump(mode="json"),
            "specs": session_specs(sub, sub.train),
            "out_dim": sub.dim,
            "checkpoint": checkpoint,
        }
    if cfg.scaling.backend == "ray":
        fit, _ = fit_on_ray(sub.train, sub.val, cfg, settings, name, run_id, encoder)
        return fit
    import torch

    device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    model = make_model({"encoder": encoder, "train": sub.train, "projector": cfg.projector.model_dump()}, device)
    return fit_projector(sub.train, sub.val, cfg.projector, device=device, model=model)


MODEL_CARD = "align_model.json"


def _log_model_card(
    settings: Settings, run_id: str, cfg: AlignConfig, data: AlignmentData, results: dict[str, RegionResult]
) -> None:
    """``model/align_model.json``: what each weights file is and the config that trained it (for the registry)."""
    import json

    from neurobridge.tracking import lineage, mlflow_run

    card = {
        "format": "neurobridge.align_model/1",
        "embedding_dim": data.dim,
        "embedding_model": data.embeddings.model,
        "encoder": cfg.data.encoder.model_dump(mode="json") if cfg.data.encoder else None,
        "files": {name: f"projector_{name}.pt" for name in results},
        "regions": {name: r.regions for name, r in results.items()},
        "sessions": sorted(data.sessions),
        "load": "neurobridge.align.encoder_train.load_aligned_model",
        "test": {
            name: {k: r.test["mean"].get(k) for k in ("image_top1", "image_top5", "image_chance1", "n_candidates")}
            for name, r in results.items()
        },
        "config": cfg.model_dump(mode="json"),
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / MODEL_CARD
        path.write_text(json.dumps(card, indent=1, default=float))
        mlflow_run.log_artifact(settings.mlflow_uri, run_id, str(path), "model")
    params = {"embedding_dim": data.dim, "embedding_model": data.embeddings.model, "region_sets": list(results)}
    lineage.log_logged_model(settings.mlflow_uri, run_id, lineage.ModelInfo("projectors", "align", params))


def _log(settings: Settings, run_id: str, name: str, res: RegionResult, history: bool = True) -> None:
    import matplotlib.pyplot as plt

    from neurobridge.tracking import mlflow_run

    uri = settings.mlflow_uri
    metrics = {f"{name}.test.{k}": v for k, v in res.test["mean"].items()}
    metrics.update({f"{name}.val.{k}": v for k, v in res.val["mean"].items()})
    metrics.update({f"{name}.test.{k}": v for k, v in res.recon.items()})
    metrics.update(
        {
            f"{name}.fit.tokens_per_s": res.fit.tokens_per_s,
            f"{name}.fit.examples_per_s": res.fit.examples_per_s,
            f"{name}.fit.best_epoch": res.fit.best_epoch,
        }
    )
    mlflow_run.log_metrics(uri, run_id, metrics)
    if history:  # Ray Train's rank 0 logs each epoch live
        logger = mlflow_run.MetricsLogger(uri, run_id)
        for rec in res.fit.history:
            logger.log({f"{name}.train.{k}": v for k, v in rec.items() if k != "epoch"}, rec["epoch"])
    for fig_name, fig in res.figures.items():
        mlflow_run.log_figure(uri, run_id, fig, f"plots/{name}_{fig_name}.png")
        plt.close(fig)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"projector_{name}.pt"
        save_model(res.fit.model, str(path))
        mlflow_run.log_artifact(uri, run_id, str(path), "model")


__all__ = ["AlignResult", "RegionResult", "evaluate_region_set", "run_alignment", "train_embeddings"]
