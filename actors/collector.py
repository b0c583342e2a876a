"""Collector: B systems (``ray.systems_per_collector``), their histories and a local model copy that
retrains on rejected steps (the collect phase)."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from aits import (Samples, StateBatch, Stepper, build_model, collect_trajectory, make_optimizer, passage_gradient,
                  predict_dt)
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
        self.passage_rng = np.random.default_rng([self.cfg.run.seed, 2, index])  # passage start states

    def collect(self, weights: dict) -> tuple[Samples, dict]:
        """Load the broadcast weights (fresh local optimiser), run the collect phase on the systems;
        with ``train.passage`` also the passage objective's gradient at the broadcast weights over
        rollouts from this epoch's samples (it rides in ``samples.passage`` to the learner).

        Returns (samples, metrics): one Samples for all B systems; metrics are ``part1/*``
        (``passage/*``) plus ``system/collect_time`` (s).
        """
        start = time.perf_counter()
        self.load_weights(weights)
        optimizer = make_optimizer(self.model, self.cfg)
        with own_torch_rng(self):
            samples, metrics = collect_trajectory(self.model, optimizer, self.systems, self.stepper, self.cfg)
            if self.cfg.train.passage:  # at the broadcast weights, not the locally retrained ones
                self.load_weights(weights)
                samples.passage, pm = passage_gradient(self.model, samples, self.stepper, self.cfg,
                                                       self.passage_rng)
                metrics.update(pm)
        metrics["system/collect_time"] = time.perf_counter() - start
        return samples, metrics

    def load_weights(self, weights: dict) -> None:
        self.model.load_state_dict(weights)

    def predict_dt(self, states: StateBatch) -> np.ndarray:
        """dt (B,) the local model picks for B states with their histories."""
        return predict_dt(self.model, self.stepper, states)

    def pid(self) -> int:
        """Process id of the actor (memory reports, fault tests)."""
        return os.getpid()

    def state(self) -> dict:
        """Everything an exact resume needs: every system (state, history, clock, RNG) and the torch RNG."""
        return {"index": self.index, "systems": self.systems.state_dict(), "torch_rng": self.torch_rng.clone(),
                "passage_rng": self.passage_rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        if state["index"] != self.index:
            raise ValueError(f"collector {self.index} given the state of collector {state['index']}")
        # "orbit": a checkpoint from before ray.systems_per_collector (one system per collector)
        self.systems.load_state_dict(state["systems"] if "systems" in state else state["orbit"])
        self.torch_rng = state["torch_rng"].clone()
        if "passage_rng" in state:  # checkpoints before train.passage lack it
            self.passage_rng.bit_generator.state = state["passage_rng"]
