"""Pick a run's best checkpoint on held-out systems of its own training distribution.

    python driver/validate.py RUN_DIR [--systems 96] [--steps S] [--seed 1000003]

The passage objective trains on states drawn from the epoch's samples, which move along their orbits
as training goes on: the objective is noisy from epoch to epoch, and a rule can learn a shape and lose
it again (measured: configs/generalist.yaml seed 0 was 0.92-0.95x the classical recursion on Kepler
orbits at epochs 50-100 and 1.0x at 150-250). This command scores every checkpoint of the run on one
fixed validation set, the same for every checkpoint: ``--systems`` fresh systems drawn as the run's
collectors draw them (``system.ic``, mixture weights and all) but from another RNG stream (``--seed``
+ i, apart from training's ``run.seed`` + i), each rolled out for ``--steps`` steps (default: three times the
run's ``train.passage_steps``) of the rule as trained, and the validation loss the mean over systems of

    log max_k |E_k - E_0| / |E_0|  -  2 log(T / tau0)

(the passage objective: the log of error x (steps per time)^2, what an equal-cost comparison ranks; a run
trained with ``train.passage_hinge`` adds its hinge term, as in training).
The window is longer than training's because a rollout of ``passage_steps`` (600 in configs/generalist.yaml)
covers less than one inner period of half the mixture's binaries and triples (0.09 of one at the least), and a
rule can score well there by slowing down before a pericentre passage it then never reaches; three times
that covers at least one full inner period of every validation system (tested; docs/DESIGN.md §4.4b,
``driver/passage_fit.py``).
Writes ``RUN_DIR/selection.json`` (epoch -> loss) and the best checkpoint as
``RUN_DIR/model/model_best.pt``, with ``feature_ranges``: the box of the features its rule visits on the
validation rollouts, which the range check of bounded factor models uses (aits/ranges.py; the
evaluation and ``aits.load_rule`` pull the modulation back to the classical rule outside it;
``--no-ranges``: a plain copy). Nothing else is touched; prints the table.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from aits import Config, NormScales, Stepper, build_model
from aits.checkpoint import CheckpointError, fit_weights, load_checkpoint, norm_scales_of, save_checkpoint
from aits.passage import apsis_rows, classical_rows, family_mean, objective_rows, phase_term, rollout
from aits.ranges import measure_ranges
from aits.systems import Systems

VALIDATION_SEED = 1_000_003  # far from any run.seed + system id a run draws in training
WINDOW_OVER_TRAINING = 3  # the default validation window in units of train.passage_steps: full inner periods


def default_steps(cfg: Config) -> int:
    """The validation rollouts' steps when ``--steps`` is not given."""
    return WINDOW_OVER_TRAINING * cfg.train.passage_steps


def drawn_systems(cfg: Config, n: int, seed: int = VALIDATION_SEED) -> Systems:
    """``n`` systems drawn as the run's collectors draw theirs (family, period and all), from RNGs ``seed + i``."""
    return Systems(cfg, np.arange(n), [np.random.default_rng(seed + i) for i in range(n)])


def validation_states(cfg: Config, n: int, seed: int = VALIDATION_SEED):
    """(m, x, v, eps) of :func:`drawn_systems` (eps: each system's own softening). A run trained with
    ``train.passage_apsis`` s is judged as it trained: the last round(s * n) systems (with
    ``train.passage_apsis_families``: the last round(s * n_f) of the n_f systems of those families) are drawn
    from the same streams with every Kepler orbit at an apsis (``system.apsis_starts`` 1; the same family)."""
    systems = drawn_systems(cfg, n, seed)
    m, x, v, eps = systems.m.copy(), systems.x.copy(), systems.v.copy(), systems.eps.copy()
    late = apsis_rows(cfg, n, systems.family)
    if len(late):
        at_apsis = Config.from_dict(cfg.to_dict(), ["system.apsis_starts=1"])
        redrawn = Systems(at_apsis, late, [np.random.default_rng(seed + int(i)) for i in late])
        m[late], x[late], v[late], eps[late] = redrawn.m, redrawn.x, redrawn.v, redrawn.eps
    return m, x, v, eps


def validation_loss(ckpt: dict, cfg: Config, states, steps: int,
                    classical: torch.Tensor | None = None, family: np.ndarray | None = None) -> tuple[float, int]:
    """(mean passage objective over the finite rollouts, rollouts that blew up) of a checkpoint's rule; with
    ``train.passage_hinge`` plus, as in training, hinge x the mean excess over the classical rule it contains; with
    ``train.passage_phase`` plus its weight x the phase term (:func:`aits.passage.phase_term`).
    ``classical``: that rule's objective on ``states`` (:func:`aits.passage.classical_rows`; the same for every
    checkpoint of a run), computed here when not given. With ``train.passage_family_weights`` the mean is
    weighted as in training, by the states' ``family`` (codes of ``FAMILIES``)."""
    model = fit_weights(build_model(cfg), ckpt).eval()
    stepper = Stepper(cfg, norm_scales_of(ckpt, cfg) or NormScales())
    m, x, v, eps = states
    with torch.no_grad():
        errs, T, tau0, *end = rollout(model, stepper, m, x, v, steps, eps=eps, with_end=bool(cfg.train.passage_phase))
    rows, ok = objective_rows(errs, T, tau0)
    blown = int((~ok).sum())
    if not bool(ok.any()):
        return math.inf, blown
    mean = family_mean(rows, cfg.train.passage_family_weights, family, ok.cpu().numpy())
    loss = math.inf if mean is None else float(mean)
    if cfg.train.passage_hinge:
        if classical is None:
            classical = classical_rows(model, stepper, m, x, v, steps, eps, cfg.train.passage_hinge_timescales)
        loss += cfg.train.passage_hinge * float(torch.relu(rows - classical[ok]).mean())
    if cfg.train.passage_phase:
        with torch.no_grad():
            loss += cfg.train.passage_phase * float(phase_term(end[0][ok], T[ok], tau0[ok], (m, x, v), eps,
                                                                np.flatnonzero(ok.cpu().numpy()), family, stepper,
                                                                cfg, steps, {}, model))
    return loss, blown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--systems", type=int, default=96, help="validation systems (default 96)")
    p.add_argument("--steps", type=int, default=None, help="rollout steps (default: 3 x train.passage_steps)")
    p.add_argument("--seed", type=int, default=VALIDATION_SEED, help="the validation set's RNG stream")
    p.add_argument("--no-ranges", action="store_true", help="copy the best checkpoint without feature_ranges")
    a = p.parse_args(argv)
    model_dir = Path(a.run_dir) / "model"
    paths = sorted(model_dir.glob("model_epoch_*.pt"))
    if not paths:
        p.error(f"{model_dir}: no model_epoch_*.pt checkpoints")
    if a.systems < 1 or (a.steps is not None and a.steps < 1):
        p.error("--systems and --steps must be >= 1")
    torch.set_num_threads(1)
    try:
        cfg = Config.from_dict(load_checkpoint(paths[-1])["config"])
        if cfg.model.output != "factor" or cfg.features.feature_type != "scale_free":
            p.error(f"{paths[-1]}: selection rolls out factor models with scale_free features")
        steps = a.steps or default_steps(cfg)
        states = validation_states(cfg, a.systems, a.seed)
        # the classical rule a hinge run is judged against does not change with the weights: rolled out once
        classical = (classical_rows(build_model(cfg), Stepper(cfg, NormScales()), *states[:3], steps, states[3],
                                    cfg.train.passage_hinge_timescales) if cfg.train.passage_hinge else None)
        # the weights' families (apsis redraws keep each system's family); drawn only for a weighted run
        family = drawn_systems(cfg, a.systems, a.seed).family if cfg.train.passage_family_weights else None
        table = {}
        for path in paths:
            ckpt = load_checkpoint(path)
            loss, blown = validation_loss(ckpt, Config.from_dict(ckpt["config"]), states, steps, classical, family)
            table[int(ckpt["epoch"])] = {"loss": loss, "blown_up": blown, "path": path.name}
            print(f"epoch {int(ckpt['epoch']):5d}  validation loss {loss:9.4f}  blown up {blown}", flush=True)
    except CheckpointError as exc:
        print(f"validate: error: {exc}", file=sys.stderr)
        return 2
    best = min(table, key=lambda e: (table[e]["blown_up"], table[e]["loss"]))
    doc = {"best_epoch": best, "systems": a.systems, "steps": steps, "seed": a.seed,
           "epochs": {str(e): v for e, v in table.items()}}
    best_ckpt = load_checkpoint(model_dir / table[best]["path"])
    if a.no_ranges or Config.from_dict(best_ckpt["config"]).model.max_modulation is None:
        shutil.copy2(model_dir / table[best]["path"], model_dir / "model_best.pt")
    else:
        ranges = measure_ranges(best_ckpt, states, steps)
        best_ckpt["feature_ranges"] = ranges.to_dict()
        save_checkpoint(model_dir / "model_best.pt", best_ckpt)
        doc["feature_ranges"] = ranges.to_dict()
        print(f"validate: feature_ranges over {ranges.samples} states of epoch {best}'s rule")
    (Path(a.run_dir) / "selection.json").write_text(json.dumps(doc, indent=1))
    print(f"validate: best epoch {best} (loss {table[best]['loss']:.4f}) -> {model_dir / 'model_best.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
