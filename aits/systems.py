"""The systems a collector integrates: initial conditions, state, history, clock and RNG."""
from __future__ import annotations

import math

import numpy as np

from .config import Config
from .features import HistoryBuffer
from .physics import kepler_ic, load_ic_file, random_ic


class Orbit:
    """One system integrated by a collector: its state, history, clock and RNG."""

    def __init__(self, cfg: Config, orbit_id: int, rng: np.random.Generator):
        s = cfg.system
        self.cfg, self.orbit_id, self.rng = cfg, orbit_id, rng
        self.history = HistoryBuffer(cfg.features.history_len, s.num_particles, s.dim)
        self.restarts = -1
        self.restart()

    def restart(self) -> None:
        """Fresh initial conditions and a fresh history."""
        s = self.cfg.system
        self.period = math.inf
        if s.ic == "kepler":
            e = self.rng.uniform(s.e_min, s.e_max)
            a = self.rng.uniform(s.a_min, s.a_max)
            self.m, self.x, self.v, self.period = kepler_ic(e, a, s.mass, s.dim)
            self.params = {"e": e, "a": a}
        elif s.ic == "random":
            self.m, self.x, self.v = random_ic(s.num_particles, s.dim, s.mass, s.pos_scale, s.vel_scale, self.rng)
            self.params = {}
        else:
            self.m, self.x, self.v = load_ic_file(s.ic_path)
            self.params = {}
        self.t, self.dt, self.steps = 0.0, 0.0, 0
        self.history.clear()
        self.restarts += 1

    def batch(self):
        """This orbit's current state with its history, as a batch of one."""
        hx, hv, hdt = self.history.arrays()
        return self.m[None], self.x[None], self.v[None], np.array([self.dt]), hx[None], hv[None], hdt[None]

    def sample_record(self, batch, accepted_dt: float, rel_dE: float, retrains: int) -> dict:
        """One Samples row: the pre-step ``batch`` (from :meth:`batch`) with its history and metadata."""
        m, x, v, dt0, hx, hv, hdt = batch
        return {"m": m[0], "x": x[0], "v": v[0], "dt": dt0[0], "hist_x": hx[0], "hist_v": hv[0], "hist_dt": hdt[0],
                "orbit_id": self.orbit_id, "step": self.steps, "accepted_dt": accepted_dt, "rel_dE": rel_dE,
                "retrains": retrains}

    def advance(self, x1: np.ndarray, v1: np.ndarray, dt: float) -> bool:
        """Accept a step; returns True when the orbit was restarted afterwards."""
        self.history.push(self.x, self.v, self.dt)
        self.x, self.v, self.dt = x1, v1, dt
        self.t += dt * self.cfg.system.n_steps  # one step is n_steps leapfrog substeps of dt
        self.steps += 1
        if not (np.isfinite(x1).all() and np.isfinite(v1).all()) or \
                self.t >= self.cfg.system.periods_per_orbit * self.period:
            self.restart()
            return True
        return False

    def state_dict(self) -> dict:
        return {"orbit_id": self.orbit_id, "m": self.m.copy(), "x": self.x.copy(), "v": self.v.copy(),
                "t": self.t, "dt": self.dt, "steps": self.steps, "period": self.period,
                "restarts": self.restarts, "params": dict(self.params),
                "history": self.history.snapshot(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, st: dict) -> None:
        self.orbit_id = st["orbit_id"]
        self.m, self.x, self.v = (np.asarray(st[k], dtype=np.float64).copy() for k in ("m", "x", "v"))
        self.t, self.dt, self.steps, self.period = st["t"], st["dt"], st["steps"], st["period"]
        self.restarts, self.params = st["restarts"], dict(st["params"])
        self.history.restore(st["history"])
        self.rng.bit_generator.state = st["rng"]
