"""A trained checkpoint's step rule for your own code: ``rule = aits.load_rule(path)`` (docs/RULE.md).

The rule is the one the evaluation runs: :func:`aits.policy.learned_methods` builds it from the
checkpoint (the numpy MLP and the scale-free features of :mod:`aits.features`), and this module
only calls it from plain arrays. Units: G = 1, the checkpoint's softening, time in the units of
the positions and masses (the rule is scale-free: lengths x L and masses x M give dt x sqrt(L^3/M)).

Forms (``rule.mode``):

- ``explicit``: ``rule.dt(x, v, m)``, dt = h(z) of the state z = (x, v, a(x), m);
- ``recursive``: ``rule.start(x, v, m)``, then ``rule.next_dt(x, v, a, m)`` once per step:
  dt_n = h(z_n)^2 / dt_(n-1), the first step h(z_0) (docs/DESIGN.md, §3);
- ``symmetric``: ``rule.next_dt(x, v, a, m, trial=...)`` solves dt = (h(start) + h(end)) / 2 by
  ``rule.k`` fixed-point iterations; each iteration takes one trial step with your integrator
  (``trial(dt) -> (x1, v1, a1)``; default: the kick-drift-kick step the rule was trained with);
- ``seed`` (the seed's ``model.output: dt`` with history features): the stepper only, through
  :class:`aits.policy.SeedPolicy`, which carries the history as the evaluation does.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from . import integrators as I
from .checkpoint import build_payload, config_from_checkpoint, load_checkpoint
from .config import Config
from .features import NormScales
from .model import build_model
from .policy import FactorStep, learned_methods
from .ranges import range_report, range_tally
from .steprules import SOFT_BLENDS, soft_blend_exponent

Trial = Callable[[float], tuple]


class Rule:
    """A learned step rule, rebuilt from a training checkpoint by the evaluation's own code.

    Parameters
    ----------
    ckpt : dict
        A checkpoint dictionary (:func:`aits.load_checkpoint`).
    source : str, optional
        Where it came from (shown by :meth:`describe`).
    softening : float, optional
        Plummer softening of the systems the rule will step (default: the training config's); the
        accelerations and the softening feature use it.
    range_check : bool
        Pull the learned modulation back to the classical rule outside the training box the checkpoint
        carries (``feature_ranges``, from ``driver/validate.py``; :mod:`aits.ranges`). Default True;
        no effect on a checkpoint without one.

    Attributes
    ----------
    mode : str
        ``explicit``, ``symmetric``, ``recursive`` or ``seed``.
    k : int
        Fixed-point iterations of the symmetric form (0 for the other forms).
    eps : float
        Plummer softening of the accelerations and features (``softening``, else the checkpoint's
        ``system.softening``).
    substeps : int
        Kick-drift-kick substeps of ``dt`` each the rule was trained with (``system.n_steps`` for
        the explicit and seed forms, 1 for the symmetric and recursive forms): a step advances
        ``substeps * dt``.
    dt_prev : float
        The step the stepper returned last (0 after :meth:`start`). The recursion divides by it:
        assign the step your integrator really took if it differs (a clipped last step needs nothing).

    Examples
    --------
    A recursive rule driving a kick-drift-kick loop over one Kepler orbit (``demo_checkpoint``
    builds an untrained model, which starts as the classical rule dt = 0.02 tau):

    >>> import numpy as np
    >>> import aits
    >>> from aits.rule import demo_checkpoint, kdk_trial
    >>> from aits.physics import kepler_ic
    >>> rule = aits.load_rule(demo_checkpoint("recursive"))
    >>> rule.mode
    'recursive'
    >>> m, x, v, period = kepler_ic(0.5, 1.0)
    >>> a = rule.accelerations(x, m)
    >>> rule.start(x, v, m)
    >>> t = 0.0
    >>> while t < period:
    ...     dt = min(rule.next_dt(x, v, a, m), period - t)
    ...     x, v, a = kdk_trial(x, v, a, m, rule.eps)(dt)
    ...     t += dt
    >>> print(f"{rule.steps} steps, final separation {np.linalg.norm(x[1] - x[0]):.4f}")
    234 steps, final separation 0.5000

The explicit form is a function of the state (here at pericentre, where tau = sqrt(0.5 / 4)):

    >>> explicit = aits.load_rule(demo_checkpoint("explicit"))
    >>> m, x, v, period = kepler_ic(0.5, 1.0)
    >>> print(f"dt = {explicit.dt(x, v, m):.6f}, g = {explicit.dt(x, v, m) / np.sqrt(0.5 / 4):.4f}")
    dt = 0.007077, g = 0.0200
    """

    def __init__(self, ckpt: dict, source: str | None = None, softening: float | None = None,
                 range_check: bool = True):
        self.cfg: Config = config_from_checkpoint(ckpt)
        self.source = source or "<checkpoint dict>"
        self.epoch = ckpt.get("epoch")
        self.eps = float(self.cfg.system.softening if softening is None else softening)
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"rule: softening must be finite and >= 0, got {softening}")
        methods = learned_methods(ckpt, self.cfg, self.eps, range_check)
        self.ranges = next((mt.h.mlp.ranges for mt in methods.values()
                            if isinstance(getattr(mt, "h", None), FactorStep)), None)
        learned = methods["learned"]
        # Every factor model comes with a time-symmetric form of its step function h: take h from it.
        sym = next((mt for mt in methods.values() if isinstance(mt, I.SymmetricPolicy)), None)
        self._h = None if sym is None else sym.h
        self._learned = learned
        self.k = 0
        if isinstance(learned, I.RecursivePolicy):
            self.mode = "recursive"
        elif isinstance(learned, I.SymmetricPolicy):
            self.mode, self.k = "symmetric", learned.k
        elif sym is not None:
            self.mode = "explicit"
        else:
            self.mode = "seed"
        self.substeps = 1 if self.mode in ("symmetric", "recursive") else int(self.cfg.system.n_steps)
        self._state: I.State | None = None
        self.dt_prev = 0.0
        self.steps = 0

    # ------------------------------------------------------------ the step function
    def accelerations(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """a_i = sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^(3/2), G = 1; x (N,D), m (N,) -> (N,D).

        One force evaluation, with the checkpoint's softening (the formula the rule was trained with).
        """
        x, m = _check(x, None, m)
        return I.accel(x, m, self.eps)

    def h(self, x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray) -> float:
        """The step function h(z) = g(scale-free features of z) * tau(z) (time units).

        Parameters
        ----------
        x, v, a : ndarray (N, D)
            Positions, velocities and the accelerations at ``x`` (:meth:`accelerations`).
        m : ndarray (N,)
            Masses.

        Returns
        -------
        float
            h, the explicit form's step; the recursive and symmetric forms are built on it.
        """
        if self._h is None:
            raise ValueError("this rule is in the seed's mode (model.output 'dt'): it has no step function h; "
                             "use start / next_dt")
        x, v, m = _check(x, v, m)
        return float(self._h(x, v, np.asarray(a, dtype=np.float64), m))

    def dt(self, x: np.ndarray, v: np.ndarray, m: np.ndarray) -> float:
        """The explicit rule's step from a state: dt = h(x, v, a(x), m) (time units).

        Parameters
        ----------
        x, v : ndarray (N, D)
            Positions and velocities.
        m : ndarray (N,)
            Masses (G = 1).

        Returns
        -------
        float
            The step; with ``substeps > 1`` the rule takes ``substeps`` KDK substeps of it.

        Raises
        ------
        ValueError
            For the recursive, symmetric and seed forms, whose step depends on more than the state:
            use :meth:`start` and :meth:`next_dt`.
        """
        if self.mode != "explicit":
            hint = "" if self.mode == "seed" else " (rule.h gives its step function)"
            raise ValueError(f"rule.dt is the explicit form; this rule is {self.mode}: use rule.start and "
                             f"rule.next_dt{hint}")
        x, v, m = _check(x, v, m)
        return float(self._learned.policy(I.State(m, x, v, I.accel(x, m, self.eps), eps=self.eps)))

    # ------------------------------------------------------------ the stepper
    def start(self, x: np.ndarray, v: np.ndarray, m: np.ndarray) -> None:
        """Begin a run at the state (x, v) with masses m: the next step is a first step.

        Parameters
        ----------
        x, v : ndarray (N, D)
        m : ndarray (N,)
        """
        x, v, m = _check(x, v, m)
        self._state = I.State(m, x, v, np.zeros_like(x), eps=self.eps, n_steps=self.substeps)
        self._learned.start(self._state)  # the seed's history buffer, sized for (N, D)
        tally = range_tally(self._learned)
        if tally is not None:
            tally.reset()  # range_report counts from here
        self._prev: tuple | None = None
        self.dt_prev = 0.0
        self.steps = 0

    def next_dt(self, x: np.ndarray, v: np.ndarray, a: np.ndarray | None, m: np.ndarray,
                trial: Trial | None = None) -> float:
        """The step to take from the current state; call once per step, after :meth:`start`.

        Parameters
        ----------
        x, v : ndarray (N, D)
            The current positions and velocities.
        a : ndarray (N, D) or None
            The accelerations at ``x`` (your integrator has them after its last kick); ``None``
            computes them here (one force evaluation).
        m : ndarray (N,)
            Masses.
        trial : callable, optional
            Symmetric form only: ``trial(dt) -> (x1, v1, a1)``, one step of dt from (x, v) with your
            integrator, not accepted; default :func:`kdk_trial`, the step the rule was trained with.

        Returns
        -------
        float
            The step (time units): ``h`` (explicit), ``h^2 / dt_prev`` (recursive, ``h`` first),
            the fixed point of ``(h(z) + h(trial(dt))) / 2`` after ``k`` iterations (symmetric), or
            the seed model's dt (seed, with the history of the states this stepper saw).

        Raises
        ------
        aits.integrators.BadStep
            The step is not finite and positive (the evaluation stops such a run as ``bad_dt``).
        """
        if self._state is None:
            raise ValueError("rule.next_dt before rule.start")
        x, v, m = _check(x, v, m)
        a = I.accel(x, m, self.eps) if a is None else np.asarray(a, dtype=np.float64)
        if self.mode == "explicit":
            dt = self.h(x, v, a, m)
        elif self.mode == "recursive":
            dt = I.recursive_dt(self.h(x, v, a, m), self.dt_prev, self._learned.clip)
        elif self.mode == "symmetric":
            dt = symmetric_dt(self._h, x, v, a, m, self.k, trial or kdk_trial(x, v, a, m, self.eps))
        else:
            dt = self._seed_dt(x, v, a, m)
        I.check_dt(dt)
        self.dt_prev, self.steps = dt, self.steps + 1
        return dt

    def _seed_dt(self, x, v, a, m) -> float:
        # The evaluation pushes the pre-step state with the step that led to it after each step: the same here.
        st = self._state
        if self._prev is not None:
            self._learned.policy.after_step(st, *self._prev)
        st.x, st.v, st.a, st.m, st.dt = x, v, a, m, self.dt_prev
        dt = float(self._learned.policy(st))
        self._prev = (x, v, self.dt_prev)
        return dt

    # ------------------------------------------------------------ about the rule
    def range_report(self) -> dict | None:
        """What the range check did since :meth:`start` (every call of the step function counts: the symmetric
        form's trial states too). None for a rule without a range check (``range_check=False``, a checkpoint
        without ``feature_ranges``, the seed's mode).

        Returns
        -------
        dict
            ``calls``; ``outside_share``, the share of calls whose features lay outside the training box;
            ``held_share``, the share the check held mostly at the classical rule (the learned modulation
            less than half its own: w < 0.5); ``mean_weight``, the mean of w (1: the rule as trained
            throughout); ``features``, per feature name the share of the outside calls where it was the
            furthest outside. A held share near 1 says your systems lie outside what the rule was trained
            on: it has been stepping as its classical rule, eta0 * tau.
        """
        tally = range_tally(self._learned)
        return None if tally is None else range_report(tally)

    def describe(self) -> str:
        """One paragraph: the form, its constants, the model and where it came from."""
        m, f = self.cfg.model, self.cfg.features
        form = {"explicit": "explicit dt = h(z)",
                "recursive": "recursive dt_n = h(z_n)^2 / dt_(n-1), first step h(z_0)",
                "symmetric": f"time-symmetric dt = (h(start) + h(end)) / 2, {self.k} fixed-point iteration(s)",
                "seed": f"seed mode: dt from the model, {f.feature_type} features with history K = {f.history_len}"}
        if self.mode == "seed":
            hstr = ""
        elif f.timescale == "blend":
            hstr = (", h = g(9 scale-free features) * sqrt(tau * tau_prs), tau = min_i sqrt(r_i,nn / |a_i|), "
                    "tau_prs IAS15's 2024 timescale of the body that sets tau")
        elif f.timescale in SOFT_BLENDS:
            w = soft_blend_exponent(f.timescale)
            hstr = (f", h = g(9 scale-free features) * tau * (tau_prs / tau)^({w}), tau = min_i sqrt(r_i,nn / "
                    "|a_i|), tau_prs IAS15's 2024 timescale of the body that sets tau, f = eps / (r + eps) of its pair")
        else:
            hstr = ", h = g(8 scale-free features) * tau, tau = min_i sqrt(r_i,nn / |a_i|)"
        if self.mode != "seed" and f.radial_feature == "energy":
            hstr += "; feature 1 the radial energy (r.u)^2 / (r mu)"
        if self.ranges is not None:
            hstr += f"; range check on a training box of {self.ranges.samples} states"
        return (f"{form[self.mode]}{hstr}; MLP {list(m.hidden_dims)} {m.activation}"
                f"{f', Fourier {m.fourier_dim}' if m.fourier_scale > 0 else ''}; softening {self.eps:g}; "
                f"{self.substeps} KDK substep(s) per dt; from {self.source} (epoch {self.epoch})")

    def __repr__(self) -> str:
        return f"Rule(mode={self.mode!r}, k={self.k}, eps={self.eps:g}, source={self.source!r})"


def load_rule(path_or_checkpoint, softening: float | None = None, range_check: bool = True) -> Rule:
    """The step rule of a training checkpoint, for use in your own integrator.

    Parameters
    ----------
    path_or_checkpoint : str, Path or dict
        A checkpoint file (``runs/<name>/model/model_epoch_XXXX.pt``) or a loaded checkpoint dict.
    softening : float, optional
        Plummer softening of your systems (default: the training config's ``system.softening``).
    range_check : bool
        See :class:`Rule` (default True: a checkpoint's training box, where it has one, is used).

    Returns
    -------
    Rule
        See :class:`Rule` (its docstring has a worked example).

    Raises
    ------
    aits.CheckpointError
        The file is missing, unreadable or lacks the required keys.
    ValueError
        The checkpoint's model cannot run as a step rule (a factor model without scale-free features).
    """
    if isinstance(path_or_checkpoint, dict):
        return Rule(path_or_checkpoint, softening=softening, range_check=range_check)
    return Rule(load_checkpoint(path_or_checkpoint), str(Path(path_or_checkpoint)), softening, range_check)


def symmetric_dt(h: Callable, x, v, a, m, k: int, trial: Trial) -> float:
    """dt = (h(z) + h(trial(dt))) / 2 by ``k`` fixed-point iterations from dt = h(z).

    :func:`aits.steprules.symmetric_dt` (the iteration of :class:`aits.integrators.SymmetricPolicy`)
    with the trial step supplied by the caller (``trial(dt) -> (x1, v1, a1)``), so that any symmetric
    integrator can use it.
    """
    return I.symmetric_dt(float(h(x, v, a, m)), lambda dt: float(h(*trial(dt), m)), k, I.check_dt)


def kdk_trial(x, v, a, m, eps: float = 0.0) -> Trial:
    """``trial(dt) -> (x1, v1, a1)``: one kick-drift-kick step of dt from (x, v) with a = a(x)
    (:func:`aits.integrators.kdk`, the step the rules are trained with; one force evaluation)."""
    return lambda dt: I.kdk(x, v, a, m, dt, eps, 1)


def demo_checkpoint(mode: str = "recursive", hidden_dims=(16, 16), seed: int = 0) -> dict:
    """An untrained scale-free factor model as a checkpoint dict (for examples and docs).

    Its weights are the seeded initial ones, with ``init_factor 0.02``: g is close to 0.02
    everywhere, so the rule is about the classical dt = 0.02 tau. ``mode``: explicit,
    recursive or symmetric (one iteration).
    """
    model = {"explicit": {}, "recursive": {"recursive": True}, "symmetric": {"symmetric_iterations": 1}}
    if mode not in model:
        raise ValueError(f"demo_checkpoint mode: explicit, recursive or symmetric, not {mode!r}")
    cfg = Config.from_dict({"run": {"seed": seed}, "features": {"feature_type": "scale_free"},
                            "model": {"hidden_dims": list(hidden_dims), "output": "factor", "init_factor": 0.02,
                                      **model[mode]}})
    return build_payload(0, build_model(cfg).state_dict(), None, cfg, NormScales().to_dict())


def _check(x, v, m):
    """float64 copies of x, v (N,D) and m (N,); ValueError naming the argument whose shape is off."""
    x = np.array(x, dtype=np.float64)
    m = np.array(m, dtype=np.float64)
    if x.ndim != 2 or m.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ValueError(f"rule: x must be (N, D) with N >= 2 and m (N,); got x {x.shape}, m {m.shape}")
    if v is None:
        return x, m
    v = np.array(v, dtype=np.float64)
    if v.shape != x.shape:
        raise ValueError(f"rule: v must have the shape of x {x.shape}; got {v.shape}")
    return x, v, m
