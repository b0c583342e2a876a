"""The generalize phase (the seed's Part 2): minibatches of accepted samples until one all passes."""
from __future__ import annotations

import numpy as np
import torch

from .config import Config
from .metrics import declare
from .samples import Samples
from .stepper import Stepper, band_loss, optimizer_step


declare({"generalize/n_samples": "mean", "generalize/iterations": "mean", "generalize/converged": "mean",
         "generalize/skipped": "mean", "generalize/loss": "mean", "generalize/pass_rate_first": "mean",
         "generalize/pass_rate_last": "mean", "generalize/nonfinite_skips": "sum"})


def generalize(model, optimizer, samples: Samples, stepper: Stepper, cfg: Config,
               rng: np.random.Generator) -> dict:
    """Generalize: minibatches of accepted samples, each evaluated as one batched attempt,
    one optimiser step on the failing samples' mean loss until a minibatch all passes.

    With ``train.band_on_accept`` the step's loss also holds the lower band edge of the
    passing samples (mean over the whole minibatch), so needlessly small steps are pushed up
    while generalize runs; the stopping rule stays the seed's.
    """
    t = cfg.train
    n = len(samples)
    metrics = {"generalize/n_samples": n, "generalize/iterations": 0, "generalize/converged": 1.0, "generalize/skipped": 0.0,
               "generalize/loss": 0.0, "generalize/pass_rate_first": 1.0, "generalize/pass_rate_last": 1.0,
               "generalize/nonfinite_skips": 0}
    if n < max(t.generalize_min_samples, 1):
        metrics["generalize/skipped"] = 1.0
        return metrics
    prep_all = stepper.prepare_samples(samples)  # features do not depend on the model: build once
    bs = min(t.generalize_batch_size, n)
    converged = False
    for it in range(t.generalize_steps):
        idx = torch.as_tensor(rng.choice(n, size=bs, replace=False), device=stepper.device)
        att = stepper.attempt(model, prep_all.take(idx))
        passed = att.passed(t.energy_threshold)
        rate = float(passed.double().mean())
        if it == 0:
            metrics["generalize/pass_rate_first"] = rate
        metrics["generalize/pass_rate_last"] = rate
        if bool(passed.all()):
            converged = True
            break
        per = band_loss(att.rel_dE, t.E_lower, t.E_upper)
        if t.band_on_accept:  # passing samples below E_lower add their lower-edge term
            per = torch.where(passed, band_loss(att.rel_dE, t.E_lower, t.E_upper, lower_only=True), per)
            loss = per.mean()
        else:
            loss = per[~passed].mean()
        metrics["generalize/loss"] = float(loss.detach())
        metrics["generalize/iterations"] = it + 1
        if not optimizer_step(model, optimizer, loss):
            metrics["generalize/nonfinite_skips"] += 1
    metrics["generalize/converged"] = float(converged)
    return metrics
