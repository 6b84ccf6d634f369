"""Windows → one pooled latent each: the frozen encoder behind `neurobridge embed` and the registered pyfunc.

A window from a session the model never saw gets that session (its subject, task, regions and units) added to the
vocabularies first, exactly as fine-tuning does: new rows start as copies of the UNK row, so existing rows and
therefore every earlier embedding stay bit for bit the same whatever order new sessions arrive in.
"""

from __future__ import annotations

import numpy as np
import torch

from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.patching import CONTEXT, collate
from neurobridge.models.vocab import Vocabularies, unit_key


class WindowEncoder:
    def __init__(self, model: MaskedNeuralModel, vocabs: Vocabularies, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.vocabs = vocabs
        self.device = torch.device(device)
        self.new_keys: dict[str, set[str]] = {}  # what was added for unseen data (reported in the embedding card)

    @property
    def dim(self) -> int:
        return int(self.model.cfg.d_model)

    def _extend(self, rows: list[dict]) -> None:
        wanted: dict[str, set[str]] = {name: set() for name in (*CONTEXT, "region", "unit")}
        for r in rows:
            for name in CONTEXT:
                if r.get(name):
                    wanted[name].add(str(r[name]))
            if r.get("unit_regions") is not None:
                wanted["region"].update(str(x) for x in r["unit_regions"])
            if r.get("unit_ids") is not None and r.get("session"):
                wanted["unit"].update(unit_key(str(r["session"]), str(u)) for u in r["unit_ids"])
        for name, keys in wanted.items():
            unseen = sorted(k for k in keys if k not in self.vocabs[name])
            if unseen:
                added = self.model.extend_vocab(self.vocabs, name, unseen)
                self.new_keys.setdefault(name, set()).update(added)
        self.model.to(self.device)

    @torch.no_grad()
    def embed_rows(self, rows: list[dict]) -> np.ndarray:
        """[len(rows), d] float32: the encoder's latents (nothing masked) averaged over each window's tokens."""
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._extend(rows)
        batch = collate(rows, self.vocabs, self.model.cfg.neurons_per_token)
        return self.model.encode(batch.to(self.device)).pooled().float().cpu().numpy()
