"""align/retrieval: the nearest-training-image reconstruction baseline, scored against its chance level and ceiling."""

from __future__ import annotations

import numpy as np
import pytest
from neurobridge.align.retrieval import nearest_train_reconstruction

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reconstruction_by_nearest_training_image_scores_against_chance_and_ceiling():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 16))
    true = train[:20] + 0.1 * rng.standard_normal((20, 16))  # test images close to training images
    good, nearest = nearest_train_reconstruction(true, true, train)
    assert (nearest == np.arange(20)).all() and good["recon_two_way"] == 1.0
    assert good["recon_cosine"] == pytest.approx(good["recon_cosine_ceiling"])
    bad, _ = nearest_train_reconstruction(rng.standard_normal((20, 16)), true, train)
    assert bad["recon_cosine"] < good["recon_cosine"] and abs(bad["recon_cosine_chance"]) < 0.1
