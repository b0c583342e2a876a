"""A checkpoint's learned step rule as an :mod:`aits.integrators` method, for evaluation.

``learned_methods(ckpt)`` rebuilds the model from a training checkpoint and returns the step
rules it defines, keyed by scoreboard method name (``learned`` first: the rule as trained).
"""
from __future__ import annotations

import numpy as np
import torch

from . import integrators as I
from .checkpoint import fit_weights, norm_scales_of
from .config import Config
from .features import HistoryBuffer, NormScales, build_features, scale_free_numpy
from .model import NumpyMLP, build_model
from .physics import resolve_dtype
from .ranges import FeatureRanges


class SeedPolicy:
    """The seed's mode: dt straight from the model, features built by ``aits.features`` from the
    current state and its history buffer (carried as in training: after each step the pre-step
    state is pushed with the dt that led to it).

    The features compute the accelerations of every state of the sequence (K + 1 of them): those
    are force evaluations, counted in ``evals_per_call``.
    """

    def __init__(self, model: torch.nn.Module, cfg: Config, scales: NormScales, eps: float | None = None):
        self.model = model.eval()
        self.cfg, self.scales = cfg, scales
        self.K = cfg.features.history_len
        self.eps = float(cfg.system.softening if eps is None else eps)
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


class FactorStep:
    """h(state) = g(scale-free features) * tau: the learned step function of a factor model."""

    takes_r2 = True  # aits.integrators.call_h passes the force evaluation's pair separations

    def __init__(self, mlp: NumpyMLP, eps: float, timescale: str = "nn", radial: str = "fraction"):
        self.mlp, self.eps, self.timescale, self.radial = mlp, eps, timescale, radial

    def __call__(self, x, v, a, m, r2=None) -> float:
        feats, tau = scale_free_numpy(x, v, a, m, self.eps, self.timescale, r2, self.radial)
        return self.mlp(feats) * tau


def checkpoint_ranges(ckpt: dict, path=None) -> FeatureRanges | None:
    """The training box a checkpoint carries (``feature_ranges``, written by ``driver/validate.py``), or None."""
    stored = ckpt.get("feature_ranges")
    return None if stored is None else FeatureRanges.from_dict(stored, f"checkpoint {path or ''}".strip())


def learned_methods(ckpt: dict, cfg: Config | None = None, eps: float | None = None,
                    range_check: bool = True) -> dict[str, I.Method]:
    """Step rules of a training checkpoint, ``learned`` first (the rule as trained), for systems with
    Plummer softening ``eps`` (default: the training config's; the features see the system's own).
    A bounded factor checkpoint that carries ``feature_ranges`` steps with the range check
    (:mod:`aits.ranges`) unless ``range_check`` is False.

    Seed-mode models (output 'dt'): ``learned`` only. Factor models with scale-free features:
    ``learned`` and the other of the explicit / time-symmetric forms (``learned_explicit`` or
    ``learned_symmetric``), both with the same step function h; recursive models: ``learned`` (the
    step recursion) and ``learned_symmetric`` (one fixed-point iteration).
    """
    cfg = cfg or Config.from_dict(ckpt["config"])
    scales = norm_scales_of(ckpt, cfg)
    model = fit_weights(build_model(cfg), ckpt)
    model.eval()
    mc = cfg.model
    if mc.output != "factor" or cfg.features.feature_type != "scale_free":
        if mc.output == "factor":
            raise ValueError("evaluation of factor models needs features.feature_type scale_free")
        return {"learned": I.PolicyStep(SeedPolicy(model, cfg, scales, eps), "learned")}
    ranges = checkpoint_ranges(ckpt) if range_check and mc.max_modulation is not None else None
    if ranges is not None and len(ranges.lo) != model.input_dim:
        raise ValueError(f"checkpoint: feature_ranges has {len(ranges.lo)} features, the model {model.input_dim}")
    h = FactorStep(NumpyMLP(model, mc.activation, ranges), float(cfg.system.softening if eps is None else eps),
                   cfg.features.timescale, cfg.features.radial_feature)
    if mc.recursive:
        return {"learned": I.RecursivePolicy(h, "learned", mc.step_clip),
                "learned_symmetric": I.SymmetricPolicy(h, 1, "learned_symmetric")}
    explicit = I.PolicyStep(lambda s: h(s.x, s.v, s.a, s.m), "learned")
    explicit.h = h  # as the other forms carry it (aits.ranges.range_tally reads its network's tally)
    k = mc.symmetric_iterations
    symmetric = I.SymmetricPolicy(h, k or 2, "learned")
    if k:
        explicit.name = "learned_explicit"
        return {"learned": symmetric, "learned_explicit": explicit}
    symmetric.name = "learned_symmetric"
    return {"learned": explicit, "learned_symmetric": symmetric}
