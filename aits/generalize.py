"""The generalize phase (the seed's Part 2): minibatches of accepted samples until one all passes."""
from __future__ import annotations

import numpy as np
import torch

from .config import Config
from .metrics import declare
from .samples import Samples
from .stepper import Stepper, band_loss, optimizer_step


declare({"part2/n_samples": "mean", "part2/iterations": "mean", "part2/converged": "mean",
         "part2/skipped": "mean", "part2/loss": "mean", "part2/pass_rate_first": "mean",
         "part2/pass_rate_last": "mean", "part2/nonfinite_skips": "sum"})


def generalize_on_trajectory(model, optimizer, samples: Samples, stepper: Stepper, cfg: Config,
                             rng: np.random.Generator) -> dict:
    """The generalize phase (the seed's Part 2): minibatches of accepted samples, each evaluated as
    one batched attempt, one optimiser step on the failing samples' mean loss until a minibatch all
    passes.

    With ``train.band_on_accept`` the step's loss also holds the lower band edge of the
    passing samples (mean over the whole minibatch), so needlessly small steps are pushed up
    while generalize runs; the stopping rule stays the seed's. Returns ``part2/*`` metrics (the
    seed's names).
    """
    t = cfg.train
    n = len(samples)
    metrics = {"part2/n_samples": n, "part2/iterations": 0, "part2/converged": 1.0, "part2/skipped": 0.0,
               "part2/loss": 0.0, "part2/pass_rate_first": 1.0, "part2/pass_rate_last": 1.0,
               "part2/nonfinite_skips": 0}
    if n < max(t.generalize_min_samples, 1):
        metrics["part2/skipped"] = 1.0
        return metrics
    prep_all = stepper.prepare(samples)  # features do not depend on the model: build once
    bs = min(t.generalize_batch_size, n)
    converged = False
    for it in range(t.generalize_steps):
        idx = torch.as_tensor(rng.choice(n, size=bs, replace=False), device=stepper.device)
        att = stepper.attempt(model, prep_all.take(idx))
        passed = att.passed(t.energy_threshold)
        rate = float(passed.double().mean())
        if it == 0:
            metrics["part2/pass_rate_first"] = rate
        metrics["part2/pass_rate_last"] = rate
        if bool(passed.all()):
            converged = True
            break
        per = band_loss(att.rel_dE, t.E_lower, t.E_upper)
        if t.band_on_accept:  # passing samples below E_lower add their lower-edge term
            per = torch.where(passed, band_loss(att.rel_dE, t.E_lower, t.E_upper, lower_only=True), per)
            loss = per.mean()
        else:
            loss = per[~passed].mean()
        metrics["part2/loss"] = float(loss.detach())
        metrics["part2/iterations"] = it + 1
        if not optimizer_step(model, optimizer, loss):
            metrics["part2/nonfinite_skips"] += 1
    metrics["part2/converged"] = float(converged)
    return metrics
