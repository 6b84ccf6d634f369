"""Small simulations for tests: the simulator's sizes cut to seconds, with the kinds a test needs spelled out."""

from __future__ import annotations

from neurobridge.sim import SimConfig


def small_sim(nwb: tuple[int, int] = (0, 1), alf: tuple[int, int] = (0, 1), **over) -> SimConfig:
    """``nwb``/``alf``: (subjects, sessions per subject); 20-30 units, 30 s sessions, no visual sessions and no
    image files unless ``over`` says otherwise."""
    base = {
        "nwb_subjects": nwb[0],
        "nwb_sessions_per_subject": nwb[1],
        "alf_subjects": alf[0],
        "alf_sessions_per_subject": alf[1],
        "visual_sessions": 0,
        "units_min": 20,
        "units_max": 30,
        "minutes": 0.5,
        "write_images": False,
    }
    return SimConfig(**{**base, **over})
