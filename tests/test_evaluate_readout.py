"""evaluate/readout: held-out units read out from the model's latents by a Poisson GLM; the latents never see the
held-out spikes, and a GLM of the latents is recovered."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.train import small_cfg
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.store.read import sources
from neurobridge.store.splits import HeldoutSplit
from neurobridge.train.pretrain import vocabularies


@pytest.fixture(scope="module")
def store(pretrain_store):
    """This file's store: simulated reaching sessions pinned as mixture 'tiny' (conftest)."""
    return pretrain_store


def test_latent_readout_never_sees_heldout_spikes_and_recovers_a_glm_of_the_latents(store):
    from neurobridge.evaluate import baselines, metrics
    from neurobridge.evaluate.readout import ReadoutFit, heldout_latents, latent_readout
    from neurobridge.store.rows import session_rows, stack_counts
    from neurobridge.store.splits import with_heldout

    cfg = small_cfg()
    vocabs = vocabularies(sources(store, [], "tiny"), [])
    torch.manual_seed(0)
    model = MaskedNeuralModel(cfg.model, vocabs)
    sess = session_rows(store, sources(store, ["t_nwb"])[0], ("train",), {"monkey00_s00"})[0]
    rows = with_heldout(sess.split("train"), HeldoutSplit(None, 0.25))
    n = len(rows) * 3 // 4
    held = np.asarray(rows[0]["heldout"], dtype=bool)
    assert 0 < held.sum() < len(held)
    lat = heldout_latents(model, vocabs, rows)

    def altered(which: np.ndarray) -> list[dict]:
        out = []
        for r in rows:
            c = np.asarray(r["counts"], dtype=np.float32).reshape(int(r["n_units"]), int(r["n_bins"])).copy()
            c[which] = c[which] * 3 + 1
            out.append({**r, "counts": c.ravel()})
        return out

    assert np.array_equal(heldout_latents(model, vocabs, altered(held)), lat)  # held-out spikes never reach them
    assert not np.allclose(heldout_latents(model, vocabs, altered(~held)), lat)  # held-in spikes do
    # held-out spikes drawn from a Poisson GLM of the latents: the read-out recovers near-oracle rates on new windows
    g = np.random.default_rng(0)
    w = g.normal(0, 0.6 / np.sqrt(lat.shape[-1]), (lat.shape[-1], 3))
    smooth = baselines.smooth_spikes(lat, 2.5)  # what the read-out reads: latents under the baseline's kernel
    rates = np.exp(((smooth - smooth.mean((0, 1))) / smooth.std((0, 1))) @ w + 0.5)
    spikes = g.poisson(rates).astype(np.float64)
    pred = latent_readout(model, vocabs, rows[:n], spikes[:n], rows[n:], ReadoutFit([1e-4, 1e-2, 1.0], sigma_bins=2.5))
    oracle, got = metrics.bits_per_spike(rates[n:], spikes[n:]), metrics.bits_per_spike(pred, spikes[n:])
    assert oracle > 0.05 and got > 0.9 * oracle
    assert pred.shape == (len(rows) - n, stack_counts(rows).shape[1], 3)
