"""Stepping a batch of states: features once per state (Prepared), a model-chosen leapfrog step
(Attempt), the band loss and the guarded optimiser step. Shared by collect, generalize and inference."""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from .config import Config
from .features import NormScales, build_features, scale_free_torch
from .physics import acceleration, energy, leapfrog, rel_energy_error, resolve_dtype
from .samples import Rows, Samples, StateBatch
from .steprules import classical_timescale, recursive_dt_torch, symmetric_dt


@dataclass
class Prepared(Rows):
    """Everything of a batch of states that does not depend on the model (``take``: a subset of it)."""

    x: torch.Tensor
    v: torch.Tensor
    m: torch.Tensor
    feats: torch.Tensor
    e0: torch.Tensor
    acc0: torch.Tensor
    tau: torch.Tensor  # (B,) classical timescale min_i sqrt(r_i,nn / |a_i|)
    dt_prev: torch.Tensor | None = None  # (B,) previous step of a passage rollout: the step recursion's input
    eps: torch.Tensor | None = None  # (B,) each state's own softening; None: the run's (Stepper.eps)


@dataclass
class Attempt:
    dt: torch.Tensor  # (B,) with grad
    x: torch.Tensor
    v: torch.Tensor
    e1: torch.Tensor
    rel_dE: torch.Tensor  # (B,) with grad
    a: torch.Tensor | None = None  # a(x) at the end state
    h: torch.Tensor | None = None  # (B,) the rule's step h at the start state, before the recursion or symmetrisation

    def passed(self, threshold: float) -> torch.Tensor:
        r = self.rel_dE.detach()
        return torch.isfinite(r) & (r < threshold)


class CompiledOrEager:
    """``fn`` through ``torch.compile`` with one compile thread (an actor owns one core). Where compiling fails
    (no C++ compiler, a platform inductor does not support) it falls back to the eager ``fn`` for good, with one
    warning naming the error and ``what`` runs eager: the same steps, slower."""

    def __init__(self, fn, what: str):
        import torch._inductor.config as inductor_config
        inductor_config.compile_threads = 1
        self.fn, self.what, self.compiled, self.failed = fn, what, torch.compile(fn), False

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        try:
            return self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compile failure: the eager step takes over
            self.failed = True
            first = str(exc).splitlines()[0] if str(exc) else ""
            warnings.warn(f"train.compile_rollout: torch.compile failed ({type(exc).__name__}: {first}); "
                          f"{self.what} run eager", stacklevel=2)
            return self.fn(*args)


class Stepper:
    """Builds features and takes model-chosen leapfrog steps for batches of states."""

    def __init__(self, cfg: Config, scales: NormScales, device="cpu"):
        self.eps = float(cfg.system.softening)
        # a mixture that draws softened systems: each state steps with its own softening (StateBatch.eps)
        self.per_system_eps = cfg.system.ic == "mixture" and cfg.system.mixture.get("soft_few_body", 0) > 0
        self.n_steps = cfg.system.n_steps
        self.feature_type = cfg.features.feature_type
        self.timescale = cfg.features.timescale  # scale_free: 'nn', 'blend', 'soft_blend' or 'prs_lean' (aits.features.scale_free_torch)
        self.radial = cfg.features.radial_feature  # scale_free feature 1: 'fraction' or 'energy'
        self.K = cfg.features.history_len
        self.scales = scales
        self.device = torch.device(device)
        self.dtype = resolve_dtype(cfg.run.dtype)
        self.model_dtype = resolve_dtype(cfg.model.dtype or cfg.run.dtype)
        self.threshold = cfg.train.energy_threshold
        self.factor = cfg.model.output == "factor"  # dt = g(features) * tau
        self.symmetric = cfg.model.symmetric_iterations  # 0: explicit step
        self.recursive = cfg.model.recursive  # dt_n = h(z_n)^2 / dt_{n-1}
        self.clip = cfg.model.step_clip  # the recursion's step stays within [h/c, h*c] (model.recursion_clip)
        self.passage_measure = cfg.train.passage_measure  # aits.passage.rollout: max |dE/E| or the energy band
        # leapfrog substeps of dt per step: time-symmetric and recursive steps are one substep
        self.substeps = 1 if (self.symmetric or self.recursive) else self.n_steps
        self.compile_rollout = cfg.train.compile_rollout  # passage rollouts step through torch.compile
        self._compiled = None
        self.compiled_reference = None  # aits.passage.reference_ends' step, compiled on first use
        self.classical_twin = None  # the bounded factor at eta0 (aits.passage.classical_rows), made on first use
        self.timescale_twins = {}  # timescale -> the classical recursion on it (aits.passage.timescale_twin)

    def prepare(self, states: StateBatch) -> Prepared:
        """B states (a :class:`StateBatch`, or :class:`Samples`) -> Prepared (features, E0, a(x0)), no grad."""
        tensor = partial(torch.as_tensor, dtype=self.dtype, device=self.device)
        m, x, v = tensor(states.m), tensor(states.x), tensor(states.v)
        own = tensor(states.eps) if self.per_system_eps and states.eps is not None else None
        eps = self.eps if own is None else own
        with torch.no_grad():
            acc0 = acceleration(x, m, eps)
            if self.feature_type == "scale_free":
                feats, tau = scale_free_torch(x, v, acc0, m, eps, self.timescale, self.radial)
            else:
                feats = build_features(x, v, m, tensor(states.dt), tensor(states.hist_x), tensor(states.hist_v),
                                       tensor(states.hist_dt), self.eps, self.scales, self.feature_type)
                tau = classical_timescale(x, acc0)
            e0 = energy(x, v, m, eps)
        # No previous step: the band's attempts take the recursion's steady step h (see ``attempt``);
        # only a rollout carries its own previous step (``rollout_step``).
        return Prepared(x, v, m, feats.to(self.model_dtype), e0, acc0, tau, eps=own)

    def rollout_step(self, model, x, v, a, m, e0, dt_prev, eps=None):
        """One step of a passage rollout from a live state x, v, a (B,N,D) (in the graph): its scale-free
        features (the acceleration and energy of the step that reached it reused), then ``attempt``, as one
        function of tensors, the unit ``torch.compile`` fuses (``train.compile_rollout``). ``dt_prev`` (B,):
        the previous step, 0 at a rollout's first (the recursion then takes h, as ``attempt`` does without
        one); ``eps`` the states' own softening or None.
        Returns (dt, x1, v1, a1, e1, tau, h), tau the start state's timescale and h the rule's step there
        before the recursion (h / tau the learned factor g, with output ``factor``)."""
        feats, tau = scale_free_torch(x, v, a, m, self.eps if eps is None else eps, self.timescale, self.radial)
        att = self.attempt(model, Prepared(x, v, m, feats.to(self.model_dtype), e0, a, tau, dt_prev, eps))
        return att.dt, att.x, att.v, att.a, att.e1, tau, att.h

    def on_timescale(self, timescale: str) -> "Stepper":
        """This stepper on another ``features.timescale`` (its clip, softening, precision and compile setting kept),
        with caches of its own: what :func:`aits.passage.timescale_twin` rolls a classical rule out with."""
        other = copy.copy(self)
        other.timescale, other._compiled, other.compiled_reference = timescale, None, None
        other.classical_twin, other.timescale_twins = None, {}
        return other

    def compiled_rollout_step(self):
        """:meth:`rollout_step` through ``torch.compile`` (made once per Stepper; the first call of each
        batch size and grad mode compiles, ~40 s on one core), see :class:`CompiledOrEager`."""
        if self._compiled is None:
            self._compiled = CompiledOrEager(self.rollout_step, "rollouts")
        return self._compiled

    def step_size(self, model, feats: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """h = model output (output 'dt') or model output * tau (output 'factor'), (B,)."""
        out = model(feats).to(self.dtype)
        return out * tau if self.factor else out

    def attempt(self, model, prep: Prepared) -> Attempt:
        """Predict dt from features, integrate; the graph runs dt -> leapfrog -> E1 only.

        Time-symmetric mode: dt = (h(start) + h(end)) / 2 by ``symmetric_iterations`` fixed-point
        iterations, each a trial leapfrog step whose end state's features stay in the graph.
        Recursive mode: dt = h^2 / dt_prev, in a passage rollout (dt_prev the previous attempt's dt, in
        the graph), else h: the steady step of the recursion (dt_n = h when dt_{n-1} = h). Collect and
        generalize train h so: the recursion's alternating mode (dt_n / h_n = c, 1/c, c, ...) is
        neutral, as reversibility requires, so with stored previous steps every weight update
        between epochs would leave the collectors' systems oscillating further from h, and it did
        (seed 0 collapsed to dt ~ 5e-5 tau by epoch 27).
        """
        dt = h = self.step_size(model, prep.feats, prep.tau)
        if self.recursive and prep.dt_prev is not None:  # a rollout's step after its first
            dt = recursive_dt_torch(dt, prep.dt_prev, self.clip)
        eps = self.eps if prep.eps is None else prep.eps  # the states' own softening, or the run's
        if self.symmetric:
            def h_after(d):  # h at the end of a trial step of d, in the graph
                xt, vt, at = leapfrog(prep.x, prep.v, prep.m, d, eps, 1, acc0=prep.acc0)
                feats, tau = scale_free_torch(xt, vt, at, prep.m, eps, self.timescale, self.radial)
                return self.step_size(model, feats.to(self.model_dtype), tau)
            dt = symmetric_dt(dt, h_after, self.symmetric)
        x1, v1, a1 = leapfrog(prep.x, prep.v, prep.m, dt, eps, self.substeps, acc0=prep.acc0)
        e1 = energy(x1, v1, prep.m, eps)
        return Attempt(dt, x1, v1, e1, rel_energy_error(prep.e0, e1), a1, h)


def band_loss(rel_dE: torch.Tensor, E_lower: float, E_upper: float, lower_only: bool = False) -> torch.Tensor:
    """Per-sample loss pushing log rel_dE into [log E_lower, log E_upper]; non-finite -> 1.0."""
    finite = torch.isfinite(rel_dE)
    y = torch.log(torch.where(finite, rel_dE, torch.ones_like(rel_dE)) + 1e-12)
    loss = torch.relu(math.log(E_lower) - y) ** 2
    if not lower_only:
        loss = loss + torch.relu(y - math.log(E_upper)) ** 2
    return torch.where(finite, loss, torch.ones_like(loss))


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    # foreach applies one fused kernel per parameter group instead of a Python loop per tensor.
    return torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            foreach=True)


def learning_rate(cfg: Config, epoch: int) -> float:
    """The learner's lr in epoch ``epoch`` (1-based): ``train.lr``, or with ``train.lr_final`` a half cosine
    from lr at epoch 1 to lr_final at ``train.epochs`` (held there after it, e.g. a resumed longer run)."""
    t = cfg.train
    if t.lr_final is None:
        return t.lr
    frac = min(1.0, (epoch - 1) / max(1, t.epochs - 1))
    return t.lr_final + 0.5 * (t.lr - t.lr_final) * (1.0 + math.cos(math.pi * frac))


def optimizer_step(model, optimizer, loss: torch.Tensor | None = None) -> bool:
    """Backward of ``loss`` and step, unless the loss or a gradient is non-finite (then the gradients are
    cleared). ``loss`` None: step on the gradients the parameters already hold (the passage's mean).
    Returns whether it stepped."""
    if loss is not None:
        if not loss.requires_grad or not torch.isfinite(loss):
            return False
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # One fused multi-tensor norm: cheaper than a per-tensor abs().max() pass.
    if not grads or not torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


def predict_dt(model, stepper: Stepper, states: StateBatch) -> np.ndarray:
    """dt (B,) the model picks for B states with their histories."""
    with torch.no_grad():
        prep = stepper.prepare(states)
        return stepper.step_size(model, prep.feats, prep.tau).double().cpu().numpy()


def evaluate(model, stepper: Stepper, samples: Samples) -> torch.Tensor:
    """rel_dE (n,) of every sample under the current model, no gradients."""
    with torch.no_grad():
        return stepper.attempt(model, stepper.prepare(samples)).rel_dE
