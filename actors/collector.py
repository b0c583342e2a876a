"""Collector: B systems (``ray.systems_per_collector``), their histories and a local model copy that
retrains on rejected steps (the collect phase)."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from aits import Samples, Stepper, build_model, collect, make_optimizer, predict_dt
from aits.metrics import declare
from aits.systems import Systems

from .common import load_config, load_scales, own_torch_rng

declare({"system/collect_time": "max"})  # the slowest collector sets the epoch's pace


class Collector:
    """Owns systems ``index·B .. index·B+B-1`` (each seeded ``run.seed + id``) and runs the collect
    phase on them; its torch RNG (dropout) is seeded ``run.seed + index``.

    ``config`` is ``Config.to_dict()`` (or a Config), ``scales`` the run's NormScales dict.
    """

    def __init__(self, config: dict, scales: dict, index: int):
        torch.set_num_threads(1)  # one core per collector; many run side by side
        self.cfg = load_config(config)
        self.index = index
        self.systems = Systems.for_collector(self.cfg, index, self.cfg.ray.systems_per_collector)
        self.stepper = Stepper(self.cfg, load_scales(scales))
        self.model = build_model(self.cfg)
        self.torch_rng = torch.Generator().manual_seed(self.cfg.run.seed + index).get_state()

    def collect(self, weights: dict) -> tuple[Samples, dict]:
        """Load the broadcast weights (fresh local optimiser), run the collect phase on the systems.

        Returns (samples, metrics): one Samples for all B systems; metrics are ``collect/*`` plus
        ``system/collect_time`` (s).
        """
        start = time.perf_counter()
        self.load_weights(weights)
        optimizer = make_optimizer(self.model, self.cfg)
        with own_torch_rng(self):
            samples, metrics = collect(self.model, optimizer, self.systems, self.stepper, self.cfg)
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
        """Everything an exact resume needs: every system (state, history, clock, RNG) and the torch RNG."""
        return {"index": self.index, "systems": self.systems.state_dict(), "torch_rng": self.torch_rng.clone()}

    def restore(self, state: dict) -> None:
        if state["index"] != self.index:
            raise ValueError(f"collector {self.index} given the state of collector {state['index']}")
        # "orbit": a checkpoint from before ray.systems_per_collector (one system per collector)
        self.systems.load_state_dict(state["systems"] if "systems" in state else state["orbit"])
        self.torch_rng = state["torch_rng"].clone()
