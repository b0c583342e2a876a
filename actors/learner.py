"""Learner: the model and optimiser of the run; the generalize phase over the samples the collectors gathered."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from aits import (Samples, StateBatch, Stepper, apply_passage, build_model, evaluate, generalize_on_trajectory,
                  learning_rate, make_optimizer, predict_dt)

from .common import load_config, load_scales, own_torch_rng


class Learner:
    """Owns the model, the Adam optimiser, the minibatch RNG and the kept samples.

    ``train.generalize_capacity`` > 0 keeps the newest that many samples across epochs;
    0 trains on this epoch's samples only (the seed).
    """

    def __init__(self, config: dict, scales: dict):
        self.cfg = load_config(config)
        gpu = self.cfg.ray.learner_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if gpu else "cpu")
        # Fixed thread count: float sums must not depend on where the learner runs.
        torch.set_num_threads(max(1, int(self.cfg.ray.learner_cpus)))
        seed = self.cfg.run.seed
        self.stepper = Stepper(self.cfg, load_scales(scales), device=self.device)
        self.model = build_model(self.cfg, self.device)
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.rng = np.random.default_rng([seed, 1])  # a stream apart from the collectors' seed + i
        self.torch_rng = torch.Generator().manual_seed(seed).get_state()
        self.kept: Samples | None = None  # samples kept across epochs (train.generalize_capacity)
        self.epoch = 0  # epochs stepped: the lr schedule's clock (train.lr_final)

    def step(self, with_state: bool, *parts: Samples) -> dict:
        """One epoch in one call: generalize on the collectors' samples (plus the kept samples), then, with
        ``train.passage``, one optimiser step on the mean of the passage gradients the samples carry.

        Returns ``{"metrics": part2/* (passage/applied) and system/learner_time (s), "weights": weights()}``
        plus ``"state": state()`` when ``with_state`` (checkpoint epochs); the state shares the weights,
        they are copied once.
        """
        start = time.perf_counter()
        self.epoch += 1
        lr = learning_rate(self.cfg, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        samples = Samples.concat(list(parts) if self.kept is None else [self.kept, *parts])
        cap = self.cfg.train.generalize_capacity
        self.kept = samples.take(slice(max(0, len(samples) - cap), None)) if cap else None
        with own_torch_rng(self):
            metrics = generalize_on_trajectory(self.model, self.optimizer, samples, self.stepper, self.cfg,
                                               self.rng)
            if self.cfg.train.passage:  # one step on the mean of the collectors' passage gradients
                grads = [p.passage for p in parts]  # apply_passage skips collectors that sent none
                metrics["passage/applied"] = float(apply_passage(self.model, self.optimizer, grads))
        metrics["system/lr"] = lr
        metrics["system/learner_time"] = time.perf_counter() - start
        out = {"metrics": metrics, "weights": self.weights()}
        if with_state:
            out["state"] = self.state(out["weights"])
        return out

    def load_weights(self, weights: dict) -> None:
        """Start from these model weights (``model.init_weights`` of a fresh run); the optimiser is untouched."""
        self.model.load_state_dict(weights)

    def weights(self) -> dict:
        """The model's state_dict on the CPU, for broadcast and checkpoints."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def evaluate(self, samples: Samples) -> np.ndarray:
        """rel_dE (n,) of each sample under the current model (one batched attempt, no training)."""
        return evaluate(self.model, self.stepper, samples).double().cpu().numpy()

    def predict_dt(self, states: StateBatch) -> np.ndarray:
        """dt (B,) the model picks for B states with their histories."""
        return predict_dt(self.model, self.stepper, states)

    def pid(self) -> int:
        """Process id of the actor (memory reports, fault tests)."""
        return os.getpid()

    def state(self, weights: dict | None = None) -> dict:
        """Model, optimiser, RNGs and kept samples (CPU tensors / numpy); ``weights``: the model's
        ``weights()`` when the caller already has them."""
        opt = _to_cpu(self.optimizer.state_dict())
        return {"model": self.weights() if weights is None else weights, "optimizer": opt,
                "rng": self.rng.bit_generator.state, "torch_rng": self.torch_rng.clone(),
                "kept": None if self.kept is None else self.kept.to_dict(), "epoch": self.epoch}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # moves tensors to the params' device
        self.rng.bit_generator.state = state["rng"]
        self.torch_rng = state["torch_rng"].clone()
        kept = state.get("kept", state.get("replay"))  # "replay": checkpoints before the rename
        self.kept = None if kept is None else Samples(**kept)
        self.epoch = state.get("epoch", 0)  # checkpoints before train.lr_final: only its schedule reads it


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
