"""How much can the learned family gain on its own training distribution, and is a gain real or an
artefact of the passage objective's window?

    python driver/passage_fit.py --config configs/generalist.yaml --out DIR [--set section.key=value ...]
        [--window 600] [--judge 1800] [--iters 150] [--batch 32] [--lr 3e-3] [--pool 512] [--systems 96]
    python driver/passage_fit.py --score CKPT [CKPT ...] --out DIR [--window 600] [--judge 1800]

Fit mode: the config's model, started as the classical rule it contains, trained offline with ``--iters``
Adam steps of the passage objective (docs/DESIGN.md §4.4b, with the config's anchor) over rollouts of
``--window`` steps from ``--batch`` start states drawn from a fixed pool of ``--pool`` systems of the
config's training distribution (RNG stream 5000000 + 1000 run.seed + i). Many more optimiser steps on
far larger batches than a training run's one step per epoch: an upper bound on what training by this
objective can reach. Writes ``DIR/model_fit.pt`` (a checkpoint every loader reads: judge it with
``driver/evaluate.py``).

Both modes then score each rule (the fit, or the ``--score`` checkpoints) on driver/validate.py's held-out
systems (``--systems``, the same RNG stream) by the passage objective at two windows, ``--window`` steps and
``--judge`` steps, as the mean per family of (rule's objective - the classical rule's) over the systems:
< 0 is a gain (log of error x steps^2 per unit time; -0.1 is 10 % less error at equal steps). A rollout
of ``--window`` steps may end before a pericentre passage, and a rule can gain there by slowing down
before the passage (its error then lies outside the window); over the longer ``--judge`` window, which
covers full orbits of every training binary, such a gain turns into a loss. Writes
``DIR/passage_fit.json`` and ``DIR/passage_fit.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aits import Config, ConfigError, NormScales, Stepper, build_model
from aits.checkpoint import CheckpointError, build_payload, fit_weights, load_checkpoint, norm_scales_of, save_checkpoint
from aits.families import FAMILIES
from aits.passage import finite_rollouts, objective_rows, rollout
from driver.validate import VALIDATION_SEED, drawn_systems

POOL_SEED = 5_000_000  # the fit's start states: apart from training (run.seed + i) and validation


def drawn(cfg: Config, n: int, seed: int):
    """(m, x, v, family codes) of ``n`` systems drawn as the run's collectors draw theirs, RNGs ``seed + i``."""
    s = drawn_systems(cfg, n, seed)
    return s.m.copy(), s.x.copy(), s.v.copy(), s.family.copy()


def objectives(model, stepper: Stepper, states, steps: int, with_time: bool = False):
    """The passage objective of each system's rollout (B,), NaN where a rollout blew up; with ``with_time`` also
    the time each rollout covered (B,), NaN likewise."""
    with torch.no_grad():
        errs, T, tau0 = rollout(model, stepper, *states, steps)
        rows, keep = objective_rows(errs, T, tau0)
    kept = keep.cpu().numpy()
    out = np.full(len(keep), math.nan)
    out[kept] = rows.double().cpu().numpy()
    if not with_time:
        return out
    covered = np.full(len(keep), math.nan)
    covered[kept] = T[keep].double().cpu().numpy()
    return out, covered


def family_table(rows: np.ndarray, base: np.ndarray, family: np.ndarray, covered: np.ndarray | None = None,
                 base_covered: np.ndarray | None = None) -> dict:
    """{family or 'all': {'gain': mean(rows - base) over systems finite in both, 'systems', 'blown'}}; with the
    times the rollouts covered, also 'time': the median over those systems of the rule's time over the
    classical rule's (< 1: the rule took smaller steps there, which the objective credits as if the error fell
    as dt^2)."""
    out = {}
    for name, mask in [("all", np.ones(len(rows), bool))] + [(f, family == i) for i, f in enumerate(FAMILIES)]:
        if not mask.any():
            continue
        ok = mask & np.isfinite(rows) & np.isfinite(base)
        out[name] = {"gain": float(np.mean(rows[ok] - base[ok])) if ok.any() else None,
                     "systems": int(mask.sum()), "blown": int((mask & ~np.isfinite(rows)).sum())}
        if covered is not None:
            out[name]["time"] = float(np.median(covered[ok] / base_covered[ok])) if ok.any() else None
    return out


def fit(cfg: Config, a, log=print):
    """The offline fit: (model, history [(iteration, train objective, held-out objective at --window)])."""
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg)
    stepper = Stepper(cfg, NormScales())
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    pool = drawn(cfg, a.pool, POOL_SEED + 1000 * cfg.run.seed)[:3]
    val = drawn(cfg, a.systems, VALIDATION_SEED)[:3]
    rng = np.random.default_rng([cfg.run.seed, 7])
    eta0 = math.log(cfg.model.init_factor)
    history = []
    for it in range(1, a.iters + 1):
        idx = rng.choice(a.pool, min(a.batch, a.pool), replace=False)
        _, _, _, level, rows, keep, _ = finite_rollouts(model, stepper, *(s[idx] for s in pool), a.window)
        if not bool(keep.all()):  # nothing finite, or a second rollout blew up: no step
            continue
        loss = rows.mean()
        if cfg.train.passage_anchor:
            loss = loss + cfg.train.passage_anchor * (level.mean() - eta0) ** 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 10 == 0 or it == a.iters:
            held = float(np.nanmean(objectives(model, stepper, val, a.window)))
            history.append((it, float(rows.mean().detach()), held))
            log(f"iteration {it:4d}  train {history[-1][1]:9.4f}  held-out ({a.window} steps) {held:9.4f}")
    return model, history


def fmt_gain(cell: dict) -> str:
    g, t = cell["gain"], cell.get("time")
    return (("n/a" if g is None else f"{g:+.3f}") + ("" if t is None else f", T {t:.2f}")
            + (f" ({cell['blown']} blown)" if cell["blown"] else ""))


def markdown(doc: dict) -> str:
    fams = [f for f in ["all", *FAMILIES] if f in doc["classical"]["counts"]]
    lines = [f"Passage objective per family, rule minus the classical rule (< 0: a gain), on {doc['systems']} "
             f"held-out systems of `{doc['config']}`'s distribution; windows of {doc['window']} and {doc['judge']} steps; "
             "T: the median time a rollout covered over the classical rule's (< 1: smaller steps).",
             "", "| rule | window | " + " | ".join(f"{f} ({doc['classical']['counts'][f]})" for f in fams) + " |",
             "|---|---|" + "---|" * len(fams)]
    for name, r in doc["rules"].items():
        for w in ("window", "judge"):
            lines.append(f"| {name} | {doc[w]} | " + " | ".join(fmt_gain(r[w][f]) for f in fams) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML config of the family to fit (fit mode)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--score", nargs="+", metavar="CKPT", help="score these checkpoints instead of fitting")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--window", type=int, default=600, help="the fit's rollout steps (default 600)")
    p.add_argument("--judge", type=int, default=1800, help="the longer judging window (default 1800)")
    p.add_argument("--iters", type=int, default=150, help="Adam steps of the fit (default 150)")
    p.add_argument("--batch", type=int, default=32, help="rollouts per Adam step (default 32)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--pool", type=int, default=512, help="start systems the fit draws its batches from")
    p.add_argument("--systems", type=int, default=96, help="held-out systems (default 96)")
    a = p.parse_args(argv)
    if bool(a.config) == bool(a.score):
        p.error("give either --config (fit) or --score CKPT ...")
    for key in ("window", "judge", "iters", "batch", "pool", "systems"):
        if getattr(a, key) < 1:
            p.error(f"--{key} must be >= 1")
    torch.set_num_threads(1)
    out = Path(a.out)
    start = time.time()
    try:
        rules = {}  # name -> (model, stepper, config)
        if a.config:
            cfg = Config.load(a.config, a.overrides)
            if cfg.model.output != "factor" or cfg.features.feature_type != "scale_free":
                p.error(f"{a.config}: the fit rolls out factor models with scale_free features")
            model, history = fit(cfg, a)
            out.mkdir(parents=True, exist_ok=True)
            save_checkpoint(out / "model_fit.pt", build_payload(a.iters, model.state_dict(), None, cfg, {},
                                                                 info={"passage_fit": history}))
            rules["fit"] = (model.eval(), Stepper(cfg, NormScales()), cfg)
        else:
            history = None
            for path in a.score:
                ck = load_checkpoint(path)
                cfg = Config.from_dict(ck["config"])
                if cfg.model.output != "factor" or cfg.features.feature_type != "scale_free":
                    p.error(f"{path}: scoring rolls out factor models with scale_free features")
                rules[str(path)] = (fit_weights(build_model(cfg), ck, path).eval(),
                                    Stepper(cfg, norm_scales_of(ck, cfg, path) or NormScales()), cfg)
    except (ConfigError, CheckpointError, OSError) as exc:
        print(f"passage_fit: error: {exc}", file=sys.stderr)
        return 2
    cfg0 = next(iter(rules.values()))[2]
    *val, family = drawn(cfg0, a.systems, VALIDATION_SEED)
    classical = build_model(cfg0).eval()  # the untrained model is the classical rule it contains
    base = {w: objectives(classical, Stepper(cfg0, NormScales()), val, getattr(a, w), with_time=True)
            for w in ("window", "judge")}
    doc = {"config": a.config or a.score[0], "systems": a.systems, "window": a.window, "judge": a.judge,
           "classical": {"counts": {k: v["systems"] for k, v in family_table(base["window"][0], base["window"][0],
                                                                              family).items()},
                         "window": float(np.nanmean(base["window"][0])), "judge": float(np.nanmean(base["judge"][0]))},
           "rules": {}, "history": history}
    for name, (model, stepper, _) in rules.items():
        doc["rules"][name] = {}
        for w in ("window", "judge"):
            rows, covered = objectives(model, stepper, val, getattr(a, w), with_time=True)
            doc["rules"][name][w] = family_table(rows, base[w][0], family, covered, base[w][1])
    doc["seconds"] = round(time.time() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "passage_fit.json").write_text(json.dumps(doc, indent=1))
    text = markdown(doc)
    (out / "passage_fit.md").write_text(text)
    print(text)
    print(f"passage_fit: {doc['seconds']} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
