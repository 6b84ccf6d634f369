"""An encoder trained with the projector: responses → masked model (last layers unfrozen, or from scratch) →
per-region window pooling → projector, as one module so the optimizer and DDP see every trained weight.

Examples in this mode carry each presentation's selected units × all bins (``AlignDataConfig`` raw mode). All rows
of a session share units and bins, so the patch layout is computed once per session from a one-row template: a
row of cell indices patched by ``models.patching`` tells where each cell lands among the tokens, and each step
only gathers the batch's values into that layout before ``encode``. Region pooling is a fixed token-weight matrix.
"""

from __future__ import annotations

import io
from dataclasses import fields

import numpy as np
import torch
from torch import nn

from neurobridge.align.config import EncoderSpec, ProjectorConfig
from neurobridge.align.examples import AlignmentData, AlignmentSplit
from neurobridge.align.projector import AlignProjector
from neurobridge.models.config import ModelConfig
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.patching import Batch, collate
from neurobridge.models.vocab import Vocabularies

KIND = "neurobridge.encoder_projector/1"
_UNUSED_BY_ENCODE = ("enc_to_dec", "dec_pos", "mask_token", "decoder", "dec_norm", "count_head", "mua_head")


def session_specs(data: AlignmentData, split: AlignmentSplit) -> dict[str, dict]:
    """JSON-able layout of each session's examples: unit regions (feature order), window bins, context."""
    out = {}
    for b in split.blocks:
        info = data.sessions[b.session]
        if info.context is None:
            raise ValueError(
                f"{b.session}: examples hold pooled features; a trained encoder needs raw windows "
                "(data.encoder.train: last_layers or scratch)"
            )
        out[b.session] = {
            "unit_regions": info.unit_regions.tolist(),
            "unit_ids": np.asarray(info.unit_ids).astype(str).tolist(),
            "context": dict(info.context),
            "bins": {r: np.asarray(v).tolist() for r, v in info.bins.items()},
        }
    return out


class _Layout:
    """One session's token layout (from a one-row template) and its region pooling weights."""

    def __init__(self, spec: dict, vocabs: Vocabularies, k: int):
        ctx = spec["context"]
        regions = spec["unit_regions"]
        n_units, n_bins = len(regions), int(ctx["n_bins"])
        cells = np.arange(1, n_units * n_bins + 1, dtype=np.float32)
        row = {
            "n_units": n_units,
            "n_bins": n_bins,
            "unit_regions": regions,
            "unit_ids": spec.get("unit_ids"),  # units keep their pretrained rows (absent in files saved before)
            **{f: ctx.get(f) for f in ("session", "subject", "task", "dataset")},
            "counts": cells if ctx.get("is_counts", True) else None,
            "mua": None if ctx.get("is_counts", True) else cells,
        }
        self.template = collate([row], vocabs, k)
        self.cell = (self.template.tokens[0].round().long() - 1).clamp_min(-1)  # [N, k] flat cell index, -1: pad
        self.shape = (n_units, n_bins)
        region_ids = vocabs.region.lookup(list(spec["bins"]))
        tok_region = self.template.token_region[0]
        tok_time = self.template.token_time[0]
        valid = self.template.token_valid[0]
        w = []
        for rid, bins in zip(region_ids, spec["bins"].values(), strict=True):
            sel = valid & (tok_region == int(rid)) & torch.isin(tok_time, torch.as_tensor(bins, dtype=torch.long))
            w.append(sel.float() / sel.sum().clamp_min(1))
        self.pool = torch.stack(w)  # [regions, N]
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> _Layout:
        if device != self.device:
            self.template, self.cell, self.pool = self.template.to(device), self.cell.to(device), self.pool.to(device)
            self.device = device
        return self

    def batch(self, x: torch.Tensor) -> Batch:
        n = len(x)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        tokens = torch.where(self.cell[None] >= 0, x[:, self.cell.clamp_min(0)], zero)
        parts = {}
        for f in fields(Batch):
            v = getattr(self.template, f.name)
            if isinstance(v, dict):
                parts[f.name] = {key: t.expand(n, *t.shape[1:]) for key, t in v.items()}
            else:
                parts[f.name] = v.expand(n, *v.shape[1:])
        parts["values"] = x.view(n, *self.shape)
        parts["tokens"] = tokens
        return Batch(**parts)


class EncoderProjector(nn.Module):
    """``forward(x, session)`` like ``AlignProjector``, with the encoder run on the raw windows inside the step."""

    def __init__(
        self,
        encoder: MaskedNeuralModel,
        vocabs: Vocabularies,
        sessions: dict[str, dict],
        out_dim: int,
        cfg: ProjectorConfig,
        spec: EncoderSpec,
    ):
        super().__init__()
        self.encoder, self.vocabs, self.sessions, self.spec = encoder, vocabs, sessions, spec
        d = encoder.cfg.d_model
        self.head = AlignProjector({s: len(v["bins"]) * d for s, v in sessions.items()}, out_dim, cfg)
        self.layouts = {s: _Layout(v, vocabs, encoder.cfg.neurons_per_token) for s, v in sessions.items()}
        self.cfg, self.out_dim = cfg, out_dim
        self.in_dims = {s: len(v["unit_regions"]) * int(v["context"]["n_bins"]) for s, v in sessions.items()}
        encoder.requires_grad_(spec.train == "scratch")
        if spec.train == "last_layers":
            for layer in encoder.encoder.layers[-spec.unfreeze_layers :]:
                layer.requires_grad_(True)
            encoder.enc_norm.requires_grad_(True)
        for name in _UNUSED_BY_ENCODE:  # the reconstruction decoder never runs here
            getattr(encoder, name).requires_grad_(False)

    def features(self, x: torch.Tensor, session: str) -> torch.Tensor:
        """Pooled latents [n, regions × d] of raw windows ``x`` [n, units × bins]."""
        layout = self.layouts[session].to(x.device)
        lat = self.encoder.encode(layout.batch(x))
        return torch.einsum("rn,bnd->brd", layout.pool, lat.tokens).reshape(len(x), -1)

    def forward(self, x: torch.Tensor, session: str) -> torch.Tensor:
        return self.head(self.features(x, session), session)

    def scale(self) -> torch.Tensor:
        return self.head.scale()

    def param_groups(self) -> list[dict]:
        enc = [p for p in self.encoder.parameters() if p.requires_grad]
        groups = [{"params": list(self.head.parameters()), "lr": self.cfg.lr}]
        return groups + ([{"params": enc, "lr": self.spec.lr}] if enc else [])

    @torch.no_grad()
    def init_normalizer(self, split: AlignmentSplit, chunk: int = 256) -> None:
        """Standardise the head's input with the training examples' pooled latents at initialisation."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        for b in split.blocks:
            x = torch.as_tensor(b.x, device=device)
            f = torch.cat([self.features(x[i : i + chunk], b.session) for i in range(0, len(x), chunk)]).cpu().numpy()
            std = f.std(axis=0)
            self.head.set_normalizer(b.session, f.mean(axis=0), np.where(std > 1e-6, std, 1.0))
        self.train(was)


def build_encoder_projector(
    train: AlignmentSplit,
    specs: dict[str, dict],
    out_dim: int,
    spec: EncoderSpec,
    cfg: ProjectorConfig,
    checkpoint: bytes,
    device: torch.device | str = "cpu",
) -> EncoderProjector:
    """The module fit_projector trains: pretrained weights (last_layers) or the same architecture re-initialised
    with ``spec.seed`` (scratch); head normalisers from the training examples."""
    from neurobridge.models.checkpoint import load_checkpoint

    encoder, vocabs, _ = load_checkpoint(checkpoint)
    if spec.init == "random":
        torch.manual_seed(spec.seed)
        encoder = MaskedNeuralModel(encoder.cfg, vocabs)
    torch.manual_seed(cfg.seed)
    model = EncoderProjector(encoder, vocabs, specs, out_dim, cfg, spec).to(device)
    model.init_normalizer(train)
    return model


def save_encoder_projector(model: EncoderProjector, path: str) -> None:
    """Weights + JSON-able constructor arguments, loadable with ``weights_only=True``."""
    payload = {
        "format": KIND,
        "state": model.state_dict(),
        "encoder_config": model.encoder.cfg.model_dump(mode="json"),
        "vocabs": model.vocabs.to_dict(),
        "sessions": model.sessions,
        "out_dim": model.out_dim,
        "cfg": model.cfg.model_dump(mode="json"),
        "spec": model.spec.model_dump(mode="json"),
    }
    torch.save(payload, path)


def load_aligned_model(source: str | bytes, map_location: str = "cpu") -> nn.Module:
    """A saved projector (``save_projector``) or encoder + projector (``save_encoder_projector``)."""
    from neurobridge.align.projector import load_projector

    raw = io.BytesIO(source) if isinstance(source, bytes) else source
    payload = torch.load(raw, map_location=map_location, weights_only=True)
    if payload.get("format") != KIND:
        return load_projector(io.BytesIO(source) if isinstance(source, bytes) else source, map_location)
    encoder = MaskedNeuralModel(ModelConfig(**payload["encoder_config"]), Vocabularies.from_dict(payload["vocabs"]))
    model = EncoderProjector(
        encoder,
        Vocabularies.from_dict(payload["vocabs"]),
        payload["sessions"],
        payload["out_dim"],
        ProjectorConfig(**payload["cfg"]),
        EncoderSpec(**payload["spec"]),
    )
    model.load_state_dict(payload["state"])
    return model.eval()
