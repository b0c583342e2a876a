"""The headroom of the learned step-function family on one system (issue 19, G4).

The learned rule is h = g(features) * tau with the bounded factor g = eta0 * M^tanh(z(features)), z an
MLP of the 8 scale-free features, as the h of the step recursion (clipped at c). The *oracle* of a
system is a member of that family fitted to that one system alone: z = w . phi, phi the system's
scale-free features standardised along its own classical run (features that stay constant there are
dropped: a constant only rescales every step, which equal-cost comparisons ignore), w found by
Nelder-Mead on

    J(w) = max_k |E_k - E_0| / |E_0|  x  (force evaluations)^2

over a fit run of the system (leapfrog's error falls as the square of the step count, so J does not
depend on the overall step size; the search starts at w = 0, the classical recursion, so the fit run's
J never ends above the classical one's). The oracle is then run over the system's whole duration at
the learned run's force evaluations (its eta0 tuned to them) and compared with the strongest classical
rule there. It is a linear member of the family, so oracle / strongest is what the family can gain at
least; learned / oracle what training leaves on the table.

No Ray, no torch: numpy step rules of :mod:`aits.integrators`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from . import integrators as I
from .features import scale_free_numpy
from .steprules import RECURSION_CLIP

FIT_EVALS = 20_000  # the fit run covers at most this many force evaluations (a leading part of the duration)
CONSTANT_STD = 1e-6  # a feature whose standard deviation along the classical run is below this is dropped


class LinearFactorStep:
    """h(x, v, a, m) = eta0 * M^tanh(w . phi) * tau, phi = (features[keep] - mean) / std."""

    def __init__(self, w, keep, mean, std, eta0: float, modulation: float, eps: float, timescale: str = "nn"):
        self.w, self.keep = np.asarray(w, dtype=float), np.asarray(keep, dtype=int)
        self.timescale = timescale
        self.mean, self.std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
        self.eta0, self.modulation, self.eps = float(eta0), float(modulation), eps
        self.log_m = math.log(modulation)

    def factor(self, feats: np.ndarray) -> float:
        z = float(self.w @ ((feats[self.keep] - self.mean) / self.std)) if len(self.keep) else 0.0
        return self.eta0 * math.exp(self.log_m * math.tanh(z))

    def __call__(self, x, v, a, m) -> float:
        feats, tau = scale_free_numpy(x, v, a, m, self.eps, self.timescale)
        return self.factor(feats) * tau


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, step: float, max_evals: int,
                rtol: float = 1e-3) -> tuple[np.ndarray, float, int]:
    """Minimise ``f`` from ``x0`` (simplex of ``x0`` and ``x0 + step * e_i``); the textbook reflection,
    expansion, contraction and shrink coefficients (1, 2, 1/2, 1/2). Non-finite values count as +inf.
    Returns (best point, its value, evaluations spent)."""
    n = len(x0)

    def val(p):
        y = f(p)
        return y if math.isfinite(y) else math.inf

    pts = [np.asarray(x0, dtype=float)] + [np.asarray(x0, dtype=float) + step * np.eye(n)[i] for i in range(n)]
    ys = [val(p) for p in pts]
    evals = n + 1
    while evals < max_evals:
        order = np.argsort(ys)
        pts, ys = [pts[i] for i in order], [ys[i] for i in order]
        if math.isfinite(ys[-1]) and abs(ys[-1] - ys[0]) <= rtol * (abs(ys[0]) + 1e-300):
            break
        centre = np.mean(pts[:-1], axis=0)
        xr = centre + (centre - pts[-1])
        yr = val(xr)
        evals += 1
        if yr < ys[0]:
            xe = centre + 2.0 * (centre - pts[-1])
            ye = val(xe)
            evals += 1
            pts[-1], ys[-1] = (xe, ye) if ye < yr else (xr, yr)
        elif yr < ys[-2]:
            pts[-1], ys[-1] = xr, yr
        else:
            xc = centre + 0.5 * ((xr if yr < ys[-1] else pts[-1]) - centre)
            yc = val(xc)
            evals += 1
            if yc < min(yr, ys[-1]):
                pts[-1], ys[-1] = xc, yc
            else:  # shrink towards the best
                for i in range(1, n + 1):
                    pts[i] = pts[0] + 0.5 * (pts[i] - pts[0])
                    ys[i] = val(pts[i])
                evals += n
    best = int(np.argmin(ys))
    return pts[best], ys[best], evals


@dataclass
class OracleFit:
    system: str
    keep: list[int]
    w: list[float]
    eta0: float
    fit_duration: float
    j_classical: float  # J of the classical recursion (w = 0) on the fit run
    j_oracle: float
    fit_runs: int


def _j(run: I.Run) -> float:
    if run.metrics["status"] != "ok":
        return math.inf
    err = run.metrics.get("max_rel_dE")
    return math.inf if err is None or not math.isfinite(err) else err * run.metrics["force_evals"] ** 2


def fit_oracle(sys, eta0: float, modulation: float = 3.0, clip: float = RECURSION_CLIP, fit_evals: int = FIT_EVALS,
               max_runs: int = 80, target_evals: int | None = None,
               timescale: str = "nn") -> tuple[OracleFit, LinearFactorStep]:
    """Fit the oracle of ``sys`` (an :class:`aits.scoreboard.System`): the recursion with
    h = eta0 * M^tanh(w . phi) * tau, clipped at ``clip``, w by Nelder-Mead on J over the leading part of
    the duration that costs about ``fit_evals`` evaluations (``target_evals``: the whole run's, from
    which that part is found; None: the whole duration is fitted). At most ``max_runs`` fit runs.
    ``timescale``: the learned rule's (``features.timescale``): tau and phi as it sees them."""
    from .scoreboard import run_method  # the scoreboard imports this module's users, not this module

    fit_sys = sys
    if target_evals and target_evals > fit_evals:
        fit_sys = replace(sys, duration=sys.duration * fit_evals / target_evals)
    ref, feats, keep, mean, std = standardisation(fit_sys, eta0, modulation, clip, fit_evals, timescale)

    def objective(w):
        h = LinearFactorStep(w, keep, mean, std, eta0, modulation, sys.eps, timescale)
        run = run_method(I.RecursivePolicy(h, "oracle", clip), fit_sys, 1, 3 * fit_evals + 50, record=True)
        j = _j(run)
        return math.log(j) if math.isfinite(j) and j > 0 else math.inf

    j0 = _j(ref)
    if len(keep):
        w, y, runs = nelder_mead(objective, np.zeros(len(keep)), 0.5, max_runs)
        j = math.exp(y) if math.isfinite(y) else math.inf
        if not j < j0:  # never worse than where it started
            w, j = np.zeros(len(keep)), j0
    else:
        w, j, runs = np.zeros(0), j0, 0
    fit = OracleFit(sys.name, keep.tolist(), [float(c) for c in w], eta0, fit_sys.duration, j0, j, runs + 1)
    return fit, LinearFactorStep(w, keep, mean, std, eta0, modulation, sys.eps, timescale)


def standardisation(fit_sys, eta0: float, modulation: float, clip: float, fit_evals: int = FIT_EVALS,
                    timescale: str = "nn"):
    """phi's standardisation on the fit run ``fit_sys`` (a System of the fit's duration): the classical
    recursion's own run there (w = 0) and the scale-free features of at most 400 of its states, evenly
    spaced in steps. Returns (that run, the features (S, F), keep, mean, std of the kept features)."""
    from .scoreboard import run_method

    probe = LinearFactorStep([], [], [], [], eta0, modulation, fit_sys.eps, timescale)
    ref = run_method(I.RecursivePolicy(probe, "oracle", clip), fit_sys, 1, 3 * fit_evals + 50)
    traj, m, eps = ref.trajectory, fit_sys.m, fit_sys.eps
    picks = np.unique(np.linspace(0, len(traj["t"]) - 1, min(len(traj["t"]), 400)).astype(int))
    feats = np.array([scale_free_numpy(traj["x"][k], traj["v"][k], I.accel(traj["x"][k], m, eps), m, eps,
                                       timescale)[0] for k in picks])
    std = feats.std(0)
    keep = np.flatnonzero(std > CONSTANT_STD)
    return ref, feats, keep, feats.mean(0)[keep], std[keep]


def spread(g) -> float:
    """How much a step factor varies over a run: its 95th over its 5th percentile (1: a constant factor,
    a classical rule; 3: the steps are reshaped by a factor 3 between the two)."""
    lo, hi = np.percentile(np.asarray(g, dtype=float), [5, 95])
    return float(hi / lo)


def shape_spreads(sys, fit: dict, eta0: float, modulation: float, clip: float, factors: list,
                  timescale: str = "nn", fit_evals: int = FIT_EVALS) -> dict:
    """The oracle's and each learned rule's :func:`spread` over the same states: the classical recursion's
    fit run of ``sys`` (``fit``: an oracle.json entry's ``fit``, its duration and weights), where the oracle
    was fitted. ``factors``: each learned rule's factor g(features) (None: that one is left out).
    Returns {"oracle": spread, "learned": [spread or None per factor]}."""
    feats, oracle = stored_oracle(sys, fit, eta0, modulation, clip, timescale, fit_evals)
    return {"oracle": spread([oracle.factor(f) for f in feats]),
            "learned": [None if g is None else spread([g(f) for f in feats]) for g in factors]}


def stored_oracle(sys, fit: dict, eta0: float, modulation: float, clip: float, timescale: str = "nn",
                  fit_evals: int = FIT_EVALS) -> tuple[np.ndarray, LinearFactorStep]:
    """The oracle an oracle.json entry's ``fit`` (its kept features, weights and fit duration) describes, rebuilt
    without fitting: the standardisation comes again from the classical recursion's fit run, the one run it costs.
    Returns (the features of that run's states (S, F), the oracle). Raises ValueError where the run keeps other
    features than the stored ones (another eta0, clip or timescale than the fit's)."""
    _, feats, keep, mean, std = standardisation(replace(sys, duration=fit["fit_duration"]), eta0, modulation,
                                                clip, fit_evals, timescale)
    if keep.tolist() != list(fit["features"]):
        raise ValueError(f"oracle: {sys.name}: the fit run's kept features {keep.tolist()} are not the stored "
                         f"{fit['features']} (another eta0, clip or timescale?)")
    return feats, LinearFactorStep(fit["w"], keep, mean, std, eta0, modulation, sys.eps, timescale)


def run_at_evals(h: LinearFactorStep, sys, target_evals: int, clip: float = RECURSION_CLIP,
                 tol: float = 0.02) -> I.Run:
    """The oracle over the whole duration with eta0 rescaled so its evaluations match ``target_evals``."""
    from .scoreboard import run_method, tuning_count

    cap = 3 * target_evals + 50

    def count(eta):
        run = run_method(I.RecursivePolicy(replace_eta(h, eta), "oracle", clip), sys, 1, cap)
        return tuning_count(run, cap), run

    (run, _, _), _ = I.tune(count, target_evals, h.eta0, tol, 14)
    return run


def replace_eta(h: LinearFactorStep, eta0: float) -> LinearFactorStep:
    return LinearFactorStep(h.w, h.keep, h.mean, h.std, eta0, h.modulation, h.eps, h.timescale)


# --- one member of the family for many systems: does an oracle's shape carry to other systems? --------------------

def leading_part(sys, eta0: float, modulation: float, clip: float, timescale: str = "nn",
                 fit_evals: int = FIT_EVALS):
    """``sys`` cut to the leading part of its duration that the classical recursion covers in about
    ``fit_evals`` evaluations (the whole of it when it costs fewer), or None when the classical run does not
    end ``ok`` (such a system has no J to compare with)."""
    from .scoreboard import run_method

    probe = LinearFactorStep([], [], [], [], eta0, modulation, sys.eps, timescale)
    ref = run_method(I.RecursivePolicy(probe, "oracle", clip), sys, 1, 50 * fit_evals, record=False)
    if ref.metrics["status"] != "ok":
        return None
    evals = ref.metrics["force_evals"]
    return replace(sys, duration=sys.duration * fit_evals / evals) if evals > fit_evals else sys


def system_j(w, keep, mean, std, eta0: float, modulation: float, clip: float, timescale: str, sys,
             fit_evals: int = FIT_EVALS) -> float:
    """J (max |dE/E| x evaluations^2; inf when the run does not end ok) of the linear member
    (w, keep, mean, std) on ``sys`` over its whole duration (give it :func:`leading_part`'s system)."""
    from .scoreboard import run_method

    h = LinearFactorStep(w, keep, mean, std, eta0, modulation, sys.eps, timescale)
    return _j(run_method(I.RecursivePolicy(h, "oracle", clip), sys, 1, 3 * fit_evals + 50, record=True))


@dataclass
class PooledFit:
    """One linear member of the family, fitted to several systems at once (:func:`fit_pooled`)."""
    systems: list[str]
    keep: list[int]
    mean: list[float]
    std: list[float]
    w: list[float]
    j_classical: list[float]  # per system: J of the classical recursion (w = 0)
    j_fit: list[float]  # per system: J of the fitted member
    fit_runs: int  # Nelder-Mead evaluations (each runs every system)

    def ratios(self) -> list[float]:
        return [j / j0 for j, j0 in zip(self.j_fit, self.j_classical)]


def pooled_standardisation(systems: list, eta0: float, modulation: float, clip: float, timescale: str = "nn",
                           fit_evals: int = FIT_EVALS):
    """phi's standardisation over several systems (each cut to its :func:`leading_part`): the features of at
    most 400 states of each one's classical run, each system weighted equally. Returns (J of each classical
    run, keep, mean, std)."""
    j0, stats = [], []
    for s in systems:
        ref, feats, _, _, _ = standardisation(s, eta0, modulation, clip, fit_evals, timescale)
        j0.append(_j(ref))
        stats.append((feats.mean(0), (feats ** 2).mean(0)))
    mean = np.mean([a for a, _ in stats], axis=0)
    std = np.sqrt(np.maximum(np.mean([b for _, b in stats], axis=0) - mean ** 2, 0.0))
    keep = np.flatnonzero(std > CONSTANT_STD)
    return j0, keep, mean[keep], std[keep]


def fit_pooled(systems: list, eta0: float, modulation: float, clip: float, timescale: str = "nn",
               max_runs: int = 60, mapper: Callable | None = None, fit_evals: int = FIT_EVALS) -> PooledFit:
    """One w for every system of ``systems`` (each already cut to its :func:`leading_part`): Nelder-Mead from
    w = 0 (the classical recursion) on the mean over the systems of log(J / J_classical), a run that does not
    end ok counting as +inf. ``mapper(calls)``: runs :func:`system_j` on every argument tuple of ``calls``
    and returns the values in order (default: one after another here; the driver passes Ray tasks)."""
    run_all = mapper or (lambda calls: [system_j(*c) for c in calls])
    j0, keep, mean, std = pooled_standardisation(systems, eta0, modulation, clip, timescale, fit_evals)
    if not all(math.isfinite(j) and j > 0 for j in j0):
        bad = [s.name for s, j in zip(systems, j0) if not (math.isfinite(j) and j > 0)]
        raise ValueError(f"oracle: the classical run of {', '.join(bad)} has no finite J: cut them out first")

    runs_at: dict[bytes, list] = {}  # J per system at each w tried: the best w's are not run again at the end

    def js(w):
        key = np.asarray(w, dtype=float).tobytes()
        if key not in runs_at:
            runs_at[key] = run_all([(w, keep, mean, std, eta0, modulation, clip, timescale, s, fit_evals)
                                    for s in systems])
        return runs_at[key]

    def objective(w):
        vals = js(w)
        if not all(math.isfinite(j) and j > 0 for j in vals):
            return math.inf
        return float(np.mean([math.log(j / j_0) for j, j_0 in zip(vals, j0)]))

    if len(keep):
        w, y, runs = nelder_mead(objective, np.zeros(len(keep)), 0.5, max_runs)
        if not y < 0.0:  # never worse on the mean than where it started
            w = np.zeros(len(keep))
    else:
        w, runs = np.zeros(0), 0
    j = js(w) if np.any(w) else list(j0)
    return PooledFit([s.name for s in systems], keep.tolist(), mean.tolist(), std.tolist(), [float(c) for c in w],
                     [float(v) for v in j0], [float(v) for v in j], runs + 1)
