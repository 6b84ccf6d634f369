"""Ground-truth simulator: recordings in the real raw formats (NWB, ALF + ONE cache, Allen-style visual NWB, TVSD,
Neural Pile shards) from a known generative model, with the true rates, so every metric has an oracle."""

from neurobridge.sim.config import VISUAL_WINDOW, SimConfig
from neurobridge.sim.events import image_embeddings, render_image
from neurobridge.sim.simulate import simulate, simulate_session_file
from neurobridge.sim.writers import build_one_cache

__all__ = [
    "VISUAL_WINDOW",
    "SimConfig",
    "build_one_cache",
    "image_embeddings",
    "render_image",
    "simulate",
    "simulate_session_file",
]
