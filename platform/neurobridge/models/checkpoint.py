"""Checkpoints as plain tensors + JSON-able dicts, loaded with ``torch.load(weights_only=True)`` only.

Nothing is unpickled beyond tensors and builtins, and a checkpoint from a different model configuration is refused
with the differing keys named, instead of failing later with a shape error or silently mis-loading.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO

import torch

from neurobridge.models.config import ModelConfig
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.vocab import Vocabularies

FORMAT = "neurobridge.masked_model/1"


class CheckpointError(ValueError):
    pass


def save_checkpoint(
    target: str | Path | BinaryIO, model: MaskedNeuralModel, vocabs: Vocabularies, extra: dict | None = None
) -> None:
    """Save state, config and vocabularies (``extra``: step, metrics… builtins and tensors only)."""
    payload = {
        "format": FORMAT,
        "config": model.cfg.model_dump(mode="json"),
        "vocabs": vocabs.to_dict(),
        "state": model.state_dict(),
        "extra": extra or {},
    }
    torch.save(payload, target)


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in config_diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: checkpoint {a!r} vs expected {b!r}"]


def load_checkpoint(
    source: str | Path | BinaryIO | bytes, expected: ModelConfig | None = None, map_location: str = "cpu"
) -> tuple[MaskedNeuralModel, Vocabularies, dict]:
    """Rebuild the model from a checkpoint; refuse it if ``expected`` differs from the saved config."""
    name = str(source) if isinstance(source, str | Path) else "<stream>"
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated file, a pickle with code, not a torch file at all
        raise CheckpointError(f"{name}: not a loadable weights-only checkpoint ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not a {FORMAT} checkpoint")
    try:
        cfg = ModelConfig.model_validate(payload["config"])
    except Exception as e:
        raise CheckpointError(f"{name}: invalid model config in checkpoint ({e})") from e
    if expected is not None:
        diffs = config_diff(cfg.model_dump(mode="json"), expected.model_dump(mode="json"))
        if diffs:
            raise CheckpointError(f"{name}: checkpoint was saved with a different model config: " + "; ".join(diffs))
    vocabs = Vocabularies.from_dict(payload["vocabs"])
    model = MaskedNeuralModel(cfg, vocabs)
    try:
        model.load_state_dict(payload["state"])
    except RuntimeError as e:
        raise CheckpointError(f"{name}: weights do not match the saved config/vocabularies ({e})") from e
    return model, vocabs, payload.get("extra", {})
