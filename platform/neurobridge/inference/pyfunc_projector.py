"""The registered alignment model's code (MLflow "models from code"): neural responses → image-embedding space.

An ``align`` run trains one projector per region set (``model/align_model.json`` names the files). Loading runs
only this file and reads each projector with ``torch.load(weights_only=True)``; nothing is unpickled.

Input: one row per stimulus response: ``session`` (the recording the projector was fitted on), ``features`` (the
session's response vector, as the alignment data builds it: region-specific windows, repeats averaged) and,
optionally, ``region_set`` (default: the first one in the card).
Output: float32 [rows, embedding_dim], L2-normalised, comparable by cosine with the image embeddings it was
trained against (retrieval ranks candidates by that similarity).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
from mlflow.models import set_model

CARD = "align_model.json"


class AlignProjectorPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from neurobridge.align.encoder_train import load_aligned_model

        kind = (context.model_config or {}).get("kind", "align")
        if kind != "align":
            raise ValueError(f"this pyfunc loads align models, not {kind!r}")
        root = Path(context.artifacts["model"])
        self.card = json.loads((root / CARD).read_text())
        self.projectors = {name: load_aligned_model(str(root / f)) for name, f in self.card["files"].items()}
        self.default = next(iter(self.card["files"]))
        self.dim = int(self.card["embedding_dim"])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        n = len(model_input)
        out = np.zeros((n, self.dim), dtype=np.float32)
        sets = model_input["region_set"].fillna(self.default).tolist() if "region_set" in model_input else None
        sets = sets or [self.default] * n
        sessions = [str(s) for s in model_input["session"].tolist()]
        feats = model_input["features"].tolist()
        groups: dict[tuple[str, str], list[int]] = {}
        for i, key in enumerate(zip(sets, sessions, strict=True)):
            groups.setdefault(key, []).append(i)
        for (rs, session), rows in groups.items():
            if rs not in self.projectors:
                raise ValueError(f"no region set {rs!r}; this model has {sorted(self.projectors)}")
            x = torch.as_tensor(np.stack([np.asarray(feats[i], dtype=np.float32) for i in rows]))
            with torch.no_grad():
                z = torch.nn.functional.normalize(self.projectors[rs](x, session), dim=-1)
            out[rows] = z.numpy()
        return out


set_model(AlignProjectorPyfunc())
