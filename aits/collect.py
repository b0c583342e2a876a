"""The collect phase (the seed's Part 1) on B systems at once: attempt a step for every system,
accept those that conserve energy, retrain the rejected ones together on their same states until
they pass.

B = 1 is the seed's loop exactly. For B > 1 one retrain step serves the whole rejected subset: the
optimiser steps on the *mean* band loss over the rejected systems (the seed steps on each system's
own loss, one system at a time), so a slot costs max(retrains) batched steps instead of
sum(retrains) single ones, and each system sees weights moved by its neighbours' losses too.
``part1/retrain_steps`` and ``part1/mean_rejected_per_retrain`` show the sharing.
"""
from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np
import torch

from .config import Config
from .metrics import declare, ratio
from .samples import Samples
from .stepper import Prepared, Stepper, band_loss, optimizer_step
from .systems import Systems

METRICS = declare({
    "part1/systems": "sum",                    # systems stepped (B per collector)
    "part1/accepted": "sum",                   # accepted system-steps
    "part1/samples": "sum",                    # of which shipped (past the history warm-up)
    "part1/warmup_discarded": "sum",
    "part1/mean_retrains": "mean",             # per system and slot, as in the seed
    "part1/max_retrains": "max",
    "part1/retrain_limit_hits": "sum",         # system-slots lost at max_retrain_steps
    "part1/nonfinite": "sum",                  # system-slots ended by a non-finite attempt or gradient
    "part1/orbit_restarts": "sum",
    "part1/acceptance_rate": "mean",           # accepted / (accepted + per-system retrains)
    "part1/mean_dt": "mean",
    "part1/mean_rel_dE": "mean",
    "part1/retrain_steps": "sum",              # shared optimiser steps on rejected subsets
    "part1/mean_rejected_per_retrain": "mean",  # systems served by one retrain step (1 at B = 1)
    "part1/attempt_calls": "sum",              # batched attempts (model forward + leapfrog + energy)
    # median accepted dt over the classical timescale min_i sqrt(r_i,nn / |a_i|) of its state: the
    # classical rule's eta; a collapsing policy shows here first (driver warns below a floor)
    "part1/dt_over_classical": "median",
    "part1/collapsed": "sum",                  # system-slots given up: attempted dt < COLLAPSE_RATIO * tau
    "part1/stalled": "sum",                    # system-slots given up: no progress in STALL_WINDOW retrains
})


# A rejected attempt whose dt is below this fraction of the classical timescale is not retrained
# further: the policy has collapsed on that state (e.g. an unsoftened close encounter) and more
# steps there only push it further down; the slot is lost and counted in part1/collapsed.
COLLAPSE_RATIO = 1e-6
# Rejected systems whose mean band loss improved by less than STALL_GAIN over the last STALL_WINDOW
# retrain steps are given up for the slot (part1/stalled): gradient descent sits at a stationary
# point of rel_dE(dt) (it is not monotone once dt exceeds the system's timescale) and, with
# unlimited retrains, would loop for ever.
STALL_WINDOW = 500
STALL_GAIN = 1e-3


@dataclass
class Slot:
    """Outcome of one step slot for B systems (numpy, indexed by system)."""

    accepted: np.ndarray   # (B,) bool
    stuck: np.ndarray      # (B,) bool: non-finite attempt or no usable gradient
    retrains: np.ndarray   # (B,) int: retrain steps this system took part in
    dt: np.ndarray         # (B,) accepted dt (0 where not accepted)
    tau: np.ndarray        # (B,) classical timescale of the pre-step state
    rel_dE: np.ndarray     # (B,)
    x: np.ndarray          # (B,N,D) accepted state (0 where not accepted)
    v: np.ndarray
    collapsed: np.ndarray = None  # (B,) bool: given up below COLLAPSE_RATIO * tau
    stalled: int = 0  # systems given up for lack of progress
    retrain_steps: int = 0  # shared optimiser steps on rejected subsets
    rejected_total: int = 0  # sum of the subsets' sizes over those steps
    attempts: int = 0

    def __post_init__(self):
        if self.collapsed is None:
            self.collapsed = np.zeros(len(self.accepted), bool)

    @property
    def lost(self) -> np.ndarray:
        return ~self.accepted & ~self.stuck


def retrain_slot(model, optimizer, stepper: Stepper, prep: Prepared, cfg: Config) -> Slot:
    """Attempt all B prepared states; while some are rejected, one optimiser step on the mean band loss
    over the rejected (finite) subset, then attempt that subset again.

    A system leaves the loop accepted, stuck (its attempt is non-finite, or the step's loss or gradient
    is, so there is nothing to learn from) or lost (``max_retrain_steps`` reached). With
    ``train.band_on_accept`` systems accepted below ``E_lower`` add their lower-edge band term to the
    same step's mean (at B = 1: the seed's extra step after an acceptance).
    """
    t = cfg.train
    B = prep.x.shape[0]
    x_shape = tuple(prep.x.shape[1:])
    slot = Slot(np.zeros(B, bool), np.zeros(B, bool), np.zeros(B, np.int64), np.zeros(B),
                prep.tau.detach().double().cpu().numpy().copy(), np.zeros(B), np.zeros((B, *x_shape)),
                np.zeros((B, *x_shape)))
    pending, sub, rounds = np.arange(B), prep, 0
    window_loss = math.inf  # loss at the start of the current stall window
    while True:
        att = stepper.attempt(model, sub)
        slot.attempts += 1
        r = att.rel_dE.detach()
        passed_t = att.passed(t.energy_threshold)
        passed, finite = passed_t.cpu().numpy(), torch.isfinite(r).cpu().numpy()
        slot.retrains[pending] = rounds
        if passed.any():
            acc = pending[passed]
            slot.accepted[acc] = True
            slot.dt[acc] = att.dt.detach()[passed_t].double().cpu().numpy()
            slot.rel_dE[acc] = r[passed_t].double().cpu().numpy()
            slot.x[acc] = att.x.detach()[passed_t].double().cpu().numpy()
            slot.v[acc] = att.v.detach()[passed_t].double().cpu().numpy()
        slot.stuck[pending[~finite]] = True
        rejected = ~passed & finite
        tiny = rejected & (att.dt.detach() < COLLAPSE_RATIO * sub.tau).cpu().numpy()
        if tiny.any():
            slot.collapsed[pending[tiny]] = True
            rejected &= ~tiny
        if t.max_retrain_steps and rounds >= t.max_retrain_steps:
            rejected[:] = False  # the rest are lost for this slot
        low = passed & (r.cpu().numpy() < t.E_lower) if t.band_on_accept else np.zeros_like(passed)
        if not rejected.any() and not low.any():
            return slot
        loss = _slot_loss(att.rel_dE, rejected, low, t)
        if rejected.any() and rounds and rounds % STALL_WINDOW == 0:
            now = float(loss.detach())
            if now > (1 - STALL_GAIN) * window_loss:
                slot.stalled += int(rejected.sum())
                return slot  # the rejected ones lose this slot
            window_loss = now
        stepped = optimizer_step(model, optimizer, loss)
        if not rejected.any():
            return slot  # a lower-edge step only: every system is done
        if not stepped:
            slot.stuck[pending[rejected]] = True
            return slot
        rounds += 1
        slot.retrain_steps += 1
        slot.rejected_total += int(rejected.sum())
        pending = pending[rejected]
        sub = sub if rejected.all() else sub.take(torch.as_tensor(np.nonzero(rejected)[0], device=prep.x.device))


def _slot_loss(rel_dE: torch.Tensor, rejected: np.ndarray, low: np.ndarray, t) -> torch.Tensor:
    """Mean over the rejected systems' band loss and the accepted-low systems' lower-edge term."""
    if rejected.all():
        return band_loss(rel_dE, t.E_lower, t.E_upper).mean()
    if low.all():
        return band_loss(rel_dE, t.E_lower, t.E_upper, lower_only=True).mean()
    dev = rel_dE.device
    parts = []
    if rejected.any():
        parts.append(band_loss(rel_dE[torch.as_tensor(rejected, device=dev)], t.E_lower, t.E_upper))
    if low.any():
        parts.append(band_loss(rel_dE[torch.as_tensor(low, device=dev)], t.E_lower, t.E_upper, lower_only=True))
    return torch.cat(parts).mean()


def retrain_until_accepted(model, optimizer, stepper: Stepper, prep: Prepared, cfg: Config):
    """The seed's loop for one prepared state (B = 1): returns (slot, accepted, retrains, stuck)."""
    slot = retrain_slot(model, optimizer, stepper, prep, cfg)
    return slot, bool(slot.accepted.all()), int(slot.retrains.max(initial=0)), bool(slot.stuck.any())


def collect_trajectory(model, optimizer, systems: Systems, stepper: Stepper, cfg: Config) -> tuple[Samples, dict]:
    """The collect phase (the seed's Part 1) on B systems: ``steps_per_epoch`` slots, each
    attempting every system at once.

    Accepted systems advance (and restart after ``periods_per_orbit`` periods or a non-finite state);
    a system that hits ``max_retrain_steps`` loses the slot and stays where it is; a stuck one restarts.
    States reached after fewer than ``history_len`` steps have no full history and are not shipped.
    Returns (samples in slot order, system order within a slot; ``part1/*`` metrics, the seed's names).
    """
    t, K, B = cfg.train, cfg.features.history_len, len(systems)
    out = Samples.empty(K, systems.N, systems.D, capacity=B * t.steps_per_epoch)
    n = accepted = warmup = limit_hits = nonfinite = restarts = retrain_steps = rejected_total = attempts = 0
    retrains_sum, retrains_max, dt_sum, err_sum = 0, 0, 0.0, 0.0
    dt_over_tau, collapsed, stalled = [], 0, 0
    for _ in range(t.steps_per_epoch):
        slot = retrain_slot(model, optimizer, stepper, stepper.prepare(systems.batch()), cfg)
        retrains_sum += int(slot.retrains.sum())
        retrains_max = max(retrains_max, int(slot.retrains.max(initial=0)))
        retrain_steps, rejected_total, attempts = (retrain_steps + slot.retrain_steps,
                                                   rejected_total + slot.rejected_total, attempts + slot.attempts)
        limit_hits += int((slot.lost & ~slot.collapsed).sum()) - slot.stalled
        collapsed += int(slot.collapsed.sum())
        stalled += slot.stalled
        stuck = np.nonzero(slot.stuck)[0]
        nonfinite += len(stuck)
        systems.restart(stuck)
        restarts += len(stuck)
        acc = np.nonzero(slot.accepted)[0]
        accepted += len(acc)
        dt_sum += float(slot.dt[acc].sum())
        dt_over_tau.append(slot.dt[acc] / slot.tau[acc])
        err_sum += float(slot.rel_dE[acc].sum())
        ship = acc[systems.steps[acc] >= K]
        warmup += len(acc) - len(ship)
        n = systems.write_samples(out, n, ship, slot.dt[ship], slot.rel_dE[ship], slot.retrains[ship])
        restarts += len(systems.advance(acc, slot.x[acc], slot.v[acc], slot.dt[acc]))
    slots = B * t.steps_per_epoch
    metrics = {
        "part1/systems": B,
        "part1/accepted": accepted,
        "part1/samples": n,
        "part1/warmup_discarded": warmup,
        "part1/mean_retrains": ratio(retrains_sum, slots),
        "part1/max_retrains": retrains_max,
        "part1/retrain_limit_hits": limit_hits,
        "part1/nonfinite": nonfinite,
        "part1/orbit_restarts": restarts,
        "part1/acceptance_rate": ratio(accepted, accepted + retrains_sum),
        "part1/mean_dt": ratio(dt_sum, accepted),
        "part1/mean_rel_dE": ratio(err_sum, accepted),
        "part1/retrain_steps": retrain_steps,
        "part1/mean_rejected_per_retrain": ratio(rejected_total, retrain_steps),
        "part1/attempt_calls": attempts,
        "part1/dt_over_classical": float(np.median(np.concatenate(dt_over_tau))) if accepted else 0.0,
        "part1/collapsed": collapsed,
        "part1/stalled": stalled,
    }
    return out.take(slice(0, n)), metrics
