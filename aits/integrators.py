"""Step rules on one shared kick-drift-kick loop, in numpy, for evaluation at honest cost.

Every method integrates one system (m (N,), x, v (N,D)) from t = 0 to ``duration`` and
differs only in how it takes a step. Each step reports the force evaluations it spent
(one *force evaluation* = the accelerations of all N bodies at one configuration), so
methods can be compared at equal cost. The kernels here are the same formulas as
``aits.physics`` (tested equal to round-off) without torch's per-call overhead, which
dominates at batch 1 and small N.

Methods (see docs/DESIGN.md, "Scoreboard"):

- ``FixedStep(dt)``: constant dt, KDK.
- ``Adaptive(eta, timescale)``: dt = eta * tau, KDK (1 eval/step); tau = min_i sqrt(r_i,nn / |a_i|)
  (``nn``) or IAS15's 2024 criterion from jerk and snap (``prs``, :func:`prs_timescale`).
- ``SymmetricAdaptive(eta, k)``: dt = (f(start) + f(end)) / 2 with f = eta * tau, solved by ``k``
  fixed-point iterations (each a trial KDK step: one eval) and a final step (one eval).
- ``RecursiveAdaptive(eta)``: the explicit time-reversible step recursion dt_n * dt_{n-1} = h(z_n)^2 with
  h = eta * tau (the first step h(z_0)), KDK (1 eval/step): reversible because the relation between
  the steps on either side of a state is symmetric and h is even in the velocities.
- ``LogH(h)``: the logarithmic-Hamiltonian leapfrog (Mikkola & Tanikawa 1999; Preto & Tremaine
  1999), drift-kick-drift in a fictitious time s with dt/ds = 1/(T + B) in drifts and 1/(-U)
  in kicks; exact Kepler orbits up to a phase error (1 eval/step).
- ``PolicyStep(policy)``: dt from a callable (the learned explicit policy), KDK.
- ``SymmetricPolicy(policy, k)``: the time-symmetric form of a policy, as SymmetricAdaptive.
- ``RecursivePolicy(h)``: the step recursion of a step function h, as RecursiveAdaptive.
"""
from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .physics import rel_energy_error
# The step rules' shared pieces (numpy and torch twins side by side); their names stay importable here.
from .steprules import (PRS_A_FLOOR, TIMESCALES, einsum, jerk_snap, nn_timescale, prs_timescale,  # noqa: F401
                        recursive_dt, set_diagonal, symmetric_dt, timescale)

# A step's left-over time below this fraction of the duration counts as arrived (float rounding).
END_TOL = 1e-12


# ---------------------------------------------------------------- kernels
def accel(x: np.ndarray, m: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """a_i = sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^{3/2}; x (N,D), m (N,) -> (N,D)."""
    return accel_pairs(x, m, eps)[0]


def accel_pairs(x: np.ndarray, m: np.ndarray, eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(a, q) from one pass over the pairs: :func:`accel` and q_ij = |x_j - x_i|^2 (N,N), the unsoftened squared
    separations (0 on the diagonal). The step rules' timescales and features take q (``r2=``) instead of
    computing the same pairs again: above a few bodies that pass costs as much as the force
    (docs/PERFORMANCE.md, "One pass over the pairs")."""
    d = x[None, :, :] - x[:, None, :]
    q = einsum("ijk,ijk->ij", d, d)
    r2 = q + eps * eps
    set_diagonal(r2, 1.0)
    w = m[None, :] / (r2 * np.sqrt(r2))
    set_diagonal(w, 0.0)
    return einsum("ij,ijk->ik", w, d), q


def accel_pot(x: np.ndarray, m: np.ndarray, eps: float = 0.0) -> tuple[np.ndarray, float]:
    """(a (N,D), potential energy U) from one pass over the pairs: one force evaluation."""
    d = x[None, :, :] - x[:, None, :]
    r2 = einsum("ijk,ijk->ij", d, d) + eps * eps
    set_diagonal(r2, 1.0)
    inv_r = 1.0 / np.sqrt(r2)
    set_diagonal(inv_r, 0.0)
    w = m[None, :] * inv_r ** 3
    u = -0.5 * float(m @ inv_r @ m)
    return einsum("ij,ijk->ik", w, d), u


def energies(xs: np.ndarray, vs: np.ndarray, m: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Total energy of S states xs, vs (S,N,D) -> (S,). Diagnostics only (not a force evaluation)."""
    d = xs[:, None, :, :] - xs[:, :, None, :]
    r2 = (d * d).sum(-1) + eps * eps
    n = xs.shape[1]
    off = ~np.eye(n, dtype=bool)
    inv_r = np.where(off, 1.0 / np.sqrt(np.where(off, r2, 1.0)), 0.0)
    pot = -0.5 * np.einsum("i,sij,j->s", m, inv_r, m)
    kin = 0.5 * np.einsum("i,si->s", m, (vs * vs).sum(-1))
    return kin + pot


def kdk(x, v, a, m, dt: float, eps: float, n_steps: int = 1):
    """``n_steps`` kick-drift-kick substeps of dt from (x, v) with a = a(x). Returns (x, v, a(x'))."""
    return kdk_pairs(x, v, a, m, dt, eps, n_steps)[:3]


def kdk_pairs(x, v, a, m, dt: float, eps: float, n_steps: int = 1):
    """:func:`kdk` and the squared pair separations of x' (:func:`accel_pairs`): (x, v, a(x'), q(x'))."""
    q = None
    for _ in range(n_steps):
        v = v + (0.5 * dt) * a
        x = x + dt * v
        a, q = accel_pairs(x, m, eps)
        v = v + (0.5 * dt) * a
    return x, v, a, q


def call_h(h: Callable, x, v, a, m, q=None) -> float:
    """h(x, v, a, m) of a step function, with the pair separations q of x (:func:`accel_pairs`) for those that
    take them (``h.takes_r2``: the classical rules here and the learned ``aits.policy.FactorStep``)."""
    if q is not None and getattr(h, "takes_r2", False):
        return h(x, v, a, m, r2=q)
    return h(x, v, a, m)


def eta_tau(method, ts: Callable, eps: float) -> Callable:
    """h = method.eta * ts(x, v, a, m, eps): the step function of a classical rule (taking the pairs)."""
    def h(x, v, a, m, r2=None):
        return method.eta * ts(x, v, a, m, eps, r2=r2)
    h.takes_r2 = True
    return h


# ---------------------------------------------------------------- state and methods
@dataclass
class State:
    """One system during a run: positions, velocities, accelerations a(x), clock, last dt."""

    m: np.ndarray
    x: np.ndarray
    v: np.ndarray
    a: np.ndarray
    t: float = 0.0
    dt: float = 0.0  # the step that led here (0 at the start)
    eps: float = 0.0
    n_steps: int = 1
    extra: dict = field(default_factory=dict)  # per-method state (history, conserved quantities)
    pairs: tuple | None = None  # (x, q): the squared pair separations q of the array x (accel_pairs)

    def set_pairs(self, q) -> None:
        """Record q as the pair separations of the current ``x`` (None: unknown)."""
        self.pairs = None if q is None else (self.x, q)

    def q(self):
        """The pair separations of the current ``x``, or None where they were not recorded with this very
        array (code that sets ``x`` without them gets None, never stale pairs)."""
        p = self.pairs
        return p[1] if p is not None and p[0] is self.x else None


class Method(abc.ABC):
    """A step rule. ``step(state, t_left)`` advances ``state`` in place by at most ``t_left`` and
    returns the force evaluations it spent; the last step lands on the end time exactly."""

    name = "method"
    param_name = ""

    def start(self, state: State) -> None:  # noqa: B027 - optional hook
        pass

    def run_metrics(self) -> dict:
        """What the rule itself counted over the run since :meth:`start` (added to the run's metrics)."""
        return {}

    @abc.abstractmethod
    def step(self, state: State, t_left: float) -> int:
        """Advance ``state`` by one step of at most ``t_left``; return the force evaluations spent."""

    @property
    def param(self) -> float:
        return math.nan


def _advance(state: State, dt: float, t_left: float) -> int:
    """KDK with dt clipped onto the end time; updates the state. Returns evals spent."""
    dt = min(dt, t_left / state.n_steps)
    state.x, state.v, state.a, q = kdk_pairs(state.x, state.v, state.a, state.m, dt, state.eps, state.n_steps)
    state.set_pairs(q)
    state.t += dt * state.n_steps
    state.dt = dt
    return state.n_steps


class FixedStep(Method):
    name, param_name = "fixed", "dt"

    def __init__(self, dt: float):
        self.dt = float(dt)

    @property
    def param(self):
        return self.dt

    def step(self, state, t_left):
        return _advance(state, self.dt, t_left)


class PolicyStep(Method):
    """dt = policy(state) (the policy may read ``state.extra``), then one KDK step."""

    name, param_name = "policy", ""

    def __init__(self, policy: Callable[[State], float], name: str = "policy"):
        self.policy, self.name = policy, name

    def start(self, state):
        if hasattr(self.policy, "start"):
            self.policy.start(state)

    def step(self, state, t_left):
        dt = float(self.policy(state))
        check_dt(dt)
        extra = getattr(self.policy, "evals_per_call", 0)
        prev = (state.x, state.v, state.dt)
        n = _advance(state, dt, t_left)
        if hasattr(self.policy, "after_step"):
            self.policy.after_step(state, *prev)
        return n + extra


class Adaptive(PolicyStep):
    """dt = eta * tau(state), tau one of :data:`TIMESCALES` (``nn``: min sqrt(r/|a|); ``prs``)."""

    name, param_name = "adaptive", "eta"

    def __init__(self, eta: float, timescale: str = "nn", eps: float = 0.0, name: str = "adaptive"):
        self.eta, ts = float(eta), TIMESCALES[timescale]
        super().__init__(lambda s: self.eta * ts(s.x, s.v, s.a, s.m, eps, r2=s.q()), name)

    @property
    def param(self):
        return self.eta


class SymmetricPolicy(Method):
    """dt = (h(start) + h(end)) / 2 by ``k`` fixed-point iterations, h(state) a step function of
    the configuration and velocities (even under v -> -v for time reversibility).

    Cost per step: k trial steps plus the final step, one force evaluation each (n_steps = 1).
    """

    name, param_name = "symmetric", ""

    def __init__(self, h: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float], k: int = 2,
                 name: str = "symmetric", evals_per_h: int = 0):
        if k < 1:
            raise ValueError(f"symmetric step needs k >= 1 iterations, got {k}")
        self.h, self.k, self.name, self.evals_per_h = h, int(k), name, evals_per_h

    def step(self, state, t_left):
        m, eps = state.m, state.eps
        h0 = float(call_h(self.h, state.x, state.v, state.a, m, state.q()))

        def h_after(d):
            x, v, a, q = kdk_pairs(state.x, state.v, state.a, m, d, eps, 1)
            return float(call_h(self.h, x, v, a, m, q))

        dt = symmetric_dt(h0, h_after, self.k, check_dt)
        check_dt(dt)
        evals = self.evals_per_h + self.k * (1 + self.evals_per_h)
        dt = min(dt, t_left)
        state.x, state.v, state.a, q = kdk_pairs(state.x, state.v, state.a, m, dt, eps, 1)
        state.set_pairs(q)
        state.t += dt
        state.dt = dt
        return evals + 1


class SymmetricAdaptive(SymmetricPolicy):
    name, param_name = "symmetric_adaptive", "eta"

    def __init__(self, eta: float, k: int = 2, timescale: str = "nn", eps: float = 0.0,
                 name: str = "symmetric_adaptive"):
        self.eta, ts = float(eta), TIMESCALES[timescale]
        super().__init__(eta_tau(self, ts, eps), k, name)

    @property
    def param(self):
        return self.eta


class RecursivePolicy(Method):
    """Explicit, time-reversible steps: dt_n = h(z_n)^2 / dt_{n-1}, the first step h(z_0).

    The map (z_n, dt_{n-1}) -> (z_{n+1}, dt_n) is reversible: the relation dt_n * dt_{n-1} =
    h(z_n)^2 is symmetric in the two steps either side of z_n, so a run with the velocities flipped
    and the step dt_n that arrived retraces the same steps (h even under v -> -v; KDK is symmetric).
    One force evaluation per step, like the explicit rule. The previous step is ``state.dt``.
    """

    name, param_name = "recursive", ""

    def __init__(self, h: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float],
                 name: str = "recursive", clip: float | None = None):
        self.h, self.name, self.clip = h, name, clip

    def start(self, state):
        self.clip_acts = 0

    def step(self, state, t_left):
        h = float(call_h(self.h, state.x, state.v, state.a, state.m, state.q()))
        dt = recursive_dt(h, state.dt, self.clip)
        if self.clip is not None and state.dt > 0 and dt != h * h / state.dt:
            self.clip_acts += 1  # the step is not h^2 / dt_prev: the map is not reversible here
        check_dt(dt)
        return _advance(state, dt, t_left)

    def run_metrics(self) -> dict:
        """``clip_acts``: the steps where the clip changed the recursion's step (None without a clip)."""
        return {"clip_acts": getattr(self, "clip_acts", 0) if self.clip is not None else None}


class RecursiveAdaptive(RecursivePolicy):
    name, param_name = "recursive_adaptive", "eta"

    def __init__(self, eta: float, timescale: str = "nn", eps: float = 0.0, name: str = "recursive_adaptive",
                 clip: float | None = None):
        self.eta, ts = float(eta), TIMESCALES[timescale]
        super().__init__(eta_tau(self, ts, eps), name, clip)

    @property
    def param(self):
        return self.eta


class LogH(Method):
    """Logarithmic-Hamiltonian leapfrog, drift-kick-drift with fictitious step ``h``.

    Drift by h/2 in s: dt = (h/2) / (T(v) + B), B = -E0 fixed at the start; kick by h:
    dt = h / (-U(x)). The last step's h is found by a secant search so that the step lands on
    the end time; its trial steps are counted.
    """

    name, param_name = "logh", "h"

    def __init__(self, h: float):
        self.h = float(h)

    @property
    def param(self):
        return self.h

    def start(self, state):
        a, u = accel_pot(state.x, state.m, state.eps)
        kin = 0.5 * float(state.m @ (state.v * state.v).sum(-1))
        state.extra["B"] = -(kin + u)
        if not (kin + state.extra["B"] > 0 and -u > 0):
            raise BadStep(math.nan)

    def _dkd(self, state, h):
        m, b = state.m, state.extra["B"]
        kin = 0.5 * float(m @ (state.v * state.v).sum(-1))
        dt1 = 0.5 * h / (kin + b)
        x = state.x + dt1 * state.v
        a, u = accel_pot(x, m, state.eps)
        v = state.v + (h / -u) * a
        kin = 0.5 * float(m @ (v * v).sum(-1))
        dt2 = 0.5 * h / (kin + b)
        return x + dt2 * v, v, a, dt1 + dt2

    def step(self, state, t_left):
        x, v, a, dt = self._dkd(state, self.h)
        evals = 1
        if dt > t_left:  # land on the end time: secant on h, dt(h) is smooth and ~ linear
            h_lo, dt_lo, h_hi, dt_hi = 0.0, 0.0, self.h, dt
            for _ in range(50):
                h = h_lo + (h_hi - h_lo) * (t_left - dt_lo) / (dt_hi - dt_lo)
                x, v, a, dt = self._dkd(state, h)
                evals += 1
                if abs(dt - t_left) <= 1e-14 * max(t_left, state.t):
                    break
                if dt < t_left:
                    h_lo, dt_lo = h, dt
                else:
                    h_hi, dt_hi = h, dt
            dt = t_left  # the remaining rounding is below the arrival tolerance
        state.x, state.v, state.a = x, v, a
        state.t += dt
        state.dt = dt
        return evals


class BadStep(Exception):
    """A non-finite or non-positive dt."""


def check_dt(dt: float) -> None:
    """Raise :class:`BadStep` unless ``dt`` is finite and positive."""
    if not (math.isfinite(dt) and dt > 0):
        raise BadStep(dt)


# ---------------------------------------------------------------- the shared loop
@dataclass
class Run:
    """One method's run: metrics and (if recorded) the trajectory t, x, v, dt, E."""

    method: str
    metrics: dict
    trajectory: dict = field(default_factory=dict)


def integrate(method: Method, m, x, v, duration: float, *, eps: float = 0.0, n_steps: int = 1,
              max_steps: int = 2_000_000, record: bool = True, dtype=np.float64) -> Run:
    """Run ``method`` from t = 0 to ``duration``.

    Stops at the end time, at ``max_steps``, at a non-finite or non-positive dt, or at a
    non-finite state (``metrics['status']``: ok | max_steps | bad_dt | nonfinite). The wall time
    covers the loop only (energies for the diagnostics are computed afterwards).
    """
    m = np.asarray(m, dtype=dtype)
    x = np.asarray(x, dtype=dtype).copy()
    v = np.asarray(v, dtype=dtype).copy()
    start = time.perf_counter()
    a, q = accel_pairs(x, m, eps)
    state = State(m, x, v, a, eps=eps, n_steps=n_steps)
    state.set_pairs(q)
    evals, steps, status = 1, 0, "ok"
    ts, xs, vs, dts = [0.0], [x], [v], [0.0]
    try:
        method.start(state)
        while duration - state.t > END_TOL * duration:
            if steps >= max_steps:
                status = "max_steps"
                break
            evals += method.step(state, duration - state.t)
            steps += 1
            if not (np.isfinite(state.x).all() and np.isfinite(state.v).all()):
                status = "nonfinite"
                break
            if record:
                ts.append(state.t)
                xs.append(state.x)
                vs.append(state.v)
                dts.append(state.dt)
    except BadStep:
        status = "bad_dt"
    wall = time.perf_counter() - start
    metrics = {"method": method.name, "param": method.param, "param_name": method.param_name,
               "force_evals": int(evals), "steps": steps, "wall_time_s": wall, "end_time": state.t,
               "duration": float(duration), "status": status, **method.run_metrics()}
    if metrics.get("clip_acts") is not None:
        metrics["clip_share"] = metrics["clip_acts"] / max(steps, 1)
    if not record:
        return Run(method.name, metrics)
    traj = {"t": np.asarray(ts), "x": np.stack(xs), "v": np.stack(vs), "dt": np.asarray(dts)}
    traj["E"] = energies(traj["x"], traj["v"], m, eps)
    metrics.update(energy_metrics(traj["t"], traj["E"]))
    return Run(method.name, metrics, traj)


def tune(count: Callable[[float], tuple[int, object]], target: int, p: float, tol: float, max_tries: int):
    """Search a step parameter ``p`` whose count (steps or force evaluations; ~ 1 / p) lies within
    ``tol * target`` of ``target``: secant steps in log-log, bisection of the bracket when a step
    leaves it. ``count(p)`` returns (count, result). Returns ((result, p, count) of the closest
    trial, trials made)."""
    lo = hi = None  # lo: parameter with too large a count; hi: too small
    best, tries = None, 0
    for tries in range(1, max_tries + 1):
        n, result = count(p)
        if best is None or abs(n - target) < abs(best[2] - target):
            best = (result, p, n)
        if abs(n - target) <= tol * target:
            break
        if n > target:
            lo = p if lo is None else max(lo, p)
        else:
            hi = p if hi is None else min(hi, p)
        if lo is not None and hi is not None and hi / lo < 1 + 1e-9:
            break
        guess = p * max(n, 1) / target
        if lo is not None and hi is not None and not lo < guess < hi:
            guess = math.sqrt(lo * hi)
        p = guess
    return best, tries


def energy_metrics(t: np.ndarray, e: np.ndarray) -> dict:
    """max and final |dE/E| against E(0), the energy band (max E - min E) / |E(0)| and the drift slope: the
    least-squares slope of log running-max |dE/E| against log t over the second half of the run (~1: linear
    drift, ~0: bounded error).

    The band does not depend on where in its oscillation the run starts: max |dE/E| is the distance from E(0)
    to the far edge of the band, anywhere between half the band and all of it (an orbit started at
    pericentre sits elsewhere in its band than one started at apocentre)."""
    rel = rel_energy_error(e[0], e)
    finite = bool(np.isfinite(rel).all())
    out = {"max_rel_dE": float(np.max(rel)) if finite else math.inf,
           "final_rel_dE": float(rel[-1]), "drift_slope": None,
           "band_rel_dE": float((np.max(e) - np.min(e)) / abs(e[0])) if finite and e[0] != 0 else math.inf}
    if not finite or len(t) < 8:
        return out
    run_max = np.maximum.accumulate(rel)
    half = t >= 0.5 * t[-1]
    tt, yy = t[half], run_max[half]
    ok = (tt > 0) & (yy > 0)
    if ok.sum() >= 4 and np.ptp(np.log(tt[ok])) > 0:
        out["drift_slope"] = float(np.polyfit(np.log(tt[ok]), np.log(yy[ok]), 1)[0])
    return out
