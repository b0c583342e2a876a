"""A checkpoint's learned step rule as an :mod:`aits.integrators` method, for evaluation.

``learned_methods(ckpt)`` rebuilds the model from a training checkpoint and returns the step
rules it defines, keyed by scoreboard method name (``learned`` first: the rule as trained).
"""
from __future__ import annotations

import numpy as np
import torch

from . import integrators as I
from .config import Config
from .features import HistoryBuffer, NormScales, build_features
from .model import build_model
from .physics import resolve_dtype


class SeedPolicy:
    """The seed's mode: dt straight from the model, features built by ``aits.features`` from the
    current state and its history buffer (carried as in training: after each step the pre-step
    state is pushed with the dt that led to it).

    The features compute the accelerations of every state of the sequence (K + 1 of them): those
    are force evaluations, counted in ``evals_per_call``.
    """

    def __init__(self, model: torch.nn.Module, cfg: Config, scales: NormScales):
        self.model = model.eval()
        self.cfg, self.scales = cfg, scales
        self.K = cfg.features.history_len
        self.eps = float(cfg.system.softening)
        self.dtype = resolve_dtype(cfg.run.dtype)
        self.model_dtype = resolve_dtype(cfg.model.dtype or cfg.run.dtype)
        self.evals_per_call = self.K + 1
        self.history: HistoryBuffer | None = None

    def start(self, state: I.State) -> None:
        self.history = HistoryBuffer(self.K, *state.x.shape)

    def __call__(self, state: I.State) -> float:
        hx, hv, hdt = self.history.arrays()
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=self.dtype)[None]  # noqa: E731
        with torch.no_grad():
            feats = build_features(t(state.x), t(state.v), t(state.m), torch.full((1,), state.dt, dtype=self.dtype),
                                   t(hx), t(hv), t(hdt), self.eps, self.scales, self.cfg.features.feature_type)
            return float(self.model(feats.to(self.model_dtype))[0])

    def after_step(self, state: I.State, x_prev, v_prev, dt_prev) -> None:
        self.history.push(x_prev, v_prev, dt_prev)


def learned_methods(ckpt: dict, cfg: Config | None = None) -> dict[str, I.Method]:
    """Step rules of a training checkpoint: ``{"learned": ...}`` (plus further learned modes when the
    model defines them)."""
    cfg = cfg or Config.from_dict(ckpt["config"])
    scales = NormScales(**ckpt["norm_scales"]) if ckpt.get("norm_scales") else NormScales()
    model = build_model(cfg)
    model.load_state_dict(ckpt["model_state_dict"])
    model.eval()
    return {"learned": I.PolicyStep(SeedPolicy(model, cfg, scales), "learned")}
