"""One decode run: read the store once per input kind, then every decoder on every task per region set (Ray Train
or in this process), scored with chance and ceilings beside each number, tracked in MLflow with one figure.

Metrics are logged as ``<set>.<task>.<decoder>.<score>`` (e.g. ``IT.concept.ridge.top5`` beside
``IT.concept.ridge.chance5``; ``IT.properties.mlp.r2.size`` per property), the decoders' weights under ``model/``,
and ``decode_summary.json`` holds every score, per session too.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurobridge.align.examples import AlignmentData
from neurobridge.config import Settings, get_settings
from neurobridge.decode.config import VOLUME_DECODERS, DecodeConfig
from neurobridge.decode.data import coordinates, embedding_table, read_examples, to_task
from neurobridge.decode.labels import Labels, load_labels
from neurobridge.decode.nets import VolumeLayout
from neurobridge.decode.run_set import DecoderResult, SetInputs, fit_region_set

SUMMARY_FILE = "decode_summary.json"


@dataclass
class DecodeResult:
    results: dict[str, list[DecoderResult]]
    counts: dict = field(default_factory=dict)
    run_id: str | None = None
    figure: object | None = None

    def metrics(self) -> dict[str, float]:
        """Flat numeric scores: ``<set>.<task>.<decoder>.<score>`` and ``….r2.<property>``."""
        out: dict[str, float] = {}
        for name, rs in self.results.items():
            for r in rs:
                base = f"{name}.{r.task}.{r.decoder}"
                out.update({f"{base}.{k}": float(v) for k, v in r.mean.items() if _finite(v)})
                for prop, cell in r.properties.items():
                    if _finite(cell["r2"]):
                        out[f"{base}.r2.{prop}"] = cell["r2"]
                out.update({f"{base}.attention.{k}": v for k, v in r.attention.items()})
        return out

    def get(self, name: str, task: str, decoder: str) -> DecoderResult:
        return next(r for r in self.results[name] if r.task == task and r.decoder == decoder)


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def run_decode(
    cfg: DecodeConfig, settings: Settings | None = None, track: bool = True, figures: bool = True, echo=None
) -> DecodeResult:
    from neurobridge.store.read import sources

    settings = settings or get_settings()
    srcs = sources(settings, cfg.data.datasets)
    labels = load_labels(cfg.labels, settings, srcs)
    table = embedding_table(cfg, settings, srcs)
    base = read_examples(cfg, settings, table, encoder=False)
    enc = read_examples(cfg, settings, table, encoder=True) if "encoder" in cfg.decoders else None
    coords = coordinates(settings, srcs) if set(cfg.decoders) & set(VOLUME_DECODERS) else {}
    checkpoint = _encoder_checkpoint(cfg, settings)
    run_id = _start(cfg, settings, srcs) if track else None
    out = DecodeResult({}, {"data": base.counts, "labels": labels.source}, run_id)
    ok = False
    try:
        for name, regions in cfg.region_sets.items():
            inp = set_inputs(
                name, base.select_regions(regions), enc and enc.select_regions(regions), labels, coords, cfg, checkpoint
            )
            out.counts[name] = {t: d.counts for t, d in inp.tasks.items()}
            out.results[name] = _fit(inp, cfg, settings, run_id)
            if echo is not None:
                for line in headlines(name, out.results[name]):
                    echo(line)
        if figures:
            from neurobridge.decode.figures import decode_figure

            out.figure = decode_figure(out.results, f"{cfg.name}: {', '.join(cfg.data.datasets)}")
        if run_id is not None:
            _log(settings, run_id, cfg, out)
        ok = True
        return out
    finally:
        if run_id is not None:
            from neurobridge.tracking import mlflow_run

            mlflow_run.end_run(settings.mlflow_uri, run_id, ok)


def set_inputs(
    name: str,
    data: AlignmentData,
    enc: AlignmentData | None,
    labels: Labels,
    coords: dict,
    cfg: DecodeConfig,
    checkpoint: bytes | None,
) -> SetInputs:
    tasks = {t: to_task(data, labels, t, cfg) for t in cfg.tasks}
    inp = SetInputs(name, tasks, reliability=labels.reliability)
    if enc is not None:
        inp.encoder_tasks = {t: to_task(enc, labels, t, cfg) for t in cfg.tasks}
        if checkpoint is not None:
            from neurobridge.align.encoder_train import session_specs

            inp.encoder = {
                "spec": cfg.encoder.model_dump(mode="json"),
                "specs": session_specs(enc, enc.train),
                "checkpoint": checkpoint,
            }
    for key, info in data.sessions.items():
        where = coords.get(key)
        if where and len(info.unit_ids) == info.n_features and all(u in where for u in info.unit_ids.tolist()):
            xyz = np.array([where[u] for u in info.unit_ids.tolist()])
            inp.layouts[key] = VolumeLayout(xyz, info.feature_regions, cfg.volume)
    return inp


def _encoder_checkpoint(cfg: DecodeConfig, settings: Settings) -> bytes | None:
    if cfg.encoder is None or "encoder" not in cfg.decoders or not cfg.encoder.trainable:
        return None
    from neurobridge.storage import filesystem

    fs, path = filesystem(cfg.encoder.checkpoint, settings)
    return fs.cat_file(path)


def _fit(inp: SetInputs, cfg: DecodeConfig, settings: Settings, run_id: str | None) -> list[DecoderResult]:
    if cfg.scaling.backend == "ray":
        from neurobridge.decode.train import fit_on_ray

        return fit_on_ray(inp, cfg, settings, run_id)
    import torch

    device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    return fit_region_set(inp, cfg, device)


def headlines(name: str, results: list[DecoderResult]) -> list[str]:
    """One line per fit: the headline score with its chance or ceiling."""
    lines = []
    for r in results:
        m, head = r.mean, f"{name} {r.task:<10} {r.decoder:<7}"
        if r.skipped:
            lines.append(f"{head} skipped: {r.skipped}")
        elif r.task == "concept":
            lines.append(
                f"{head} top-1 {m['top1']:.3f} (chance {m['chance1']:.4f}), top-5 {m['top5']:.3f} "
                f"(chance {m['chance5']:.4f}) among {m['n_classes']:.0f} concepts"
            )
        elif r.task == "properties":
            best = max(r.properties, key=lambda p: r.properties[p]["r2"])
            rel = r.properties[best]["reliability"]
            lines.append(
                f"{head} mean R² {m['r2_mean']:.3f}, mean r {m['r_mean']:.3f}; best {best} R² "
                f"{r.properties[best]['r2']:.3f} (ratings' reliability {rel if rel is None else round(rel, 3)})"
            )
        else:
            lines.append(
                f"{head} top-1 {m['image_top1']:.3f} (chance {m['image_chance1']:.4f}), top-5 "
                f"{m['image_top5']:.3f} (chance {m['image_chance5']:.4f}) among {m['n_candidates']:.0f} images"
            )
    return lines


def _start(cfg: DecodeConfig, settings: Settings, srcs) -> str:
    from neurobridge.tracking import mlflow_run

    tags = {"kind": "decode", **{f"dataset.{s.name}": s.ref.version for s in srcs}}
    return mlflow_run.start_run(settings.mlflow_uri, cfg.experiment, cfg.name, cfg.model_dump(mode="json"), tags)


def _log(settings: Settings, run_id: str, cfg: DecodeConfig, out: DecodeResult) -> None:
    import matplotlib.pyplot as plt
    import torch

    from neurobridge.tracking import mlflow_run

    uri = settings.mlflow_uri
    mlflow_run.log_metrics(uri, run_id, out.metrics())
    if out.figure is not None:
        mlflow_run.log_figure(uri, run_id, out.figure, "plots/decode.png")
        plt.close(out.figure)
    summary = {
        "config": cfg.model_dump(mode="json"),
        "counts": out.counts,
        "results": {n: [r.summary() for r in rs] for n, rs in out.results.items()},
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=1, default=float))
        mlflow_run.log_artifact(uri, run_id, str(path))
        for name, rs in out.results.items():
            weights = {f"{r.task}/{r.decoder}/{k}": v for r in rs if r.state for k, v in r.state.items()}
            if weights:
                file = Path(d) / f"decoders_{name}.pt"
                torch.save(weights, file)
                mlflow_run.log_artifact(uri, run_id, str(file), "model")
