"""Responses through a pretrained masked model (frozen): each region's latents pooled over its response window.

``MaskedNeuralModel.encode`` sees the whole window with nothing masked; tokens are region-pure patches × bins, so
a region's window is exactly the tokens of its patches at the bins inside the window. The pooled latents replace
the binned responses as the projector's input; everything downstream is unchanged. ``init: random`` builds the
same architecture untrained, the control that shows what pretraining adds.
"""

from __future__ import annotations

import numpy as np
import torch

from neurobridge.align.config import EncoderSpec
from neurobridge.config import Settings
from neurobridge.storage import filesystem


class EncoderFeatures:
    def __init__(self, spec: EncoderSpec, settings: Settings):
        from neurobridge.models.checkpoint import load_checkpoint
        from neurobridge.models.ndt import MaskedNeuralModel

        fs, path = filesystem(spec.checkpoint, settings)
        model, vocabs, _ = load_checkpoint(fs.cat_file(path))
        if spec.init == "random":
            torch.manual_seed(spec.seed)
            model = MaskedNeuralModel(model.cfg, vocabs)
        use_cuda = spec.device != "cpu" and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.model = model.to(self.device).eval()
        self.vocabs = vocabs
        self.spec = spec
        self.dim = model.cfg.d_model

    @torch.no_grad()
    def __call__(self, rows: list[dict], regions: np.ndarray, windows: list[tuple[str, np.ndarray]]) -> np.ndarray:
        """[rows, len(windows) × d]: rows of one session (same units and bins); ``regions``: each unit's region;
        ``windows``: (region, bin indices) in feature order."""
        from neurobridge.models.patching import collate

        out = []
        for i in range(0, len(rows), self.spec.batch_rows):
            batch = collate(rows[i : i + self.spec.batch_rows], self.vocabs, self.model.cfg.neurons_per_token)
            lat = self.model.encode(batch.to(self.device))
            unit_patch = batch.unit_patch[0].numpy()
            n_patch = int(batch.n_patches[0])
            patch_region = np.empty(n_patch, dtype=object)
            real = unit_patch >= 0
            patch_region[unit_patch[real]] = regions[: len(unit_patch)][real]
            tok_patch = batch.token_patch[0].numpy()
            tok_time = batch.token_time[0].numpy()
            tok_region = np.where(tok_patch < n_patch, patch_region[np.minimum(tok_patch, n_patch - 1)], None)
            pooled = []
            for region, bins in windows:
                sel = torch.as_tensor((tok_region == region) & np.isin(tok_time, bins), device=self.device)
                m = (lat.token_valid & sel[None, :]).unsqueeze(-1).to(lat.tokens.dtype)
                pooled.append((lat.tokens * m).sum(1) / m.sum(1).clamp_min(1.0))
            out.append(torch.cat(pooled, dim=1).float().cpu().numpy())
        return np.concatenate(out)
