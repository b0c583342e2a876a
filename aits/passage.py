"""The passage objective: what a step rule costs over many consecutive steps, not one.

The band loss judges one step at a time: it equalises each step's energy change along an orbit.
A time-symmetric integrator's energy error, though, is not a sum of step errors: it swings up and
back through each pericentre passage, and its size over an orbit is set by how the steps are
spread along it. The passage objective measures that directly. From ``passage_batch`` of the
learner's samples it rolls out ``passage_steps`` steps of the rule as trained (the same
``Stepper.attempt``, differentiable through every step) and minimises, per system,

    log max_k |E_k - E_0| / |E_0|  -  2 log T,      T = sum_k n_steps * dt_k (time covered),

the log of (largest energy error) x (steps per unit time)^2: leapfrog's error falls as the
square of the step count, so the objective does not change when every dt is scaled by one
factor. It moves how the steps are spread along the trajectory, and leaves their overall size to
the band (docs/DESIGN.md §4.4b). ``passage_steps`` should cover at least one pericentre passage
of the most eccentric training orbit at the trained step size.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import Config
from .metrics import declare
from .samples import Samples
from .stepper import Stepper, optimizer_step

declare({"passage/loss": "mean", "passage/max_rel_dE": "median", "passage/steps_per_tau": "mean",
         "passage/skipped": "sum"})


def rollout(model, stepper: Stepper, m: np.ndarray, x: np.ndarray, v: np.ndarray, steps: int):
    """``steps`` model-chosen steps from (m, x, v) (B,N[,D]), kept in the graph: returns (rel_dE (B, steps)
    against the start's energy, T (B,) time covered, tau0 (B,) the start's classical timescale)."""
    prep = stepper.prepare(m, x, v, np.zeros(len(m)), None, None, None)
    m, e0, tau0, errs, T = prep.m, prep.e0, prep.tau, [], 0.0
    for _ in range(steps):
        att = stepper.attempt(model, prep)
        errs.append(((att.e1 - e0) / e0).abs())
        T = T + att.dt * (1 if stepper.symmetric else stepper.n_steps)
        prep = stepper.prepare_live(m, att)
    return torch.stack(errs, -1), T, tau0


def passage(model, optimizer, samples: Samples, stepper: Stepper, cfg: Config, rng: np.random.Generator) -> dict:
    """``train.passage_iterations`` optimiser steps on the passage objective, each over a fresh draw of
    ``passage_batch`` start states from ``samples``. Returns ``passage/*`` metrics ({} when off)."""
    t = cfg.train
    if not t.passage_iterations:
        return {}
    metrics = {"passage/loss": 0.0, "passage/max_rel_dE": 0.0, "passage/steps_per_tau": 0.0, "passage/skipped": 0}
    n = len(samples)
    if n == 0:
        metrics["passage/skipped"] = 1
        return metrics
    bs = min(t.passage_batch, n)
    for _ in range(t.passage_iterations):
        idx = rng.choice(n, size=bs, replace=False)
        errs, T, tau0 = rollout(model, stepper, samples.m[idx], samples.x[idx], samples.v[idx], t.passage_steps)
        worst = errs.max(-1).values
        keep = torch.isfinite(worst) & torch.isfinite(T) & (T > 0)
        if not bool(keep.any()):
            metrics["passage/skipped"] += 1
            continue
        loss = (torch.log(worst[keep] + 1e-16) - 2.0 * torch.log(T[keep] / tau0[keep])).mean()
        metrics["passage/loss"] = float(loss.detach())
        metrics["passage/max_rel_dE"] = float(worst[keep].detach().median())
        metrics["passage/steps_per_tau"] = float((t.passage_steps * tau0[keep] / T[keep].detach()).mean())
        if not optimizer_step(model, optimizer, loss):
            metrics["passage/skipped"] += 1
    return metrics
