"""Feature normalisation scales of a run (``features.normalize_inputs``)."""
from __future__ import annotations

import numpy as np

from .config import Config
from .features import NormScales
from .physics import kepler_ic, load_ic_file, random_ic


def auto_norm_scales(cfg: Config) -> NormScales:
    """docs/DESIGN.md §2.4 normalisation from the run's reference initial conditions, once per run."""
    f, s = cfg.features, cfg.system
    if f.normalize_inputs == "none":
        return NormScales()
    if f.normalize_inputs == "manual":
        return NormScales(f.L0, f.V0, f.A0, f.T0)
    if s.ic == "kepler":  # the middle of the training range stands for the family of orbits
        m, x, v, _ = kepler_ic(0.5 * (s.e_min + s.e_max), 0.5 * (s.a_min + s.a_max), s.mass, s.dim)
    elif s.ic == "mixture":  # the first system drawn, without its massless padding
        from .families import first_system

        d = first_system(s, cfg.run.seed)[1]
        m, x, v = d.m, d.x, d.v
    elif s.ic == "random":
        m, x, v = random_ic(s.num_particles, s.dim, s.mass, s.pos_scale, s.vel_scale,
                            np.random.default_rng(cfg.run.seed))
    else:
        m, x, v = load_ic_file(s.ic_path)
    return NormScales.from_state(m, x, v, s.softening)

