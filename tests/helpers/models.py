"""Store-like rows and small masked models for the model tests: windows of a low-rank latent Poisson model, and
hypothesis batches of rows with several sessions, unit counts, region layouts and held-out flags."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from neurobridge.models.config import ModelConfig
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.patching import collate
from neurobridge.models.vocab import Vocabularies

SMALL = {"d_model": 16, "heads": 2, "decoder_d_model": 16, "decoder_heads": 2, "dropout": 0.0}


PROPS = settings(max_examples=60, deadline=None, derandomize=True)


REGIONS = ["CA1", "LP", "VISp", "unknown"]


def latent_rows(seed: int, n_sessions=2, trials=64, bins=20, dim=3, mua_session=False):
    """Windows from a low-rank latent Poisson model: per session random loadings, regions and held-out units."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        nu = int(rng.integers(24, 33))
        regs = sorted(rng.choice(["M1", "PMd"], nu).tolist())
        held = rng.random(nu) < 0.25
        c = rng.normal(0, 0.9, (dim, nu))
        base = np.log(rng.uniform(0.5, 2.0, nu))
        freq = rng.uniform(0.04, 0.1, dim)
        t = np.arange(bins)
        for w in range(trials):
            z = np.sin(2 * np.pi * freq[None] * t[:, None] + rng.uniform(0, 2 * np.pi, dim))
            rates = np.exp(base[:, None] + (z @ c).T)  # [units, bins], expected counts per bin
            row = {
                "n_units": nu,
                "n_bins": bins,
                "unit_regions": regs,
                "heldout": held.tolist(),
                "session": f"s{s}",
                "subject": f"m{s % 2}",
                "task": "reach",
                "dataset": "sim",
                "sample_id": f"s{s}/{w}",
                "rates": rates,
                "split": "test" if w >= trials * 3 // 4 else "train",
            }
            if mua_session and s == n_sessions - 1:
                row["mua"] = (rates + rng.normal(0, 0.1, rates.shape)).astype(np.float32).ravel()
            else:
                row["counts"] = rng.poisson(rates).astype(np.uint16).ravel()
            rows.append(row)
    return rows


def small_model(vocabs, k=8, **kw):
    """A small masked model (``SMALL`` sizes, ``k`` units per token), seeded."""
    torch.manual_seed(0)
    return MaskedNeuralModel(ModelConfig(neurons_per_token=k, **{**SMALL, **kw}), vocabs)


@st.composite
def store_rows(draw, max_units=12, max_bins=8):
    """A batch of store-like rows: several sessions, unit counts, region layouts, held-out flags."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(draw(st.integers(1, 4))):
        nu, nb = draw(st.integers(1, max_units)), draw(st.integers(1, max_bins))
        regs = sorted(rng.choice(REGIONS[: draw(st.integers(1, 4))], nu).tolist())  # region-ordered like the store
        rows.append(
            {
                "counts": rng.poisson(1.5, nu * nb).astype(np.uint16).tolist(),
                "n_units": nu,
                "n_bins": nb,
                "unit_regions": regs,
                "heldout": (rng.random(nu) < 0.3).tolist(),
                "session": f"s{i % 2}",
                "subject": "m1",
                "task": "reach",
            }
        )
    return rows, draw(st.integers(1, 4)), seed


def batch_of(rows, k):
    """The rows collated with vocabularies built from them, ``k`` units per token."""
    return collate(rows, Vocabularies.from_rows(rows), k)
