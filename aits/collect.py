"""The collect phase (the seed's Part 1): attempt a step, accept it when energy is conserved,
otherwise retrain on the same state until it passes."""
from __future__ import annotations

import numpy as np
import torch

from .config import Config
from .metrics import declare, mean, ratio
from .samples import Samples
from .stepper import Prepared, Stepper, band_loss, optimizer_step
from .systems import Orbit


METRICS = declare({
    "collect/accepted": "sum", "collect/samples": "sum", "collect/warmup_discarded": "sum",
    "collect/mean_retrains": "mean", "collect/max_retrains": "max", "collect/retrain_limit_hits": "sum",
    "collect/nonfinite": "sum", "collect/orbit_restarts": "sum", "collect/acceptance_rate": "mean",
    "collect/mean_dt": "mean", "collect/mean_rel_dE": "mean",
})


def retrain_until_accepted(model, optimizer, stepper: Stepper, prep: Prepared, cfg: Config):
    """Attempt; while rejected, one optimiser step on the band loss and attempt again.

    Returns (attempt, accepted, retrains, stuck) where ``stuck`` means the loop ended
    without acceptance (``max_retrain_steps`` reached, or a non-finite attempt that
    yields no usable gradient).
    """
    t = cfg.train
    retrains = 0
    while True:
        att = stepper.attempt(model, prep)
        if bool(att.passed(t.energy_threshold).all()):
            return att, True, retrains, False
        if not bool(torch.isfinite(att.rel_dE.detach()).all()):
            return att, False, retrains, True  # no gradient to learn from
        if t.max_retrain_steps and retrains >= t.max_retrain_steps:
            return att, False, retrains, False
        loss = band_loss(att.rel_dE, t.E_lower, t.E_upper).mean()
        if not optimizer_step(model, optimizer, loss):
            return att, False, retrains, True
        retrains += 1


def collect(model, optimizer, orbit: Orbit, stepper: Stepper, cfg: Config) -> tuple[Samples, dict]:
    """Part 1 on one orbit: ``steps_per_epoch`` step slots, each retrained until accepted.

    A slot whose loop hits ``max_retrain_steps`` is lost (the orbit stays where it is);
    a non-finite step restarts the orbit. Returns (samples, metrics).
    """
    t = cfg.train
    K = cfg.features.history_len
    records, retrain_counts, dts, errs = [], [], [], []
    limit_hits = nonfinite = restarts = warmup = 0
    for _ in range(t.steps_per_epoch):
        batch = orbit.batch()
        prep = stepper.prepare(*batch)
        att, accepted, retrains, stuck = retrain_until_accepted(model, optimizer, stepper, prep, cfg)
        retrain_counts.append(retrains)
        if not accepted:
            if stuck:
                nonfinite += 1
                orbit.restart()
                restarts += 1
            else:
                limit_hits += 1
            continue
        dt = float(att.dt.detach()[0])
        err = float(att.rel_dE.detach()[0])
        if t.band_on_accept and err < t.E_lower:
            optimizer_step(model, optimizer, band_loss(att.rel_dE, t.E_lower, t.E_upper, lower_only=True).mean())
        dts.append(dt)
        errs.append(err)
        if orbit.steps >= K:
            records.append(orbit.sample_record(batch, dt, err, retrains))
        else:
            warmup += 1
        x1 = att.x.detach()[0].to(torch.float64).cpu().numpy()
        v1 = att.v.detach()[0].to(torch.float64).cpu().numpy()
        restarts += orbit.advance(x1, v1, dt)
    samples = Samples.from_records(records, K, cfg.system.num_particles, cfg.system.dim)
    metrics = {
        "collect/accepted": len(dts),
        "collect/samples": len(samples),
        "collect/warmup_discarded": warmup,
        "collect/mean_retrains": mean(retrain_counts),
        "collect/max_retrains": int(max(retrain_counts, default=0)),
        "collect/retrain_limit_hits": limit_hits,
        "collect/nonfinite": nonfinite,
        "collect/orbit_restarts": restarts,
        "collect/acceptance_rate": ratio(len(dts), len(dts) + sum(retrain_counts)),
        "collect/mean_dt": mean(dts),
        "collect/mean_rel_dE": mean(errs),
    }
    return samples, metrics
