"""The model families that can be registered: the masked window encoder (pretraining runs) and the alignment
projectors (align runs). Each is a ``tracking.registry.ModelKind``: which file its run logs, how that folder is
loaded weights-only, its MLflow signature and input example, which metrics tag the version, and its gate: what
``champion`` requires of the run (the encoder: an evaluation whose co-bps reaches NLB's smoothing baseline on every
dataset evaluated; the projectors: a test top-1 whose 95 % interval lies above chance for every region set)."""

from __future__ import annotations

import json
from pathlib import Path

from neurobridge.config import Settings
from neurobridge.tracking import registry
from neurobridge.tracking.registry import DEFAULT_ALIAS, Promotion, RegistryError, Verdict, VersionInfo

EXAMPLE_BINS = 10


def input_example(vocabs, neurons_per_token: int):
    """One window the model knows (its first session and region): the MLflow input example."""
    import numpy as np
    import pandas as pd

    def first(name: str) -> str:
        keys = vocabs[name].to_list()
        return keys[0] if keys else "unknown"

    n_units = neurons_per_token
    counts = (np.arange(n_units * EXAMPLE_BINS) % 3).astype(np.int64).tolist()
    row = {
        "session": first("session"),
        "subject": first("subject"),
        "task": first("task"),
        "dataset": first("dataset"),
        "n_units": n_units,
        "n_bins": EXAMPLE_BINS,
        "counts": counts,
        "unit_regions": [first("region")] * n_units,
        "unit_ids": [f"u{i}" for i in range(n_units)],
    }
    return pd.DataFrame([row])


def signature(d_model: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    inputs = Schema(
        [
            ColSpec("string", "session"),
            ColSpec("string", "subject"),
            ColSpec("string", "task"),
            ColSpec("string", "dataset", required=False),
            ColSpec("long", "n_units"),
            ColSpec("long", "n_bins"),
            ColSpec(Array("long"), "counts", required=False),
            ColSpec(Array("double"), "mua", required=False),
            ColSpec(Array("string"), "unit_regions"),
            ColSpec(Array("string"), "unit_ids", required=False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, d_model))]))


def projector_signature(dim: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    inputs = Schema(
        [
            ColSpec("string", "session"),
            ColSpec(Array("double"), "features"),
            ColSpec("string", "region_set", required=False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]))


def _align_parts(local: Path):
    """(signature, input example) of an align run's ``model/`` folder, after loading every projector in it."""
    import numpy as np
    import pandas as pd

    from neurobridge.align.encoder_train import load_aligned_model

    card = json.loads((local / ALIGN_FILE).read_text())
    missing = [f for f in card.get("files", {}).values() if not (local / f).exists()]
    if not card.get("files") or missing:
        raise RegistryError(f"{local / ALIGN_FILE}: projector files missing: {missing or 'none listed'}")
    first = next(iter(card["files"]))
    models = {name: load_aligned_model(str(local / f)) for name, f in card["files"].items()}  # weights-only
    session, dim = next(iter(models[first].in_dims.items()))
    example = pd.DataFrame([{"session": session, "features": np.zeros(dim).tolist(), "region_set": first}])
    return projector_signature(int(card["embedding_dim"])), example


def _describe_encoder(local: Path):
    from neurobridge.models.checkpoint import load_checkpoint

    model, vocabs, _ = load_checkpoint(local / ENCODER_FILE)  # weights-only; refuses anything else
    return signature(model.cfg.d_model), input_example(vocabs, model.cfg.neurons_per_token)


EVAL_KEYS = ("co_bps", "co_bps_smoothing", "co_bps_mean_rate", "co_bps_oracle", "fp_bps_mean", "behavior_r2_mean")


def _encoder_metric(name: str) -> bool:
    training = name in ("loss", "poisson_nll", "mse", "step", "val_loss", "best_val_loss", "best_step")
    return training or (name.startswith("eval.") and name.endswith(EVAL_KEYS)) or name == "data.items_failed"


def _align_metric(name: str) -> bool:
    wanted = (".test.image_top1", ".test.image_top5", ".test.image_chance1", ".test.n_candidates")
    return name.endswith(wanted) or name == "data.items_failed"


def encoder_gate(metrics) -> Verdict:
    """co-bps (``eval.<dataset>.co_bps``, written into the run by ``neurobridge evaluate``) at least NLB's
    smoothing baseline on the same cells, for every dataset evaluated."""
    suffix = ".co_bps"
    datasets = sorted(k[len("eval.") : -len(suffix)] for k in metrics if k.startswith("eval.") and k.endswith(suffix))
    if not datasets:
        return Verdict(False, False, "no evaluation in the run (no eval.<dataset>.co_bps)")
    lines, ok, judged = [], True, False
    for ds in datasets:
        model, base = metrics[f"eval.{ds}.co_bps"], metrics.get(f"eval.{ds}.co_bps_smoothing")
        if base is None:
            lines.append(f"{ds}: co-bps {model:.4f}, no smoothing baseline to compare with")
            continue
        judged = True
        ok &= model >= base
        lines.append(f"{ds}: co-bps {model:.4f} {'>=' if model >= base else '<'} smoothing {base:.4f}")
    return Verdict(judged, judged and ok, "; ".join(lines))


def align_gate(metrics) -> Verdict:
    """Every region set's test image top-1 with its 95 % Wilson interval (over the test images) above chance."""
    from neurobridge.align.retrieval import wilson_interval

    suffix = ".test.image_top1"
    sets = sorted(k[: -len(suffix)] for k in metrics if k.endswith(suffix))
    if not sets:
        return Verdict(False, False, "no test retrieval in the run (no <region set>.test.image_top1)")
    lines, ok = [], True
    for s in sets:
        top1, chance = metrics[f"{s}{suffix}"], metrics.get(f"{s}.test.image_chance1", 0.0)
        n = metrics.get(f"{s}.test.n_candidates", 0.0)
        low, high = wilson_interval(top1 * n, n)
        ok &= low > chance
        lines.append(f"{s}: top-1 {top1:.3f} (95 % {low:.3f}-{high:.3f}, {n:.0f} images) vs chance {chance:.3f}")
    return Verdict(True, ok, "; ".join(lines))


ENCODER_FILE, ALIGN_FILE = "model.pt", "align_model.json"
KINDS = {
    "pretrain": registry.ModelKind(
        "pretrain",
        ENCODER_FILE,
        Path(__file__).with_name("pyfunc_encoder.py"),
        _describe_encoder,
        _encoder_metric,
        encoder_gate,
    ),
    "align": registry.ModelKind(
        "align", ALIGN_FILE, Path(__file__).with_name("pyfunc_projector.py"), _align_parts, _align_metric, align_gate
    ),
}


def register(
    run_id: str, name: str, alias: str | None = DEFAULT_ALIAS, settings: Settings | None = None
) -> VersionInfo:
    """Register a FINISHED pretraining or alignment run's model as a new version of ``name``."""
    return registry.register(run_id, name, KINDS, alias, settings)


def promote(request: Promotion, settings: Settings | None = None) -> VersionInfo:
    """Move an alias to a version; ``champion`` only through the version's gate (or ``request.force``)."""
    return registry.promote(request, KINDS, settings)


__all__ = ["KINDS", "Promotion", "RegistryError", "promote", "register"]
