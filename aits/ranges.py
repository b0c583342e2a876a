"""The range check of a bounded factor model (docs/DESIGN.md §2.3c).

A bounded factor model steps with g = eta0 * M^tanh(z(f)): within a factor M of the classical rule
eta0 * tau whatever its features f. Inside the states it was trained on, the learned shape is what
training made it; outside them it is an extrapolation of the network. The range check holds the box
of feature values a run's rule visits on its own training distribution (``driver/validate.py``
measures it and stores it in the checkpoint as ``feature_ranges``) and pulls the modulation back to
the classical rule outside that box:

    g = eta0 * M^(w(f) * tanh(z)),   w(f) = exp(-sum_k (d_k / delta_k)^2),
    d_k = max(lo_k - f_k, 0) + max(f_k - hi_k, 0),   delta_k = margin * (hi_k - lo_k) + DELTA_FLOOR

w is exactly 1 inside the box (the rule there is the rule as trained), falls smoothly (w and its
gradient are continuous) to e^-1 at one margin outside it along one feature, and the factor tends to
eta0 beyond. The features are even under v -> -v, so w is too: the recursion stays time-reversible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from operator import le

import numpy as np

RANGE_MARGIN = 0.25  # delta_k as a fraction of the feature's range width
DELTA_FLOOR = 1e-3  # delta_k of a feature that had one value in training (e.g. log(r/L) = 0 of binaries)


@dataclass
class FeatureRanges:
    """The training box of a rule's features: lo, hi (n_features,), the margin and the number of states
    it was measured on (``samples``)."""

    lo: np.ndarray
    hi: np.ndarray
    margin: float = RANGE_MARGIN
    samples: int = 0

    def __post_init__(self):
        self.lo = np.asarray(self.lo, dtype=np.float64)
        self.hi = np.asarray(self.hi, dtype=np.float64)
        if self.lo.shape != self.hi.shape or self.lo.ndim != 1:
            raise ValueError(f"feature_ranges: lo and hi must be vectors of one length, got {self.lo.shape}, "
                             f"{self.hi.shape}")
        if not (np.isfinite(self.lo).all() and np.isfinite(self.hi).all() and (self.hi >= self.lo).all()):
            raise ValueError("feature_ranges: lo and hi must be finite with hi >= lo")
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"feature_ranges: margin must be > 0, got {self.margin}")
        self.delta = self.margin * (self.hi - self.lo) + DELTA_FLOOR
        self._lo, self._hi = self.lo.tolist(), self.hi.tolist()  # for inside(): Python floats beat numpy calls

    def inside(self, f: np.ndarray) -> bool:
        """Every feature of ``f`` inside the box (then :meth:`excess` is all 0 and w exactly 1; False for NaN):
        the common case of a rule on its own kind of system, checked in a few microseconds at batch 1."""
        fl = f.tolist()
        return all(map(le, self._lo, fl)) and all(map(le, fl, self._hi))

    def excess(self, f: np.ndarray) -> np.ndarray:
        """d_k / delta_k of one feature vector (n_features,): how far outside the box each feature lies, in
        margins (0 inside)."""
        return (np.maximum(self.lo - f, 0.0) + np.maximum(f - self.hi, 0.0)) / self.delta

    @staticmethod
    def weight_of(d: np.ndarray) -> float:
        """w = exp(-|d|^2) of an excess ``d`` (:meth:`excess`)."""
        return math.exp(-float(d @ d))

    def weight(self, f: np.ndarray) -> float:
        """w(f) in (0, 1] of one feature vector: 1 inside the box."""
        return self.weight_of(self.excess(f))

    def weight_torch(self, f):
        """w of feature rows f (B, n_features), torch, differentiable."""
        import torch

        lo = torch.as_tensor(self.lo, dtype=f.dtype, device=f.device)
        hi = torch.as_tensor(self.hi, dtype=f.dtype, device=f.device)
        delta = torch.as_tensor(self.delta, dtype=f.dtype, device=f.device)
        d = ((lo - f).clamp_min(0.0) + (f - hi).clamp_min(0.0)) / delta
        return torch.exp(-(d * d).sum(-1))

    def outside(self, f: np.ndarray) -> np.ndarray:
        """Which features of rows f (S, n_features) lie outside the box (S, n_features) bool."""
        f = np.atleast_2d(f)
        return (f < self.lo) | (f > self.hi)

    def to_dict(self) -> dict:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist(), "margin": float(self.margin),
                "samples": int(self.samples)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "checkpoint") -> "FeatureRanges":
        try:
            return cls(d["lo"], d["hi"], float(d.get("margin", RANGE_MARGIN)), int(d.get("samples", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: feature_ranges is not a training box ({exc})") from None

    @classmethod
    def of_features(cls, feats: np.ndarray, margin: float = RANGE_MARGIN) -> "FeatureRanges":
        """The box of finite feature rows (S, n_features)."""
        feats = np.asarray(feats, dtype=np.float64)
        feats = feats[np.isfinite(feats).all(1)]
        if len(feats) == 0:
            raise ValueError("feature_ranges: no finite feature rows to measure the box on")
        return cls(feats.min(0), feats.max(0), margin, len(feats))


HELD_WEIGHT = 0.5  # a step whose w is below this is counted as held at the classical rule


class RangeTally:
    """What the range check did over a run: how many of the rule's calls found their features outside the
    training box (w < 1), how many it held mostly at the classical rule (w < ``HELD_WEIGHT``, the learned
    modulation less than half its own), the mean w, and per feature how often it was the one furthest
    outside. Counted by :class:`aits.model.NumpyMLP` on every call; a run on systems the rule was never
    trained on shows here as a large held share, instead of passing silently as the classical rule.
    :meth:`aits.Rule.range_report` and the scoreboard's learned runs (``range_check``) report it."""

    def __init__(self, n_features: int):
        self.by_feature = np.zeros(n_features, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self.calls = self.outside = self.held = 0
        self.weight_sum = 0.0
        self.by_feature[:] = 0

    def add_inside(self) -> None:
        """Count one call whose features were all inside the box (w = 1): :meth:`add` of a zero excess."""
        self.calls += 1
        self.weight_sum += 1.0

    def add(self, d: np.ndarray, w: float) -> None:
        """Count one call with excess ``d`` (:meth:`FeatureRanges.excess`) and its weight ``w``."""
        self.calls += 1
        self.weight_sum += w
        if d.any():
            self.outside += 1
            self.by_feature[int(d.argmax())] += 1
            if w < HELD_WEIGHT:
                self.held += 1

    def report(self, names=None) -> dict:
        """{calls, outside_share, held_share, mean_weight, features: {name: share of the outside calls where it
        was furthest outside}} (shares of ``calls``; the features most often first, those never first left out)."""
        n = max(self.calls, 1)
        names = list(names) if names is not None else [f"f{k}" for k in range(len(self.by_feature))]
        order = np.argsort(-self.by_feature, kind="stable")
        out = max(self.outside, 1)
        return {"calls": int(self.calls), "outside_share": self.outside / n, "held_share": self.held / n,
                "mean_weight": self.weight_sum / n if self.calls else 1.0,
                "features": {names[k]: float(self.by_feature[k] / out) for k in order if self.by_feature[k]}}


def range_tally(method) -> RangeTally | None:
    """The :class:`RangeTally` of a learned step method (its step function's network), or None for a method
    without a range check (a classical rule, a seed-mode model, a checkpoint without ``feature_ranges``)."""
    return getattr(getattr(getattr(method, "h", None), "mlp", None), "tally", None)


def range_report(tally: RangeTally) -> dict:
    """:meth:`RangeTally.report` with the scale-free features' names."""
    from .features import SCALE_FREE_NAMES

    return tally.report(SCALE_FREE_NAMES[:len(tally.by_feature)])


def measure_ranges(ckpt: dict, states, steps: int, margin: float = RANGE_MARGIN) -> FeatureRanges:
    """The box of the features a checkpoint's rule (as trained: no range check) visits over ``steps``
    steps from each system of ``states`` = (m, x, v[, eps]) (B,N[,D]; eps (B,) the systems' own softenings):
    ``driver/validate.py`` runs it on its validation systems, fresh draws of the run's own training
    distribution."""
    from . import integrators as I
    from .config import Config
    from .features import scale_free_numpy
    from .policy import FactorStep, learned_methods

    cfg = Config.from_dict(ckpt["config"])
    if cfg.model.output != "factor" or cfg.model.max_modulation is None:
        raise ValueError("feature_ranges: a range check needs a bounded factor model (model.max_modulation)")
    methods = learned_methods(ckpt, cfg, range_check=False)
    h = next(mt.h for mt in methods.values() if hasattr(mt, "h"))
    rows: list[np.ndarray] = []

    def recording(eps):
        rule = FactorStep(h.mlp, eps, h.timescale, h.radial)

        def recorded(x, v, a, m):
            rows.append(scale_free_numpy(x, v, a, m, eps, h.timescale, radial=h.radial)[0])
            return rule(x, v, a, m)
        return recorded

    m, x, v = states[:3]
    own = states[3] if len(states) > 3 else None  # each system's softening: system.softening, or its family's
    for b in range(len(m)):
        eps = h.eps if own is None else float(own[b])
        method = (I.RecursivePolicy(recording(eps), "learned", cfg.model.step_clip) if cfg.model.recursive
                  else I.SymmetricPolicy(recording(eps), 1, "learned"))
        I.integrate(method, m[b], x[b], v[b], 1e30, eps=eps, max_steps=steps, record=False)
    return FeatureRanges.of_features(np.array(rows), margin)
