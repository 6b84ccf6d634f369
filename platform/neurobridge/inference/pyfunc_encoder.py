"""The registered model's code (MLflow "models from code"): a pyfunc that embeds a batch of store windows.

MLflow stores this file's source with the model and runs it at load time; nothing is cloudpickled (no
``python_model.pkl``), and the weights are the ``models.checkpoint`` file among the model's artifacts, read with
``torch.load(weights_only=True)``. Loading a registered model therefore executes only this project's code, never
code carried inside a pickle.

Input: one row per window with the token store's columns (``counts`` flat row-major [n_units × n_bins]).
Output: float32 [rows, d_model], the encoder's latents averaged over each window's tokens.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
from mlflow.models import set_model

ROW_FIELDS = ("session", "subject", "task", "dataset", "n_units", "n_bins", "counts", "mua", "unit_regions", "unit_ids")


def frame_rows(frame) -> list[dict]:
    """DataFrame rows → the row dicts ``models.patching.collate`` takes (missing optional columns → None)."""
    cols = {c: frame[c].tolist() for c in ROW_FIELDS if c in frame.columns}
    out = []
    for i in range(len(frame)):
        row = {c: cols[c][i] if c in cols else None for c in ROW_FIELDS}
        for c in ("counts", "mua", "unit_regions", "unit_ids"):  # pandas: NaN/None for a missing list cell
            if row[c] is not None and not hasattr(row[c], "__len__"):
                row[c] = None
        for c in ("unit_regions", "unit_ids"):
            if row[c] is not None:
                row[c] = [str(x) for x in row[c]]
        out.append(row)
    return out


class NeuralEncoderPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from neurobridge.models.checkpoint import load_checkpoint
        from neurobridge.models.window_encoder import WindowEncoder

        kind = (context.model_config or {}).get("kind", "pretrain")
        if kind != "pretrain":
            raise ValueError(f"this neurobridge version cannot load a registered {kind!r} model")
        model, vocabs, self.extra = load_checkpoint(Path(context.artifacts["model"]) / "model.pt")
        self.encoder = WindowEncoder(model, vocabs)

    def predict(self, context, model_input, params=None):
        return self.encoder.embed_rows(frame_rows(model_input))


set_model(NeuralEncoderPyfunc())
