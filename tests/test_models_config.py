"""models/config: the typed model config forbids unknown keys and checks heads and masking modes."""

from __future__ import annotations

import pytest
from neurobridge.models.config import ModelConfig
from pydantic import ValidationError


def test_config_forbids_unknown_keys_and_checks_heads():
    with pytest.raises(ValidationError, match="d_modle"):
        ModelConfig(d_modle=32)
    with pytest.raises(ValidationError, match="not divisible by heads"):
        ModelConfig(d_model=30, heads=4)
    with pytest.raises(ValidationError, match="modes"):
        ModelConfig(modes=["random", "sideways"])
