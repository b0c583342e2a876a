"""One network for many per-system oracles (issue 19, G4: where does the learned rule lose to the oracle?).

An oracle (:mod:`aits.oracle`) is a linear member of the learned family fitted to one system alone:
g = eta0 * M^tanh(w . phi), phi the system's features standardised along its own classical run. Its
*factor field* is tanh(w . phi) on the states of that run. Distillation fits the learned rule's network
(``z`` of g = eta0 * M^tanh(z(features)), the raw scale-free features as the rule sees them) to the union of
several systems' fields, each system weighted equally, by least squares on tanh(z) - tanh(w . phi):

- on the oracles of a board's own systems it asks whether *one* network can hold every system's oracle at
  once (capacity and features), a diagnostic that trains on the test systems;
- on oracles of systems drawn from the training mixture it is a training method whose result is judged
  on the practitioner suite, systems it never saw.

No Ray, numpy step rules for the fits (:mod:`aits.oracle`) and torch for the network.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch

from . import integrators as I
from . import oracle as O
from .families import FAMILIES, draw, softening
from .ranges import FeatureRanges


def oracle_field(sys, keep, w, fit_duration: float, eta0: float, modulation: float, clip: float,
                 timescale: str) -> tuple[np.ndarray, np.ndarray]:
    """The factor field of a fitted oracle: the scale-free features (S, F) of the classical run over the fit
    duration (at most 400 states, as :func:`aits.oracle.standardisation`) and tanh(w . phi) there (S,)."""
    _, feats, kept, mean, std = O.standardisation(replace(sys, duration=fit_duration), eta0, modulation, clip,
                                                  O.FIT_EVALS, timescale)
    if kept.tolist() != list(keep):
        raise ValueError(f"distill: {sys.name}: the fit run's varying features {kept.tolist()} are not the "
                         f"oracle's {list(keep)} (another eta0, clip or timescale?)")
    z = ((feats[:, kept] - mean) / std) @ np.asarray(w, dtype=float) if len(kept) else np.zeros(len(feats))
    return feats, np.tanh(z)


def member_field(sys, keep, w, mean, std, eta0: float, modulation: float, clip: float,
                 timescale: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The factor field of a member fitted to many systems (:func:`aits.oracle.fit_pooled`, its own
    standardisation ``mean``, ``std`` of the features ``keep``) on one system: the features (S, F) of the
    classical run over the system's :func:`aits.oracle.leading_part` (at most 400 states) and tanh(w . phi)
    there (S,); None when that run does not end ok."""
    part = O.leading_part(sys, eta0, modulation, clip, timescale)
    if part is None:
        return None
    _, feats, _, _, _ = O.standardisation(part, eta0, modulation, clip, O.FIT_EVALS, timescale)
    keep = np.asarray(keep, dtype=int)
    z = ((feats[:, keep] - np.asarray(mean)) / np.asarray(std)) @ np.asarray(w, dtype=float) if len(keep) else \
        np.zeros(len(feats))
    return feats, np.tanh(z)


def mixture_systems(system_cfg, seed: int, count: int, periods: float) -> list:
    """``count`` systems drawn from the mixture of ``system_cfg`` (``system.mixture``), each run for
    ``periods`` of its restart unit (the inner period; crossing times for few-body systems)."""
    from .scoreboard import System

    if not getattr(system_cfg, "mixture", None):
        raise ValueError("distill: the config has no system.mixture to draw systems from")
    rng = np.random.default_rng([seed, 19])
    out = []
    for k in range(count):
        code, d = draw(rng, system_cfg)
        fam = FAMILIES[code]
        eps = float(softening(d, system_cfg))  # the family's own (soft_few_body), else system.softening, as in training
        out.append(System(f"{fam}_{seed}_{k}", "random", fam, {"e": float(d.e)}, d.m, d.x, d.v,
                          periods * d.period, eps))
    return out


def fit_system(sys, eta0: float, modulation: float, clip: float, timescale: str, max_runs: int = 60) -> dict:
    """A system's oracle (fitted over at most :data:`aits.oracle.FIT_EVALS` evaluations of the leading part
    of its duration) and its factor field. Returns a record with ``features`` and ``targets`` (lists),
    ``J_ratio`` (fit J over the classical rule's, <= 1) and ``status`` (``ok``, or why it was left out)."""
    from .scoreboard import run_method

    start = time.perf_counter()
    probe = O.LinearFactorStep([], [], [], [], eta0, modulation, sys.eps, timescale)
    ref = run_method(I.RecursivePolicy(probe, "oracle", clip), sys, 1, 50 * O.FIT_EVALS, record=False)
    rec = {"name": sys.name, "family": sys.family, "N": int(len(sys.m)), "status": ref.metrics["status"]}
    if ref.metrics["status"] != "ok":
        return rec
    fit, _ = O.fit_oracle(sys, eta0, modulation, clip, target_evals=ref.metrics["force_evals"], max_runs=max_runs,
                          timescale=timescale)
    feats, targets = oracle_field(sys, fit.keep, fit.w, fit.fit_duration, eta0, modulation, clip, timescale)
    ratio = fit.j_oracle / fit.j_classical if math.isfinite(fit.j_classical) and fit.j_classical > 0 else None
    rec.update(evals=int(ref.metrics["force_evals"]), keep=list(fit.keep), w=list(fit.w),
               fit_duration=fit.fit_duration, J_ratio=ratio, features=feats.tolist(), targets=targets.tolist(),
               seconds=time.perf_counter() - start)
    return rec


def distill(model, fields: list[tuple[np.ndarray, np.ndarray]], iters: int = 4000, lr: float = 3e-3,
            lr_final: float = 1e-5) -> dict:
    """Fit ``model`` (a bounded-factor :class:`aits.model.DtModel`) in place so that tanh(z(features)) matches
    each field's targets, every field weighted equally (full batch, Adam, lr from ``lr`` down a half cosine
    to ``lr_final``). ``fields``: (features (S_i, F), targets (S_i,)) per system.

    Returns {"loss": the weighted mean square left, "target_var": the targets' weighted variance,
    "r2": per field 1 - mean square / variance (None for a constant field)}.
    """
    if getattr(model, "max_modulation", None) is None:
        raise ValueError("distill: the model has no bounded factor (model.max_modulation)")
    if not fields:
        raise ValueError("distill: no oracle fields to fit")
    p = next(model.parameters())
    x = torch.as_tensor(np.concatenate([f for f, _ in fields]), dtype=p.dtype, device=p.device)
    t = torch.as_tensor(np.concatenate([y for _, y in fields]), dtype=p.dtype, device=p.device)
    groups = np.concatenate([np.full(len(y), i) for i, (_, y) in enumerate(fields)])
    wts = torch.as_tensor(1.0 / np.bincount(groups)[groups] / len(fields), dtype=p.dtype, device=p.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = lr_final + 0.5 * (lr - lr_final) * (1.0 + math.cos(math.pi * it / max(1, iters - 1)))
        loss = (wts * (torch.tanh(model.net(x)[:, 0]) - t) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = torch.tanh(model.net(x)[:, 0]).cpu().numpy()
    tv, wv = t.cpu().numpy(), wts.cpu().numpy()
    r2 = []
    for i in range(len(fields)):
        sel = groups == i
        var = float(tv[sel].var())
        r2.append(None if var < 1e-12 else 1.0 - float(((pred[sel] - tv[sel]) ** 2).mean()) / var)
    mean = float((wv * tv).sum())
    return {"loss": float((wv * (pred - tv) ** 2).sum()), "target_var": float((wv * (tv - mean) ** 2).sum()),
            "r2": r2}


def training_box(fields: list[tuple[np.ndarray, np.ndarray]]) -> FeatureRanges:
    """The range check's box of the distilled states (:class:`aits.ranges.FeatureRanges`)."""
    return FeatureRanges.of_features(np.concatenate([f for f, _ in fields]))
