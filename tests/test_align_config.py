"""align/config: alignment config errors name the key and the nearest valid one; the CLI and jobs train on Ray
Train by default, and a scratch encoder starts from a random init."""

from __future__ import annotations

import pytest
from neurobridge.align.config import AlignConfig, EncoderSpec
from neurobridge.config import ConfigError, load_yaml


def test_config_errors_name_the_key_and_the_nearest_valid_one(tmp_path):
    path = tmp_path / "align.yaml"
    path.write_text("data: {datasets: [vis], embeddings: {simulation: sim}}\n")
    with pytest.raises(ConfigError, match="backnd.*backend"):
        load_yaml(AlignConfig, path, {"scaling.backnd": "local"})
    with pytest.raises(ConfigError, match="train"):
        load_yaml(AlignConfig, path, {"data.encoder": {"checkpoint": "m.pt", "train": "partly"}})
    assert load_yaml(AlignConfig, path).scaling.backend == "ray"  # the CLI and jobs train on Ray Train
    assert EncoderSpec(checkpoint="m.pt", train="scratch").init == "random"
