"""Collector: one orbit, its history and a local model copy that retrains on rejected steps (Part 1)."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from aits import Orbit, Samples, Stepper, build_model, collect, make_optimizer, predict_dt
from aits.metrics import declare

from .common import load_config, load_scales, own_torch_rng


declare({"system/collect_time": "max"})  # the slowest collector sets the epoch's pace


class Collector:
    """Owns orbit ``index`` (RNG seeded with ``run.seed + index``) and runs Part 1 on it.

    ``config`` is ``Config.to_dict()`` (or a Config), ``scales`` the run's NormScales dict.
    """

    def __init__(self, config: dict, scales: dict, index: int):
        torch.set_num_threads(1)  # one core per collector; many run side by side
        self.cfg = load_config(config)
        self.index = index
        seed = self.cfg.run.seed + index
        self.orbit = Orbit(self.cfg, orbit_id=index, rng=np.random.default_rng(seed))
        self.stepper = Stepper(self.cfg, load_scales(scales))
        self.model = build_model(self.cfg)
        self.torch_rng = torch.Generator().manual_seed(seed).get_state()

    def collect(self, weights: dict) -> tuple[Samples, dict]:
        """Load the broadcast weights (fresh local optimiser), run Part 1 on the orbit.

        Returns (samples, metrics); metrics are ``collect/*`` plus ``system/collect_time`` (s).
        """
        start = time.perf_counter()
        self.load_weights(weights)
        optimizer = make_optimizer(self.model, self.cfg)
        with own_torch_rng(self):
            samples, metrics = collect(self.model, optimizer, self.orbit, self.stepper, self.cfg)
        metrics["system/collect_time"] = time.perf_counter() - start
        return samples, metrics

    def load_weights(self, weights: dict) -> None:
        self.model.load_state_dict(weights)

    def predict_dt(self, *arrays) -> np.ndarray:
        """dt (B,) the local model picks for B states with histories (arrays as in Samples)."""
        return predict_dt(self.model, self.stepper, *arrays)

    def pid(self) -> int:
        """Process id of the actor (memory reports, fault tests)."""
        return os.getpid()

    def state(self) -> dict:
        """Everything an exact resume needs: the orbit (state, history, RNG) and the torch RNG."""
        return {"index": self.index, "orbit": self.orbit.state_dict(), "torch_rng": self.torch_rng.clone()}

    def restore(self, state: dict) -> None:
        if state["index"] != self.index:
            raise ValueError(f"collector {self.index} given the state of collector {state['index']}")
        self.orbit.load_state_dict(state["orbit"])
        self.torch_rng = state["torch_rng"].clone()
