"""The passage objective: what a step rule costs over many consecutive steps, not one.

The band loss judges one step at a time: it equalises each step's energy change along an orbit.
A time-symmetric integrator's energy error, though, is not a sum of step errors: it swings up and
back through each pericentre passage, and its size over an orbit is set by how the steps are
spread along it. The passage objective measures that directly. A collector draws
``passage_batch`` of its epoch's samples, rolls out ``passage_steps`` steps of the rule as trained
from each (the same ``Stepper.attempt``, differentiable through every step, at the broadcast
weights) and takes the gradient of the mean over the systems of

    log max_k |E_k - E_0| / |E_0|  -  2 log T,      T = sum_k n_steps * dt_k (time covered),

the log of (largest energy error) x (steps per unit time)^2 (``train.passage_measure: band``: the energy
band, max E - min E over the rollout, instead of the largest error from the start): leapfrog's error falls as the
square of the step count, so the objective does not change when every dt is scaled by one
factor. It moves how the steps are spread along the trajectory, and leaves their overall size to
the band. Where steps are coarse the error falls faster than dt^2, and the objective then prefers
smaller steps everywhere: ``train.passage_anchor`` lambda adds lambda (level - log eta0)^2, level the
rollouts' mean log(dt / tau), which holds the overall size at the classical eta0
(``model.init_factor``) it contains. The learner steps once per epoch on the mean of the collectors' gradients
(docs/DESIGN.md §4.4b). ``passage_steps`` should cover at least one pericentre passage
of the most eccentric training orbit at the trained step size.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch

from . import families
from .config import Config
from .metrics import declare
from .physics import leapfrog
from .samples import Samples, StateBatch
from .stepper import CompiledOrEager, Stepper, optimizer_step

declare({"passage/loss": "mean", "passage/max_rel_dE": "mean", "passage/steps_per_tau": "mean",
         "passage/worse_than_classical": "mean",
         "passage/skipped": "sum", "passage/applied": "mean", "passage/level": "mean",
         "passage/phase": "mean", "passage/phase_error": "mean", "passage/phase_worse": "mean",
         "passage/jumps": "mean", "passage/factor_jumps": "mean"})


def rollout(model, stepper: Stepper, m: np.ndarray, x: np.ndarray, v: np.ndarray, steps: int,
            with_level: bool = False, eps: np.ndarray | None = None, with_end: bool = False,
            with_jumps: bool = False, factor_tolerance: float | None = None):
    """``steps`` model-chosen steps from (m, x, v) (B,N[,D]), kept in the graph: returns (errors (B, steps):
    |dE/E| against the start's energy, or with the stepper's ``passage_measure`` ``band`` the band so far (see
    :func:`_measure`), T (B,) time covered, tau0 (B,) the start's classical timescale).
    Each rollout is a fresh start: the step recursion's first step is h, then dt_k = h_k^2 / dt_{k-1}
    with dt_{k-1} in the graph (so scaling h scales every step: the objective stays scale-free).
    ``with_level``: also the rollout's level (B,), the mean over its steps of log(dt_k / tau_k), in the graph.
    ``eps`` (B,): the systems' own softenings (``StateBatch.eps``; used where the stepper reads them).
    ``with_end``: also the positions reached (B,N,D), in the graph (after the level where both are asked for).
    ``with_jumps``: last, each rollout's mean over its steps of (log(dt_k / tau_k) - log(dt_(k-1) / tau_(k-1)))^2
    (B,), in the graph: how much the step jumps against its timescale from one step to the next (the recursion's
    alternating mode, a factor that jumps where the pair setting tau changes).
    ``factor_tolerance`` (a float, not None): last, each rollout's factor jumps (B,), in the graph: the sum over its
    steps of max(0, |log g_k - log g_(k-1)| - factor_tolerance)^2 with g_k = h_k / tau_k the rule's own factor
    before the recursion, so the recursion's alternating mode does not count, and a factor that changes smoothly
    along an orbit (a few hundredths a step at most, ~100 steps per tau) costs nothing: what counts is a factor
    that jumps, where the features jump (the pair setting tau changes)."""
    prep = stepper.prepare(StateBatch.start(m, x, v, eps=eps))
    m, e0, tau0, errs, T, levels, own = prep.m, prep.e0, prep.tau, [], 0.0, [], prep.eps
    # one step function either way: the eager step, or the same step fused by torch.compile
    step = stepper.compiled_rollout_step() if stepper.compile_rollout else stepper.rollout_step
    x, v, a, dt = prep.x, prep.v, prep.acc0, torch.zeros_like(e0)  # dt_prev 0: the recursion's first step is h
    factors = []
    for _ in range(steps):
        dt, x, v, a, e1, tau, h = step(model, x, v, a, m, e0, dt, own)
        errs.append((e1 - e0) / e0.abs())
        if with_level or with_jumps:
            levels.append(torch.log(dt / tau))
        if factor_tolerance is not None:
            factors.append(torch.log(h / tau))
        T = T + dt * stepper.substeps
    out = (_measure(torch.stack(errs, -1), stepper.passage_measure), T, tau0)
    if with_level:
        out += (torch.stack(levels, -1).mean(-1),)
    if with_end:
        out += (x,)
    if with_jumps:
        lv = torch.stack(levels, -1)
        out += (((lv[..., 1:] - lv[..., :-1]) ** 2).mean(-1),)
    if factor_tolerance is not None:
        lg = torch.stack(factors, -1)
        out += ((torch.relu((lg[..., 1:] - lg[..., :-1]).abs() - factor_tolerance) ** 2).sum(-1),)
    return out


def _measure(signed: torch.Tensor, measure: str) -> torch.Tensor:
    """Per step k, the error the objective's max runs over: |dE/E|_k (``max``), or the band of the rollout so
    far, max_{j<=k} dE/E - min_{j<=k} dE/E with dE/E = 0 at the start (``band``), whose max over k is the band
    of the whole rollout (train.passage_measure)."""
    if measure == "max":
        return signed.abs()
    zero = torch.zeros_like(signed)
    return torch.cummax(torch.maximum(signed, zero), -1).values - torch.cummin(torch.minimum(signed, zero), -1).values


def objective_rows(errs: torch.Tensor, T: torch.Tensor, tau0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the objective log max_k |dE/E| - 2 log(T / tau0) of each finite rollout, the mask of those rows)
    from :func:`rollout`'s errors (B, steps), times covered and start timescales (B,)."""
    keep = torch.isfinite(errs.max(-1).values) & torch.isfinite(T) & (T > 0)
    return _objective(errs[keep], T[keep], tau0[keep]), keep


def _objective(errs: torch.Tensor, T: torch.Tensor, tau0: torch.Tensor) -> torch.Tensor:
    """log max_k |dE/E| - 2 log(T / tau0) of every rollout (B,), finite or not."""
    return torch.log(errs.max(-1).values + 1e-16) - 2.0 * torch.log(T / tau0)


def finite_rollouts(model, stepper: Stepper, m: np.ndarray, x: np.ndarray, v: np.ndarray, steps: int,
                    eps: np.ndarray | None = None, with_end: bool = False, with_jumps: bool = False,
                    factor_tolerance: float | None = None):
    """:func:`rollout` (with the level) and :func:`objective_rows` from the start states (m, x, v); when some
    rollouts blew up, the finite ones are rolled out again, alone (a rollout that blew up poisons the batched
    graph's gradient even when its row is dropped from the loss). Returns (errs, T, tau0, level, rows, keep,
    index) of the last rollout: ``keep`` all True unless nothing was finite, or a second rollout blew up anew;
    ``index`` the positions in (m, x, v) of the start states of ``rows``. ``with_end``: the positions each
    rollout reached (B',N,D), in the graph, follow as an eighth item; ``with_jumps``: each rollout's jumps
    (:func:`rollout`) come next, and with ``factor_tolerance`` its factor jumps last."""
    out = rollout(model, stepper, m, x, v, steps, with_level=True, eps=eps, with_end=with_end, with_jumps=with_jumps,
                  factor_tolerance=factor_tolerance)
    rows, keep = objective_rows(*out[:3])
    index = np.arange(len(m))
    if bool(keep.any()) and not bool(keep.all()):
        sel = keep.cpu().numpy()
        index = index[sel]
        out = rollout(model, stepper, m[sel], x[sel], v[sel], steps, with_level=True,
                      eps=None if eps is None else eps[sel], with_end=with_end, with_jumps=with_jumps,
                      factor_tolerance=factor_tolerance)
        rows, keep = objective_rows(*out[:3])
    return out[:4] + (rows, keep, index[keep.cpu().numpy()]) + out[4:]


def classical_rows(model, stepper: Stepper, m: np.ndarray, x: np.ndarray, v: np.ndarray, steps: int,
                   eps: np.ndarray | None = None, timescales=()) -> torch.Tensor:
    """The passage objective (B,) of the classical rule the bounded factor contains (the model with its last
    layer zeroed: g = eta0 everywhere: :func:`classical_twin`) from the same start states, without grad; +inf where
    it blew up. ``timescales`` (``train.passage_hinge_timescales``): per row, the best (smallest) of that rule's
    objective and those of the classical recursions at eta0 on each of these timescales (:func:`timescale_twin`),
    so that a hinge presses wherever the rule does worse than any of them."""
    rules = [(classical_twin(model, stepper), stepper)]
    rules += [timescale_twin(model, stepper, ts) for ts in timescales]
    best = None
    with torch.no_grad():
        for twin, its_stepper in rules:
            rows = _objective(*rollout(twin, its_stepper, m, x, v, steps, eps=eps))
            rows = torch.where(torch.isfinite(rows), rows, torch.full_like(rows, math.inf))
            best = rows if best is None else torch.minimum(best, rows)
    return best


class ClassicalFactor(torch.nn.Module):
    """g = eta0 whatever the features: the bounded factor's classical rule on a timescale of its own choosing
    (:func:`timescale_twin`), where the model's own zeroed twin would need that timescale's feature count."""

    def __init__(self, eta0: float):
        super().__init__()
        self.eta0 = float(eta0)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.full_like(feats[..., 0], self.eta0)


def timescale_twin(model, stepper: Stepper, timescale: str) -> tuple[torch.nn.Module, Stepper]:
    """(rule, stepper) of the classical recursion at the model's eta0 on ``timescale`` (``features.timescale``'s
    choices), with the stepper's clip, softening and compile setting: made once per stepper and timescale, kept."""
    if timescale not in stepper.timescale_twins:
        stepper.timescale_twins[timescale] = (ClassicalFactor(model.eta0), stepper.on_timescale(timescale))
    return stepper.timescale_twins[timescale]


def classical_twin(model, stepper: Stepper):
    """The classical rule the bounded factor contains: the model with its last layer zeroed (g = eta0 everywhere),
    without grad, made once per stepper and kept (a compiled step is compiled for it once)."""
    if stepper.classical_twin is None:
        twin = copy.deepcopy(model).requires_grad_(False)
        with torch.no_grad():
            twin.net[-1].weight.zero_()
            twin.net[-1].bias.zero_()
        stepper.classical_twin = twin
    return stepper.classical_twin


def reference_ends(stepper: Stepper, m: np.ndarray, x: np.ndarray, v: np.ndarray, T: torch.Tensor, eta: float,
                   max_steps: int, eps: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and velocities (B,N,D) of the start states (m, x, v) at the times T (B,), without grad: the
    reference a rollout's end is held against (``train.passage_phase``). Kick-drift-kick steps of eta * tau, tau
    the plain pairwise :func:`pair_timescale` at the step's start (eta is small: no need for the stepper's costlier
    one), each row's last step cut to land on its T (compiled with the stepper's ``compile_rollout``). Rows that
    have not reached their T after ``max_steps`` steps are NaN."""
    with torch.no_grad():
        prep = stepper.prepare(StateBatch.start(m, x, v, eps=eps))
        soft = stepper.eps if prep.eps is None else prep.eps
        x, v, a, T = prep.x, prep.v, prep.acc0, T.detach().to(prep.x)
        t = torch.zeros_like(T)
        step = _reference_step
        if stepper.compile_rollout:
            if stepper.compiled_reference is None:
                stepper.compiled_reference = CompiledOrEager(_reference_step, "phase references")
            step = stepper.compiled_reference
        for _ in range(max_steps):
            if not bool((t < T).any()):
                break
            x, v, a, t = step(x, v, a, prep.m, soft, T, t, eta)
        short = (t < T).reshape(-1, 1, 1)
        nan = torch.full_like(x, math.nan)
        return torch.where(short, nan, x), torch.where(short, nan, v)


def _reference_step(x, v, a, m, soft, T, t, eta: float):
    """One step of :func:`reference_ends`: eta * :func:`pair_timescale`, or what is left to T where that is less."""
    left = T - t
    want = eta * pair_timescale(x, v, m, soft)
    last = want >= left
    x, v, a = leapfrog(x, v, m, torch.where(last, left, want).clamp(min=0.0), soft, 1, acc0=a)
    return x, v, a, torch.where(last, T, t + want)


def pair_timescale(x: torch.Tensor, v: torch.Tensor, m: torch.Tensor, eps) -> torch.Tensor:
    """min over the pairs of massive bodies of min(sqrt(r^3 / (m_i + m_j)), r / |v_i - v_j|), r the softened
    separation (B,): the free-fall time of the tightest pair, or its crossing time at a fast fly-by."""
    soft = torch.as_tensor(eps, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    r = torch.sqrt(torch.cdist(x, x) ** 2 + soft ** 2)
    w = torch.cdist(v, v)
    mass = m.unsqueeze(-1) + m.unsqueeze(-2)
    pair = (m.unsqueeze(-1) > 0) & (m.unsqueeze(-2) > 0) & ~torch.eye(m.shape[-1], dtype=torch.bool, device=m.device)
    tau = torch.minimum(torch.sqrt(r ** 3 / torch.where(pair, mass, torch.ones_like(mass))), r / (w + 1e-300))
    return torch.where(pair, tau, torch.full_like(tau, math.inf)).flatten(1).min(-1).values


def phase_rows(x_end: torch.Tensor, x_ref: torch.Tensor, v_ref: torch.Tensor, m: torch.Tensor, x0: torch.Tensor,
               T: torch.Tensor, tau0: torch.Tensor) -> torch.Tensor:
    """The phase term of each rollout (B,): log of the mean over the massive bodies of |x_i(T) - x_ref,i(T)| / d_i
    minus 3 log(T / tau0). x_end (B,N,D): where the rollout ended, at T (B,), both in the graph; x_ref, v_ref: the
    reference there (:func:`reference_ends`), moved along v_ref by T's change so that ending earlier or later on the
    same path counts as the error it is; d_i body i's distance to its nearest massive body at the start x0 (the
    error as an angle, so a planet's phase counts beside its star's). A leapfrog path's phase error after n steps
    grows as n dt^3, so to leading order the term does not change when every step is scaled by one factor."""
    target = x_ref + v_ref * (T - T.detach()).reshape(-1, 1, 1)
    massive = m > 0
    d = torch.cdist(x0, x0)
    pair = massive.unsqueeze(-1) & massive.unsqueeze(-2) & ~torch.eye(m.shape[-1], dtype=torch.bool, device=m.device)
    d = torch.where(pair, d, torch.full_like(d, math.inf)).min(-1).values
    rel = torch.linalg.vector_norm(x_end - target, dim=-1) / torch.where(massive, d, torch.ones_like(d))
    mean = (rel * massive).sum(-1) / massive.sum(-1)
    return torch.log(mean + 1e-16) - 3.0 * torch.log(T / tau0)


def apsis_rows(cfg: Config, n: int, family: np.ndarray | None) -> np.ndarray:
    """The rows of n start states (each of ``family``, codes of ``FAMILIES``) that ``train.passage_apsis`` s
    moves to an apsis: the last round(s n) rows, or with ``train.passage_apsis_families`` the last
    round(s n_f) of the n_f rows of those families."""
    names = cfg.train.passage_apsis_families
    rows = np.flatnonzero(np.isin(family, [families.FAMILIES.index(f) for f in names])) if names else np.arange(n)
    k = int(round(cfg.train.passage_apsis * len(rows)))
    return rows[len(rows) - k:]


def family_weights(weights: dict[str, float], family: np.ndarray | None) -> np.ndarray:
    """Each row's weight in the passage objective's mean (``train.passage_family_weights``: a family's weight,
    1 for a family not named) from the rows' ``family`` codes (B,); ValueError when the rows carry no family."""
    if family is None or np.any(np.asarray(family) < 0):
        raise ValueError("train.passage_family_weights: the start states carry no family (samples kept from a "
                         "checkpoint from before Samples.family)")
    table = np.array([weights.get(f, 1.0) for f in families.FAMILIES], dtype=np.float64)
    return table[np.asarray(family)]


def family_mean(rows: torch.Tensor, weights: dict[str, float], family: np.ndarray | None,
                index: np.ndarray | None = None) -> torch.Tensor | None:
    """The passage objective's mean over ``rows`` (the rollouts at positions ``index`` of the start states whose
    families are ``family``; all of them when None): plain without ``weights``, else weighted by
    :func:`family_weights`; None when every row's weight is 0."""
    if not weights:
        return rows.mean()
    w = family_weights(weights, family)
    w = torch.as_tensor(w if index is None else w[index]).to(rows)
    return (w * rows).sum() / w.sum() if bool(w.sum() > 0) else None


def with_apsis_starts(start: tuple, eps: np.ndarray | None, cfg: Config, rng: np.random.Generator,
                      family: np.ndarray | None = None) -> tuple[tuple, np.ndarray | None, np.ndarray | None]:
    """The passage rollouts' start states (m, x, v) (B,N[,D]) and softenings (B,) or None with a share
    s = ``train.passage_apsis`` of them replaced by fresh draws (``rng``) whose Kepler orbits all start at an
    apsis, pericentre or apocentre equally (``system.apsis_starts`` 1; few-body draws are as drawn), padded to
    the batch's bodies. An accepted state almost never sits at an apsis of a near-radial orbit, while
    published initial conditions mostly do; from there the objective's max |E_k - E_0| is the largest error a
    user starting at the apsis sees.

    ``train.passage_apsis_families`` empty: the last round(s B) rows, each a draw of the whole mixture.
    Else, of the rows whose state's ``family`` (B,) (codes of ``FAMILIES``) is one of those families, the last
    round(s n) of them, each a draw of its own family; the other rows keep their accepted states (the
    few-body families' rollouts go on starting from the close encounters their systems run into).

    Returns ((m, x, v), softenings, the rows' families): ``family`` with the codes of the fresh draws, a copy
    (None stays None)."""
    names = cfg.train.passage_apsis_families
    if names and family is None:
        raise ValueError("train.passage_apsis_families: the start states carry no family (samples kept from a "
                         "checkpoint from before Samples.family)")
    moved = apsis_rows(cfg, len(start[0]), family)
    if len(moved) == 0:
        return start, eps, family
    m, x, v = (np.array(a) for a in start)  # the caller's arrays (views of the samples) stay as they are
    at_apsis = dataclasses.replace(cfg.system, apsis_starts=1.0)
    own = None if eps is None else np.array(eps)
    codes = None if family is None else np.array(family)
    for row in moved:
        if names:
            d = families.FAMILY_FUNCTIONS[families.FAMILIES[family[row]]](rng, at_apsis)
        else:
            code, d = families.draw(rng, at_apsis)
            if codes is not None:
                codes[row] = code
        m[row], x[row], v[row] = families.pad(d, m.shape[1])
        if own is not None:
            own[row] = families.softening(d, cfg.system)
    return (m, x, v), own, codes


def passage_gradient(model, samples: Samples, stepper: Stepper, cfg: Config,
                     rng: np.random.Generator) -> tuple[dict | None, dict]:
    """The passage objective's gradient at the model's current weights, over rollouts from
    ``passage_batch`` states drawn from ``samples`` (a collector: its epoch's samples, the broadcast
    weights). Returns ({parameter name: gradient} or None when nothing usable, ``passage/*`` metrics);
    the model's ``.grad`` are left cleared."""
    t = cfg.train
    metrics = {"passage/loss": 0.0, "passage/max_rel_dE": 0.0, "passage/steps_per_tau": 0.0, "passage/skipped": 0,
               "passage/level": 0.0}
    if t.passage_hinge:
        metrics["passage/worse_than_classical"] = 0.0
    if t.passage_phase:
        metrics.update({"passage/phase": 0.0, "passage/phase_error": 0.0})
        if t.passage_phase_hinge:
            metrics["passage/phase_worse"] = 0.0
    n = len(samples)
    if n == 0:
        metrics["passage/skipped"] = 1
        return None, metrics
    idx = rng.choice(n, size=min(t.passage_batch, n), replace=False)
    start = (samples.m[idx], samples.x[idx], samples.v[idx])
    eps = None if samples.eps is None else samples.eps[idx]
    family = None if samples.family is None else samples.family[idx]
    if t.passage_apsis:
        start, eps, family = with_apsis_starts(start, eps, cfg, rng, family)
    factor_tolerance = t.passage_factor_tolerance if t.passage_factor_jumps else None
    errs, T, tau0, level, rows, keep, index, *rest = finite_rollouts(model, stepper, *start, t.passage_steps, eps,
                                                                     with_end=bool(t.passage_phase),
                                                                     with_jumps=bool(t.passage_jumps),
                                                                     factor_tolerance=factor_tolerance)
    end = rest[:1] if t.passage_phase else []
    if not bool(keep.any()):
        metrics["passage/skipped"] = 1
        return None, metrics
    loss = family_mean(rows, t.passage_family_weights, family, index)
    if loss is None:  # only weight-0 families' rollouts were finite: nothing to learn from
        metrics["passage/skipped"] = 1
        return None, metrics
    metrics["passage/loss"] = float(loss.detach())
    if t.passage_hinge:  # each excess over its classical rule (or the best of those) counts (1 + hinge) times
        excess = rows - classical_rows(model, stepper, *start, t.passage_steps, eps,
                                       t.passage_hinge_timescales)[index].to(rows)
        loss = loss + t.passage_hinge * torch.relu(excess).mean()
        metrics["passage/worse_than_classical"] = float((excess.detach() > 0).double().mean())
    if t.passage_phase:  # where the rollout ended against where the system is at that time
        loss = loss + t.passage_phase * phase_term(end[0][keep], T[keep], tau0[keep], start, eps, index, family,
                                                   stepper, cfg, t.passage_steps, metrics, model)
    if t.passage_factor_jumps:  # the factor's jumps beyond the tolerance, summed over each rollout's steps
        fj = rest.pop()[keep]
        loss = loss + t.passage_factor_jumps * fj.mean()
        metrics["passage/factor_jumps"] = float(fj.detach().mean())
    if t.passage_jumps:  # the step's jumps against its timescale between consecutive steps
        jumps = rest[-1][keep]
        loss = loss + t.passage_jumps * jumps.mean()
        metrics["passage/jumps"] = float(jumps.detach().mean())
    metrics["passage/level"] = float(level[keep].detach().mean())
    if t.passage_anchor:  # hold the rule's overall level at the classical eta it contains: only the shape moves
        off = level[keep] - math.log(cfg.model.init_factor)
        loss = loss + t.passage_anchor * ((off ** 2).mean() if t.passage_anchor_rows else off.mean() ** 2)
    metrics["passage/max_rel_dE"] = float(errs.max(-1).values[keep].detach().median())
    metrics["passage/steps_per_tau"] = float((t.passage_steps * tau0[keep] / T[keep].detach()).mean())
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {name: p.grad.detach().cpu().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    if not grads or not all(bool(torch.isfinite(g).all()) for g in grads.values()):
        metrics["passage/skipped"] = 1
        return None, metrics
    return grads, metrics


def phase_term(x_end: torch.Tensor, T: torch.Tensor, tau0: torch.Tensor, start: tuple, eps: np.ndarray | None,
               index: np.ndarray, family: np.ndarray | None, stepper: Stepper, cfg: Config, steps: int,
               metrics: dict, model=None) -> torch.Tensor | float:
    """``train.passage_phase``'s term (before its weight): the family-weighted mean of :func:`phase_rows` over the
    kept rollouts of ``steps`` steps (ends x_end at times T, start states ``start``[index]) against
    :func:`reference_ends` at init_factor / passage_phase_refine times the timescale, each allowed 1.5 x refine x
    max_modulation as many steps; 0 when no reference reached its time. With ``train.passage_phase_hinge`` each
    row is max(0, row - the classical rule's row from the same start) (``model``: the rule, whose twin rolls out).
    Sets ``passage/phase`` and ``passage/phase_error`` (the median relative position error) in ``metrics``."""
    t = cfg.train
    m, x0, v0 = (s[index] for s in start)
    own = None if eps is None else eps[index]
    rows = _phase_rows_from(x_end, T, tau0, (m, x0, v0), own, stepper, cfg, steps)
    ok = torch.isfinite(rows)
    if not bool(ok.any()):
        return 0.0
    sel = ok.cpu().numpy()
    metrics["passage/phase_error"] = float(torch.exp(rows[ok].detach() + 3.0 * torch.log(T[ok] / tau0[ok]).detach())
                                           .median())
    if t.passage_phase_hinge:  # only what the rule's phase error exceeds its classical rule's counts
        with torch.no_grad():
            _, Tc, tau0c, xc = rollout(classical_twin(model, stepper), stepper, m, x0, v0, steps, eps=own,
                                       with_end=True)
            classical = _phase_rows_from(xc, Tc, tau0c, (m, x0, v0), own, stepper, cfg, steps)
        classical = torch.where(torch.isfinite(classical), classical, torch.full_like(classical, math.inf))
        excess = rows[ok] - classical[ok].to(rows)
        metrics["passage/phase_worse"] = float((excess.detach() > 0).double().mean())
        rows = torch.relu(excess)
    else:
        rows = rows[ok]
    term = family_mean(rows, t.passage_family_weights, family, index[sel])
    if term is None:
        return 0.0
    metrics["passage/phase"] = float(term.detach())
    return term


def _phase_rows_from(x_end: torch.Tensor, T: torch.Tensor, tau0: torch.Tensor, start: tuple, eps: np.ndarray | None,
                     stepper: Stepper, cfg: Config, steps: int) -> torch.Tensor:
    """:func:`phase_rows` of rollouts of ``steps`` steps from ``start`` (m, x, v) that ended at x_end at times T,
    against :func:`reference_ends` at init_factor / passage_phase_refine (NaN where it did not reach T)."""
    t, model_cfg = cfg.train, cfg.model
    m, x0, v0 = start
    cap = int(math.ceil(steps * t.passage_phase_refine * (model_cfg.max_modulation or 1.0) * 1.5))
    x_ref, v_ref = reference_ends(stepper, m, x0, v0, T, model_cfg.init_factor / t.passage_phase_refine, cap, eps)
    mt, xt = (torch.as_tensor(a, dtype=x_end.dtype, device=x_end.device) for a in (m, x0))
    return phase_rows(x_end, x_ref, v_ref, mt, xt, T, tau0)


def apply_passage(model, optimizer, gradients: list[dict]) -> bool:
    """One optimiser step on the mean of the collectors' passage gradients (in collector order).
    Returns whether it stepped (nothing to apply, or a non-finite mean: no step)."""
    gradients = [g for g in gradients if g]
    if not gradients:
        return False
    optimizer.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        parts = [g[name] for g in gradients if name in g]
        if parts:
            p.grad = (torch.stack(parts).sum(0) / len(parts)).to(device=p.device, dtype=p.dtype)
    return optimizer_step(model, optimizer)
